/*
 * sieve_tests.c - the tests that look at the message: header, address,
 * envelope, exists, string, environment, date/currentdate, duplicate, with
 * :index/:last, address parts (subaddress too) and RFC 2047 decoding.
 *
 *   sv_test_<name>(run, node) -> 1 true, 0 false (errors through the run)
 *
 * Reads the message through the run's view (editheader edits included);
 * never changes it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include "rules/sieve_eval.h"
#include "common/xmalloc.h"

static char **header_values(struct sieve_run *run, const struct sieve_node *n, char **names,
    size_t nn, size_t *n_r, int decode)
{
	char **out = NULL;
	size_t no = 0, nh;
	const struct sieve_header *h = sv_hdrs(run, &nh);
	long long index = sieve_tag_num(n, "index", 0);
	int last = sieve_node_has_tag(n, "last");
	for (size_t k = 0; k < nn; k++) {
		size_t total = 0;
		for (size_t i = 0; index > 0 && last && i < nh; i++)
			total += strcasecmp(h[i].name, names[k]) == 0;
		size_t seen = 0;
		for (size_t i = 0; i < nh; i++) {
			if (strcasecmp(h[i].name, names[k]) != 0)
				continue;
			seen++;
			if (index > 0) {
				size_t want = last ? (index <= (long long)total ? total - (size_t)index + 1 : 0)
				    : (size_t)index;
				if (seen != want)
					continue;
			}
			sv_strv_push(&out, &no, decode ? sv_mime_decode(h[i].value) : xstrdup(h[i].value));
		}
	}
	*n_r = no;
	return out;
}

#define HVALS_MAX 64	/* header names whose values a run keeps */

/* the decoded values of the header NAME, kept by the run (an unedited
 * header only); NULL: not kept (edited, or too many names) */
static struct sv_hval *hvals_get(struct sieve_run *run, const char *name)
{
	if (run->hdr_edited)
		return NULL;
	for (size_t i = 0; i < run->nhvals; i++)
		if (strcasecmp(run->hvals[i].name, name) == 0)
			return &run->hvals[i];
	if (run->nhvals >= HVALS_MAX)
		return NULL;
	size_t nh, no = 0;
	const struct sieve_header *h = sv_hdrs(run, &nh);
	char **out = NULL;
	int c0 = name[0] | 0x20;
	for (size_t i = 0; i < nh; i++)
		if ((h[i].name[0] | 0x20) == c0 && strcasecmp(h[i].name, name) == 0)
			sv_strv_push(&out, &no, sv_mime_decode(h[i].value));
	run->hvals = xreallocarray(run->hvals, run->nhvals + 1, sizeof(*run->hvals));
	struct sv_hval *v = &run->hvals[run->nhvals++];
	v->name = xstrdup(name);
	v->vals = out;
	v->n = no;
	v->addr = NULL;
	return v;
}

/* the addresses of each of v's values, parsed once per run */
static const struct sv_haddr *haddr_get(struct sv_hval *v)
{
	if (v->addr != NULL || v->n == 0)
		return v->addr;
	v->addr = xcalloc(v->n, sizeof(*v->addr));
	for (size_t i = 0; i < v->n; i++) {
		size_t na;
		char **as = sv_addr_list(v->vals[i], &na);
		v->addr[i].invalid = na == 0;
		for (size_t j = 0; j < na; j++) {
			char *norm;
			if (sv_addr_parse(as[j], &norm) < 0) {
				v->addr[i].invalid = 1;
				continue;
			}
			sv_strv_push(&v->addr[i].norm, &v->addr[i].n, norm);
		}
		sieve_strv_free(as, na);
	}
	return v->addr;
}

/*
 * The decoded values of the named headers (no :index, :last) as the run
 * keeps them: *own_r 0, nothing to free but, for several names, the array
 * (*own_r 1). NULL when they are not kept: header_values() then.
 */
