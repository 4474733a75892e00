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

#define HVALS_MAX 64	/* header names whose values a message's index keeps */

void sieve_msg_changed(struct sieve_msg *m)
{
	struct sv_msgcache *c = m->cache;
	if (c == NULL)
		return;
	for (size_t i = 0; i < c->nhv; i++) {
		struct sv_hval *v = &c->hv[i];
		free(v->name);
		for (size_t k = 0; v->addr != NULL && k < v->n; k++)
			sieve_strv_free(v->addr[k].norm, v->addr[k].n);
		free(v->addr);
		for (int k = 0; k < 3; k++) {
			free(v->parts[k].v);
			free(v->parts[k].l);
		}
		sieve_strv_free(v->vals, v->n);
		free(v->lens);
	}
	free(c->hv);
	for (size_t i = 0; i < c->nenvp; i++) {
		free(c->envp[i].in);
		free(c->envp[i].val);
	}
	free(c);
	m->cache = NULL;
}

/* the run's message's index; its header entries dropped when the
 * message's header is not what they were built from. The index is the
 * message's, not part of what a caller sees: it changes under a const
 * message (one run at a time on a message, sieve.h) */
static struct sv_msgcache *mcache_check(struct sieve_run *run);

static inline struct sv_msgcache *mcache(struct sieve_run *run)
{
	struct sv_msgcache *c = run->msg->cache;
	return c != NULL && c == run->mc ? c : mcache_check(run);	/* checked once a run */
}

static struct sv_msgcache *mcache_check(struct sieve_run *run)
{
	struct sieve_msg *m = (struct sieve_msg *)run->msg;
	struct sv_msgcache *c = m->cache;
	if (c != NULL && (c->hdr != m->hdr || c->nhdr != m->nhdr))
		sieve_msg_changed(m);
	if ((c = m->cache) == NULL) {
		c = xcalloc(1, sizeof(*c));
		c->hdr = m->hdr;
		c->nhdr = m->nhdr;
		for (size_t i = 0; i < m->nhdr; i++)
			c->hmask |= sv_hname_bit(m->hdr[i].name, strlen(m->hdr[i].name));
		m->cache = c;
	}
	run->mc = c;
	return c;
}

/* the bits of the field names of the run's message (its own header, the
 * names n has as constants): 0 when not known */
static inline uint64_t names_mask(struct sieve_run *run, const struct sieve_node *n, uint64_t *msg_r)
{
	if (n->hmask == 0 || run->hdr_edited || run->msg == NULL || run->script->uses_vars)
		return 0;
	*msg_r = mcache(run)->hmask;
	return n->hmask;
}

/* none of n's header names is in the message: no value to match */
static inline int names_absent(struct sieve_run *run, const struct sieve_node *n)
{
	uint64_t m;
	return n->nomatch_empty && names_mask(run, n, &m) != 0 && (m & n->hmask) == 0;
}

/* the decoded values of the header NAME, kept by the message's index (an
 * unedited header only); NULL: not kept (edited, or too many names) */
static struct sv_hval *hvals_get(struct sieve_run *run, const char *name)
{
	if (run->hdr_edited || run->msg == NULL)
		return NULL;
	struct sv_msgcache *c = mcache(run);
	size_t nl = strlen(name);
	int c0 = name[0] | 0x20;	/* first letter first: most names differ there */
	for (size_t i = 0; i < c->nhv; i++)
		if (c->hv[i].nlen == nl && (c->hv[i].name[0] | 0x20) == c0 &&
		    strcasecmp(c->hv[i].name, name) == 0)
			return &c->hv[i];
	if (c->nhv >= HVALS_MAX)
		return NULL;
	size_t nh, no = 0;
	const struct sieve_header *h = sv_hdrs(run, &nh);
	char **out = NULL;
	size_t *lens = NULL;
	for (size_t i = 0; i < nh; i++)
		if ((h[i].name[0] | 0x20) == c0 && strcasecmp(h[i].name, name) == 0) {
			char *d = sv_mime_decode(h[i].value);
			lens = xreallocarray(lens, no + 1, sizeof(*lens));
			lens[no] = strlen(d);
			sv_strv_push(&out, &no, d);
		}
	c->hv = xreallocarray(c->hv, c->nhv + 1, sizeof(*c->hv));
	struct sv_hval *v = &c->hv[c->nhv++];
	v->name = xstrdup(name);
	v->nlen = nl;
	v->vals = out;
	v->lens = lens;
	v->n = no;
	v->addr = NULL;
	memset(v->parts, 0, sizeof(v->parts));
	return v;
}

