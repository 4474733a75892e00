/*
 * sieve_flags.c - imap4flags (RFC 5232): flag lists (split, join, drop the
 * invalid ones), addflag/setflag/removeflag on the internal variable or a
 * named one, and the hasflag test.
 *
 *   sv_flags_split() / sv_flags_join() / sv_flags_filter()
 *   sv_flag_cmd(run, node, C_ADDFLAG|C_SETFLAG|C_REMOVEFLAG)
 *   sv_test_hasflag(run, node)
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "rules/sieve_eval.h"
#include "common/xmalloc.h"

char **sv_flags_split(const char *s, size_t *n_r)
{
	char **v = NULL;
	size_t n = 0;
	const char *p = s;
	while (*p) {
		while (*p == ' ')
			p++;
		if (!*p)
			break;
		const char *e = p;
		while (*e && *e != ' ')
			e++;
		char *f = xstrndup(p, (size_t)(e - p));
		int dup = 0;
		for (size_t i = 0; i < n; i++)
			if (strcasecmp(v[i], f) == 0)
				dup = 1;
		if (dup)
			free(f);
		else
			sv_strv_push(&v, &n, f);
		p = e;
	}
	*n_r = n;
	return v;
}

/* RFC 5232 / RFC 3501: a system flag Pigeonhole accepts, or a keyword atom */
static int flag_valid(const char *f)
{
	static const char *const sys[] = { "\\seen", "\\answered", "\\flagged",
		"\\deleted", "\\draft", NULL };
	if (f[0] == '\\') {
		for (const char *const *k = sys; *k; k++)
			if (!strcasecmp(f, *k))
				return 1;
		return 0;
	}
	if (f[0] == '\0')
		return 0;
	for (const unsigned char *p = (const unsigned char *)f; *p; p++)
		if (*p <= 32 || *p >= 127 || strchr("(){%*\"\\]", *p))
			return 0;
	return 1;
}

/* drop invalid flags (Pigeonhole ignores them, with a warning) */
void sv_flags_filter(char **v, size_t *n)
{
	size_t w = 0;
	for (size_t i = 0; i < *n; i++) {
		if (flag_valid(v[i]))
			v[w++] = v[i];
		else
			free(v[i]);
	}
	*n = w;
}

char *sv_flags_join(char **v, size_t n)
{
	size_t len = 1;
	for (size_t i = 0; i < n; i++)
		len += strlen(v[i]) + 1;
	char *o = xmalloc(len), *p = o;
	for (size_t i = 0; i < n; i++) {
		if (i)
			*p++ = ' ';
		size_t l = strlen(v[i]);
		memcpy(p, v[i], l);
		p += l;
	}
	*p = '\0';
	return o;
}

static char *flags_get(struct sieve_run *run, const char *var)
{
	return xstrdup(var ? sv_var_get(run, var) : run->flags ? run->flags : "");
}

static void flags_put(struct sieve_run *run, const char *var, const char *v)
{
	if (var) {
		sv_var_set(run, var, v);
	} else {
		free(run->flags);
		run->flags = xstrdup(v);
	}
}

void sv_flag_cmd(struct sieve_run *run, const struct sieve_node *n, int id)
{
	char *var = n->npos == 2 ? sieve_arg_str(run, n, 0) : NULL;
	size_t na;
	char **args = sieve_arg_list(run, n, n->npos - 1, &na);
	/* each argument may hold several space-separated flags */
	char *argjoined = sv_flags_join(args, na);
	size_t nf;
	char **add = sv_flags_split(argjoined, &nf);
	if (id != C_REMOVEFLAG)
		sv_flags_filter(add, &nf);
	char *cur = flags_get(run, var);
	size_t nc;
	char **have = id == C_SETFLAG ? NULL : sv_flags_split(cur, &nc);
	if (id == C_SETFLAG)
		nc = 0;
	if (id == C_REMOVEFLAG) {
		char **keep = NULL;
		size_t nk = 0;
		for (size_t i = 0; i < nc; i++) {
			int drop = 0;
			for (size_t j = 0; j < nf; j++)
				if (strcasecmp(have[i], add[j]) == 0)
					drop = 1;
			if (!drop)
				sv_strv_push(&keep, &nk, xstrdup(have[i]));
		}
		sieve_strv_free(have, nc);
		have = keep;
		nc = nk;
	} else {
		for (size_t j = 0; j < nf; j++) {
			int dup = 0;
			for (size_t i = 0; i < nc; i++)
				if (strcasecmp(have[i], add[j]) == 0)
					dup = 1;
			if (!dup)
				sv_strv_push(&have, &nc, xstrdup(add[j]));
		}
	}
	char *res = sv_flags_join(have, nc);
	flags_put(run, var, res);
	free(res);
	sieve_strv_free(have, nc);
	sieve_strv_free(add, nf);
	free(argjoined);
	sieve_strv_free(args, na);
	free(cur);
	free(var);
}

int sv_test_hasflag(struct sieve_run *run, const struct sieve_node *n)
{
	size_t nk;
	char **keys = sieve_arg_list(run, n, n->npos - 1, &nk);
	char **vals = NULL;
	size_t nv = 0;
	if (n->npos == 2) {
		size_t nvars;
		char **vars = sieve_arg_list(run, n, 0, &nvars);
		char *j = NULL;
		for (size_t i = 0; i < nvars; i++) {
			size_t nf;
			char **f = sv_flags_split(sv_var_get(run, vars[i]), &nf);
			for (size_t k = 0; k < nf; k++)
				sv_strv_push(&vals, &nv, f[k]);
			free(f);
		}
		free(j);
		sieve_strv_free(vars, nvars);
	} else {
		vals = sv_flags_split(run->flags ? run->flags : "", &nv);
	}
	int r;
	if (n->mtype == MT_COUNT) {
		r = sieve_match_values(run, n, vals, nv, keys, nk);
	} else {
		/* keys may hold several flags each */
		char *kj = sv_flags_join(keys, nk);
		size_t nkf;
		char **kf = sv_flags_split(kj, &nkf);
		r = sieve_match_values(run, n, vals, nv, kf, nkf);
		sieve_strv_free(kf, nkf);
		free(kj);
	}
	sieve_strv_free(vals, nv);
	sieve_strv_free(keys, nk);
	return r;
}

/* ---- environment ---- */