static char **hvals_list(struct sieve_run *run, const struct sieve_node *n, char **names,
    size_t nn, size_t *n_r, int *own_r)
{
	static char *none[1];
	*own_r = 0;
	if (run->hdr_edited || sieve_node_has_tag(n, "index"))	/* (:last needs :index) */
		return NULL;
	if (nn == 0) {
		*n_r = 0;
		return none;
	}
	if (nn == 1) {
		const struct sv_hval *v = hvals_get(run, names[0]);
		if (v == NULL)
			return NULL;
		*n_r = v->n;
		return v->vals != NULL ? v->vals : none;
	}
	size_t total = 0;
	for (size_t k = 0; k < nn; k++) {
		const struct sv_hval *v = hvals_get(run, names[k]);
		if (v == NULL)
			return NULL;
		total += v->n;
	}
	char **out = xcalloc(total + 1, sizeof(char *));
	size_t o = 0;
	for (size_t k = 0; k < nn; k++) {
		const struct sv_hval *v = hvals_get(run, names[k]);	/* kept: found */
		for (size_t i = 0; i < v->n; i++)
			out[o++] = v->vals[i];
	}
	*n_r = total;
	*own_r = 1;
	return out;
}

static char *addr_part(int ap, const char *addr, const char *delim)
{
	if (ap == AP_ALL)
		return xstrdup(addr);
	char *l, *d;
	if (sv_addr_split(addr, &l, &d) < 0) {
		return NULL;
	}
	char *r = NULL;
	if (ap == AP_LOCAL) {
		r = l; l = NULL;
	} else if (ap == AP_DOMAIN) {
		r = d; d = NULL;
	} else {
		char *sep = strpbrk(l, delim[0] ? delim : "+");
		if (ap == AP_USER)
			r = sep ? xstrndup(l, (size_t)(sep - l)) : xstrdup(l);
		else
			r = sep ? xstrdup(sep + 1) : NULL;
	}
	free(l);
	free(d);
	return r;
}

int sv_test_address(struct sieve_run *run, const struct sieve_node *n)
{
	size_t nn, nk, nv = 0, nvals = 0;
	char **names = sieve_arg_list_ro(run, n, 0, &nn);
	char **keys = sieve_arg_list_ro(run, n, 1, &nk);
	struct sv_hval *hv = NULL;
	if (nn == 1 && !run->hdr_edited && !sieve_node_has_tag(n, "index"))
		hv = hvals_get(run, names[0]);
	if (hv != NULL) {	/* one field, kept by the run: parsed once */
		const struct sv_haddr *ad = haddr_get(hv);
		char **parts = NULL;
		for (size_t i = 0; i < hv->n; i++) {
			for (size_t j = 0; j < ad[i].n; j++) {
				char *p = addr_part(n->apart, ad[i].norm[j],
				    run->limits.recipient_delimiter);
				if (p)
					sv_strv_push(&parts, &nvals, p);
			}
			/* not (all) valid: :all sees the field as written */
			if (ad[i].invalid && n->apart == AP_ALL) {
				const char *v = hv->vals[i];
				while (*v == ' ' || *v == '\t')
					v++;
				sv_strv_push(&parts, &nvals, xstrdup(v));
			}
		}
		int r = sieve_match_values(run, n, parts, nvals, keys, nk);
		sieve_strv_free(parts, nvals);
		sieve_arg_list_ro_free(n, 0, names, nn);
		sieve_arg_list_ro_free(n, 1, keys, nk);
		return r;
	}
	int own;
	char **vals = hvals_list(run, n, names, nn, &nv, &own);
	int kept = vals != NULL;	/* the run's: not freed */
	if (!kept)
		vals = header_values(run, n, names, nn, &nv, 1);
	char **parts = NULL;
	for (size_t i = 0; i < nv; i++) {
		size_t na;
		char **as = sv_addr_list(vals[i], &na);
		int invalid = na == 0;
		for (size_t j = 0; j < na; j++) {
			char *norm;
			if (sv_addr_parse(as[j], &norm) < 0) {
				invalid = 1;
				continue;
			}
			char *p = addr_part(n->apart, norm, run->limits.recipient_delimiter);
			free(norm);
			if (p)
				sv_strv_push(&parts, &nvals, p);
		}
		/* not (all) valid: :all sees the field as written */
		if (invalid && n->apart == AP_ALL) {
			const char *v = vals[i];
			while (*v == ' ' || *v == '\t')
				v++;
			sv_strv_push(&parts, &nvals, xstrdup(v));
		}
		sieve_strv_free(as, na);
	}
	int r = sieve_match_values(run, n, parts, nvals, keys, nk);
	sieve_strv_free(parts, nvals);
	if (!kept)
		sieve_strv_free(vals, nv);
	else if (own)
		free(vals);
	sieve_arg_list_ro_free(n, 0, names, nn);
	sieve_arg_list_ro_free(n, 1, keys, nk);
	return r;
}