/* the addresses of each of v's values, parsed once per message */
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
 * The decoded values of the named headers (no :index, :last) as the
 * message's index keeps them, with their lengths: *own_r 0, nothing to
 * free but, for several names, the arrays (*own_r 1). NULL when they are
 * not kept: header_values() then.
 */
static char **hvals_list(struct sieve_run *run, const struct sieve_node *n, char **names,
    size_t nn, size_t *n_r, size_t **lens_r, int *own_r)
{
	static char *none[1];
	static size_t nolen[1];
	*own_r = 0;
	if (run->hdr_edited || n->indexed)	/* (:last needs :index) */
		return NULL;
	if (nn == 0) {
		*n_r = 0;
		*lens_r = nolen;
		return none;
	}
	if (nn == 1) {
		const struct sv_hval *v = hvals_get(run, names[0]);
		if (v == NULL)
			return NULL;
		*n_r = v->n;
		*lens_r = v->lens != NULL ? v->lens : nolen;
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
	size_t *lens = xcalloc(total + 1, sizeof(size_t));
	size_t o = 0;
	for (size_t k = 0; k < nn; k++) {
		const struct sv_hval *v = hvals_get(run, names[k]);	/* kept: found */
		for (size_t i = 0; i < v->n; i++) {
			lens[o] = v->lens[i];
			out[o++] = v->vals[i];
		}
	}
	*n_r = total;
	*lens_r = lens;
	*own_r = 1;
	return out;
}

/* strings to match, pointing into the index: no copy, a few on the stack */
struct sv_sl {
	const char **v;
	size_t *l;
	size_t n, cap;
	const char *sv[8];
	size_t sl[8];
};

static void sl_init(struct sv_sl *s)
{
	s->v = s->sv;
	s->l = s->sl;
	s->n = 0;
	s->cap = 8;
}

static void sl_push(struct sv_sl *s, const char *p, size_t l)
{
	if (s->n == s->cap) {
		size_t cap = s->cap * 2;
		if (s->v == s->sv) {
			s->v = xreallocarray(NULL, cap, sizeof(*s->v));
			s->l = xreallocarray(NULL, cap, sizeof(*s->l));
			memcpy(s->v, s->sv, sizeof(s->sv));
			memcpy(s->l, s->sl, sizeof(s->sl));
		} else {
			s->v = xreallocarray(s->v, cap, sizeof(*s->v));
			s->l = xreallocarray(s->l, cap, sizeof(*s->l));
		}
		s->cap = cap;
	}
	s->v[s->n] = p;
	s->l[s->n++] = l;
}

static void sl_free(struct sv_sl *s)
{
	if (s->v != s->sv) {
		free(s->v);
		free(s->l);
	}
}

/* the address part ap of a normalized address, as a slice of it; -1: it
 * has none (addr_part() without the copy) */
static int addr_part_sl(int ap, const char *a, const char *delim, const char **p_r, size_t *l_r)
{
	size_t al = strlen(a);
	if (ap == AP_ALL) {
		*p_r = a;
		*l_r = al;
		return 0;
	}
	const char *at = memrchr(a, '@', al);
	if (at == NULL || at == a || at[1] == '\0')
		return -1;
	if (ap == AP_LOCAL || ap == AP_DOMAIN) {
		*p_r = ap == AP_LOCAL ? a : at + 1;
		*l_r = ap == AP_LOCAL ? (size_t)(at - a) : (size_t)(a + al - at - 1);
		return 0;
	}
	const char *d = delim[0] ? delim : "+", *sep = NULL;
	for (const char *q = a; q < at && sep == NULL; q++)
		if (strchr(d, *q) != NULL)
			sep = q;
	if (ap == AP_USER) {
		*p_r = a;
		*l_r = (size_t)((sep != NULL ? sep : at) - a);
		return 0;
	}
	if (sep == NULL)
		return -1;
	*p_r = sep + 1;
	*l_r = (size_t)(at - sep - 1);
	return 0;
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
	if (names_absent(run, n))
		return 0;
	size_t nn, nk, nv = 0, nvals = 0;
	char **names = sieve_arg_list_ro(run, n, 0, &nn);
	char **keys = sieve_arg_list_ro(run, n, 1, &nk);
	struct sv_hval *hv = NULL;
	if (nn == 1 && !run->hdr_edited && !n->indexed)
		hv = hvals_get(run, names[0]);
	if (hv != NULL && n->apart <= AP_DOMAIN) {	/* its parts too, once a message */
		struct sv_hparts *pp = &hv->parts[n->apart];
		if (!pp->done) {
			const struct sv_haddr *ad = haddr_get(hv);
			struct sv_sl parts;
			sl_init(&parts);
			for (size_t i = 0; i < hv->n; i++) {
				for (size_t j = 0; j < ad[i].n; j++) {
					const char *p;
					size_t pl;
					if (addr_part_sl(n->apart, ad[i].norm[j], "", &p, &pl) == 0)
						sl_push(&parts, p, pl);
				}
				if (ad[i].invalid && n->apart == AP_ALL) {
					const char *v = hv->vals[i];
					while (*v == ' ' || *v == '\t')
						v++;
					sl_push(&parts, v, hv->lens[i] - (size_t)(v - hv->vals[i]));
				}
			}
			pp->n = parts.n;
			pp->v = xreallocarray(NULL, parts.n + 1, sizeof(*pp->v));
			pp->l = xreallocarray(NULL, parts.n + 1, sizeof(*pp->l));
			memcpy(pp->v, parts.v, parts.n * sizeof(*pp->v));
			memcpy(pp->l, parts.l, parts.n * sizeof(*pp->l));
			sl_free(&parts);
			pp->done = 1;
		}
		int r = sv_match_n(run, n, pp->v, pp->l, pp->n, keys, nk);
		sieve_arg_list_ro_free(n, 0, names, nn);
		sieve_arg_list_ro_free(n, 1, keys, nk);
		return r;
	}
	if (hv != NULL) {	/* one field, kept by the message's index: parsed once */
		const struct sv_haddr *ad = haddr_get(hv);
		struct sv_sl parts;
		sl_init(&parts);
		for (size_t i = 0; i < hv->n; i++) {
			for (size_t j = 0; j < ad[i].n; j++) {
				const char *p;
				size_t pl;
				if (addr_part_sl(n->apart, ad[i].norm[j], run->limits.recipient_delimiter,
				    &p, &pl) == 0)
					sl_push(&parts, p, pl);
			}
			/* not (all) valid: :all sees the field as written */
			if (ad[i].invalid && n->apart == AP_ALL) {
				const char *v = hv->vals[i];
				while (*v == ' ' || *v == '\t')
					v++;
				sl_push(&parts, v, hv->lens[i] - (size_t)(v - hv->vals[i]));
			}
		}
		int r = sv_match_n(run, n, parts.v, parts.l, parts.n, keys, nk);
		sl_free(&parts);
		sieve_arg_list_ro_free(n, 0, names, nn);
		sieve_arg_list_ro_free(n, 1, keys, nk);
		return r;
	}
	int own;
	size_t *lens;
	char **vals = hvals_list(run, n, names, nn, &nv, &lens, &own);
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
	if (!kept) {
		sieve_strv_free(vals, nv);
	} else if (own) {
		free(vals);
		free(lens);
	}
	sieve_arg_list_ro_free(n, 0, names, nn);
	sieve_arg_list_ro_free(n, 1, keys, nk);
	return r;
}

/*
 * How the envelope test reads envelope item `which` (0 from, 1 to, 2 auth)
 * of text e, whatever the address part: into ent (kind and value).
 */
static void envp_read(int which, const char *e, struct sv_envp *ent)
{
	ent->kind = SV_EK_SKIP;
	ent->val = NULL;
	/* an SMTP path: <addr-spec>, or a bare addr-spec */
	char *a = NULL;
	size_t el = strlen(e);
	if (e[0] == '<') {
		if (el < 2 || e[el - 1] != '>' || memchr(e + 1, '<', el - 2) ||
		    memchr(e + 1, '>', el - 2))
			return;
		a = xstrndup(e + 1, el - 2);
	} else {
		if (strchr(e, '<') || strchr(e, '>'))
			return;
		a = xstrdup(e);
	}
	if (a[0] == '\0') {
		/* the null reverse-path is "" whatever the address part */
		ent->kind = SV_EK_NULL;
		ent->val = a;
		return;
	}
	if (which == 2 && !strchr(a, '@')) {
		/* an authenticated user name need not be an address */
		ent->kind = SV_EK_AUTHUSER;
		ent->val = a;
		return;
	}
	if (strchr(a, '<') || strchr(a, ' ')) {
		free(a);
		return;
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
			return;
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
		if (ok) {
			ent->kind = SV_EK_LOCAL;
			ent->val = a;
		} else {
			free(a);
		}
		return;
	}
	char *norm = NULL;
	if (sv_addr_parse(a, &norm) == 0) {	/* else an invalid path matches nothing */
		ent->kind = SV_EK_NORM;
		ent->val = norm;
		for (int k = AP_ALL; k <= AP_DOMAIN; k++)
			ent->haspart[k] = addr_part_sl(k, norm, "", &ent->part[k],
			    &ent->partlen[k]) == 0;
	}
	free(a);
}

/* envelope item `which` of text e as the envelope test reads it, once per
 * message for each text (in the message's index); *tmp_r 1: not kept,
 * the caller frees ent->val */
static const struct sv_envp *envp_get(struct sieve_run *run, int which, const char *e,
    struct sv_envp *tmp, int *tmp_r)
{
	struct sv_msgcache *c = mcache(run);
	*tmp_r = 0;
	for (size_t i = 0; i < c->nenvp; i++)
		if (c->envp[i].which == which && strcmp(c->envp[i].in, e) == 0)
			return &c->envp[i];
	struct sv_envp *ent = tmp;
	if (c->nenvp < SV_ENVP_MAX)
		ent = &c->envp[c->nenvp++];
	else
		*tmp_r = 1;
	ent->which = which;
	ent->in = *tmp_r ? NULL : xstrdup(e);
	envp_read(which, e, ent);
	return ent;
}

int sv_test_envelope(struct sieve_run *run, const struct sieve_node *n)
{
	size_t nn, nk;
	char **names = sieve_arg_list_ro(run, n, 0, &nn);
	char **keys = sieve_arg_list_ro(run, n, 1, &nk);
	struct sv_sl vals;
	char **tmps = NULL;	/* values not kept by the index */
	size_t ntmp = 0;
	sl_init(&vals);
	for (size_t i = 0; i < nn; i++) {
		const char *e = NULL;
		int which;
		if (!strcasecmp(names[i], "from"))
			e = run->msg->env_from, which = 0;
		else if (!strcasecmp(names[i], "to"))
			e = run->msg->env_to, which = 1;
		else if (!strcasecmp(names[i], "auth"))
			e = run->msg->env_auth, which = 2;
		if (e == NULL)
			continue;
		int is_tmp;
		struct sv_envp tmp;
		const struct sv_envp *ent = envp_get(run, which, e, &tmp, &is_tmp);
		const char *p = ent->val;
		size_t pl = 0;
		switch (ent->kind) {
		case SV_EK_NULL:
			break;
		case SV_EK_AUTHUSER:
			if (n->apart == AP_ALL || n->apart == AP_LOCAL || n->apart == AP_USER)
				pl = strlen(p);
			else
				p = NULL;
			break;
		case SV_EK_LOCAL:
			if (n->apart == AP_ALL || n->apart == AP_LOCAL)
				pl = strlen(p);
			else
				p = NULL;
			break;
		case SV_EK_NORM:
			if (n->apart <= AP_DOMAIN) {
				p = ent->haspart[n->apart] ? ent->part[n->apart] : NULL;
				pl = ent->partlen[n->apart];
			} else if (addr_part_sl(n->apart, ent->val,
			    run->limits.recipient_delimiter, &p, &pl) < 0) {
				p = NULL;
			}
			break;
		default:
			p = NULL;
			break;
		}
		if (p != NULL)
			sl_push(&vals, p, pl);
		if (is_tmp && tmp.val != NULL)
			sv_strv_push(&tmps, &ntmp, tmp.val);	/* freed after the match */
	}
	int r = sv_match_n(run, n, vals.v, vals.l, vals.n, keys, nk);
	sl_free(&vals);
	sieve_strv_free(tmps, ntmp);
	sieve_arg_list_ro_free(n, 0, names, nn);
	sieve_arg_list_ro_free(n, 1, keys, nk);
	return r;
}

int sv_test_header(struct sieve_run *run, const struct sieve_node *n)
{
	if (names_absent(run, n))
		return 0;
	size_t nn, nk, nv;
	char **names = sieve_arg_list_ro(run, n, 0, &nn);
	char **keys = sieve_arg_list_ro(run, n, 1, &nk);
	int own;
	size_t *lens;
	char **vals = hvals_list(run, n, names, nn, &nv, &lens, &own);
	if (vals != NULL) {	/* the index's: not freed */
		int r = sv_match_n(run, n, (const char *const *)vals, lens, nv, keys, nk);
		if (own) {
			free(vals);
			free(lens);
		}
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
	uint64_t m;
	if (names_mask(run, n, &m) != 0 && (m & n->hmask) != n->hmask)
		return 0;	/* a name is not in the message */
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