/* sv_addr_parse() of an envelope path, once per run for each text */
static int envp_parse(struct sieve_run *run, const char *a, char **norm_r)
{
	for (size_t i = 0; i < run->nenvp; i++)
		if (strcmp(run->envp[i].in, a) == 0) {
			*norm_r = run->envp[i].norm != NULL ? xstrdup(run->envp[i].norm) : NULL;
			return *norm_r != NULL ? 0 : -1;
		}
	char *norm = NULL;
	int r = sv_addr_parse(a, &norm);
	if (r < 0)
		norm = NULL;
	if (run->nenvp < SV_ENVP_MAX) {
		run->envp[run->nenvp].in = xstrdup(a);
		run->envp[run->nenvp].norm = norm != NULL ? xstrdup(norm) : NULL;
		run->nenvp++;
	}
	*norm_r = norm;
	return r < 0 ? -1 : 0;
}

int sv_test_envelope(struct sieve_run *run, const struct sieve_node *n)
{
	size_t nn, nk, nv = 0;
	char **names = sieve_arg_list_ro(run, n, 0, &nn);
	char **keys = sieve_arg_list_ro(run, n, 1, &nk);
	char **vals = NULL;
	for (size_t i = 0; i < nn; i++) {
		const char *e = NULL;
		if (!strcasecmp(names[i], "from"))
			e = run->msg->env_from;
		else if (!strcasecmp(names[i], "to"))
			e = run->msg->env_to;
		else if (!strcasecmp(names[i], "auth"))
			e = run->msg->env_auth;
		if (e == NULL)
			continue;
		/* an SMTP path: <addr-spec>, or a bare addr-spec */
		char *a = NULL;
		size_t el = strlen(e);
		if (e[0] == '<') {
			if (el < 2 || e[el - 1] != '>' || memchr(e + 1, '<', el - 2) ||
			    memchr(e + 1, '>', el - 2))
				continue;
			a = xstrndup(e + 1, el - 2);
		} else {
			if (strchr(e, '<') || strchr(e, '>'))
				continue;
			a = xstrdup(e);
		}
		if (a[0] == '\0') {
			/* the null reverse-path is "" whatever the address part */
			sv_strv_push(&vals, &nv, a);
			continue;
		}
		if (!strcasecmp(names[i], "auth") && !strchr(a, '@')) {
			/* an authenticated user name need not be an address */
			if (n->apart == AP_ALL || n->apart == AP_LOCAL || n->apart == AP_USER)
				sv_strv_push(&vals, &nv, a);
			else
				free(a);
			continue;
		}
		if (strchr(a, '<') || strchr(a, ' ')) {
			free(a);
			continue;
		}
		if (a[0] == '@') {
			/* a source route "@d1,@d2:" is dropped, if well-formed */
			const char *p = a;
			int ok = 1;
			for (;;) {
				if (*p != '@') { ok = 0; break; }
				p++;
				const char *d = p;
				while (*p && *p != ',' && *p != ':' && *p != '@')
					p++;
				char *dom = xstrndup(d, (size_t)(p - d));
				char *chk = xasprintf("x@%s", dom), *cn = NULL;
				if (dom[0] == '\0' || sv_addr_parse(chk, &cn) < 0)
					ok = 0;
				free(cn);
				free(chk);
				free(dom);
				if (!ok || *p == ':')
					break;
				if (*p != ',') { ok = 0; break; }
				p++;
			}
			if (!ok || *p != ':') {
				free(a);
				continue;
			}
			char *rest = xstrdup(p + 1);
			free(a);
			a = rest;
		}
		if (!strchr(a, '@')) {
			/* a local part alone (<MAILER-DAEMON>) */
			char *chk = xasprintf("%s@x", a), *cn = NULL;
			int ok = sv_addr_parse(chk, &cn) == 0;
			free(chk);
			free(cn);
			if (ok && (n->apart == AP_ALL || n->apart == AP_LOCAL))
				sv_strv_push(&vals, &nv, a);
			else
				free(a);
			continue;
		}
		char *norm;
		if (envp_parse(run, a, &norm) < 0) {
			free(a);	/* an invalid path matches nothing */
			continue;
		}
		free(a);
		char *p = addr_part(n->apart, norm, run->limits.recipient_delimiter);
		free(norm);
		if (p)
			sv_strv_push(&vals, &nv, p);
	}
	int r = sieve_match_values(run, n, vals, nv, keys, nk);
	sieve_strv_free(vals, nv);
	sieve_arg_list_ro_free(n, 0, names, nn);
	sieve_arg_list_ro_free(n, 1, keys, nk);
	return r;
}

int sv_test_header(struct sieve_run *run, const struct sieve_node *n)
{
	size_t nn, nk, nv;
	char **names = sieve_arg_list_ro(run, n, 0, &nn);
	char **keys = sieve_arg_list_ro(run, n, 1, &nk);
	int own;
	char **vals = hvals_list(run, n, names, nn, &nv, &own);
	if (vals != NULL) {	/* the run's: not freed */
		int r = sieve_match_values(run, n, vals, nv, keys, nk);
		if (own)
			free(vals);
		sieve_arg_list_ro_free(n, 0, names, nn);
		sieve_arg_list_ro_free(n, 1, keys, nk);
		return r;
	}
	vals = header_values(run, n, names, nn, &nv, 1);
	int r = sieve_match_values(run, n, vals, nv, keys, nk);
	sieve_strv_free(vals, nv);
	sieve_arg_list_ro_free(n, 0, names, nn);
	sieve_arg_list_ro_free(n, 1, keys, nk);
	return r;
}

int sv_test_exists(struct sieve_run *run, const struct sieve_node *n)
{
	size_t nn;
	char **names = sieve_arg_list_ro(run, n, 0, &nn);
	int r = 1;
	for (size_t i = 0; i < nn && r; i++)
		r = sv_header_get(run, names[i], 0) != NULL;
	sieve_arg_list_ro_free(n, 0, names, nn);
	return r;
}

int sv_test_string(struct sieve_run *run, const struct sieve_node *n)
{
	size_t ns, nk;
	char **src = sieve_arg_list(run, n, 0, &ns);
	char **keys = sieve_arg_list(run, n, 1, &nk);
	int r;
	if (n->mtype == MT_COUNT) {
		/* RFC 5229: :count counts the non-empty strings */
		char **ne = NULL;
		size_t nne = 0;
		for (size_t i = 0; i < ns; i++)
			if (src[i][0])
				sv_strv_push(&ne, &nne, xstrdup(src[i]));
		r = sieve_match_values(run, n, ne, nne, keys, nk);
		sieve_strv_free(ne, nne);
	} else {
		r = sieve_match_values(run, n, src, ns, keys, nk);
	}
	sieve_strv_free(src, ns);
	sieve_strv_free(keys, nk);
	return r;
}

/* ---- imap4flags ---- */

static const char *env_item(struct sieve_run *run, const char *name)
{
	const struct sieve_msg *m = run->msg;
	for (size_t i = 0; m && i < m->nenv; i++)
		if (strcasecmp(m->env_items[2 * i], name) == 0)
			return m->env_items[2 * i + 1];
	if (!strcasecmp(name, "name"))
		return "Portcullis Sieve";
	if (!strcasecmp(name, "version"))
		return "1.0";
	if (!strcasecmp(name, "location"))
		return "MTA";
	if (!strcasecmp(name, "phase"))
		return "during";
	if (!strcasecmp(name, "domain"))
		return "localhost";
	if (!strcasecmp(name, "host"))
		return "localhost";
	return NULL;
}

int sv_test_environment(struct sieve_run *run, const struct sieve_node *n)
{
	char *name = sieve_arg_str(run, n, 0);
	size_t nk;
	char **keys = sieve_arg_list(run, n, 1, &nk);
	const char *v = env_item(run, name);
	int r = 0;
	if (v) {
		char *vals[1] = { (char *)v };
		r = sieve_match_values(run, n, vals, 1, keys, nk);
	}
	free(name);
	sieve_strv_free(keys, nk);
	return r;
}

/* ---- date ---- */

int sv_test_date(struct sieve_run *run, const struct sieve_node *n, int current)
{
	char *zone = sv_tag_expanded(run, n, 0);
	int orig = !current && n->tagset[1];
	size_t nk;
	char *hname = current ? NULL : sieve_arg_str(run, n, 0);
	char *part = sieve_arg_str(run, n, current ? 0 : 1);
	char **keys = sieve_arg_list(run, n, current ? 1 : 2, &nk);
	char **vals = NULL;
	size_t nv = 0;
	if (current) {
		char *v;
		long now = run->opts.now ? run->opts.now : (long)time(NULL);
		if (sv_date_part(NULL, zone, 0, part, now, &v) == 0)
			sv_strv_push(&vals, &nv, v);
	} else {
		char *names[1] = { hname };
		size_t nh;
		char **hv = header_values(run, n, names, 1, &nh, 0);
		/* RFC 5260 4: without :index, the first occurrence only */
		if (sieve_tag_num(n, "index", 0) == 0 && nh > 1) {
			for (size_t i = 1; i < nh; i++)
				free(hv[i]);
			nh = 1;
		}
		for (size_t i = 0; i < nh; i++) {
			const char *d = hv[i];
			/* received: the date after the last ';' */
			if (!strcasecmp(hname, "received")) {
				const char *sc = strrchr(d, ';');
				d = sc ? sc + 1 : d;
			}
			char *v;
			if (sv_date_part(d, zone, orig, part, 0, &v) == 0)
				sv_strv_push(&vals, &nv, v);
		}
		sieve_strv_free(hv, nh);
	}
	int r = sieve_match_values(run, n, vals, nv, keys, nk);
	sieve_strv_free(vals, nv);
	sieve_strv_free(keys, nk);
	free(zone);
	free(hname);
	free(part);
	return r;
}

/* ---- duplicate ---- */

int sv_test_duplicate(struct sieve_run *run, const struct sieve_node *n)
{
	char *handle = sv_tag_expanded(run, n, 0);
	char *hdr = sv_tag_expanded(run, n, 1);
	char *uid = sv_tag_expanded(run, n, 2);
	long long secs = sieve_tag_num(n, "seconds", 7 * 86400);
	const char *val = uid;
	if (!val) {
		val = sv_header_get(run, hdr ? hdr : "message-id", 0);
	}
	int r = 0;
	if (val && run->opts.dup) {
		char *key = xasprintf("%s\n%s\n%s", handle ? handle : "", hdr ? hdr : "", val);
		r = run->opts.dup->check(run->opts.dup->ctx, key, strlen(key));
		if (!r || sieve_node_has_tag(n, "last"))
			run->opts.dup->mark(run->opts.dup->ctx, key, strlen(key), (unsigned long)secs);
		free(key);
	}
	free(handle);
	free(hdr);
	free(uid);
	return r;
}

/* ---- tests ---- */
