/*
 * sieve_eval.c - runs a compiled script against a message: control flow
 * (if/elsif/else, stop, include/return), the match machinery (comparators,
 * match types, relational, match variables), the commands that add actions
 * (sieve_result.c checks them) and editheader. The message tests live in
 * sieve_tests.c, imap4flags in sieve_flags.c.
 *
 *   sieve_run()   one evaluation; actions appended to *res_r
 *   helpers for extension callbacks: sieve_arg_str(), sieve_match_values()...
 *
 * A CPU budget (limits.max_cpu_steps) counts commands, tests and matching
 * work: a run that exceeds it stops with a runtime error. Never does I/O.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include "rules/sieve_eval.h"
#include "common/xmalloc.h"

enum { R_GO = 0, R_STOP = 1, R_RETURN = 2, R_ERR = -1 };

void sieve_strv_free(char **v, size_t n)
{
	if (v == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

void sv_strv_push(char ***v, size_t *n, char *s)
{
	*v = xreallocarray(*v, *n + 1, sizeof(char *));
	(*v)[(*n)++] = s;
}

void sv_runtime_error(struct sieve_run *run, unsigned line, const char *fmt, ...)
{
	char buf[900];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	sieve_error_add(run->err, run->script->name, line, 0, "%s", buf);
	run->errored = 1;
}

static int budget(struct sieve_run *run, unsigned line)
{
	if (run->steps > run->limits.max_cpu_steps) {
		if (!run->errored)
			sv_runtime_error(run, line, "execution exceeded CPU time limit");
		return -1;
	}
	return 0;
}

/* ---- helpers for extension callbacks ---- */

void *sieve_run_ctx(struct sieve_run *run) { return run->opts.ctx; }
const struct sieve_msg *sieve_run_msg(struct sieve_run *run) { return run->msg; }
struct sieve_errors *sieve_run_errors(struct sieve_run *run) { return run->err; }
unsigned sieve_node_line(const struct sieve_node *n) { return n->line; }

void sieve_run_set_msg(struct sieve_run *run, const struct sieve_msg *m)
{
	run->msg = m;
	run->mc = NULL;
	sv_body_cache_free(run);
	for (size_t i = 0; i < run->nhdr; i++) {
		free(run->hdr[i].name);
		free(run->hdr[i].value);
	}
	free(run->hdr);
	run->hdr = NULL;
	run->nhdr = 0;
	run->hdr_edited = 0;
	run->size_delta = 0;
}

char *sieve_arg_str(struct sieve_run *run, const struct sieve_node *n, unsigned i)
{
	if (i >= n->npos || n->pos[i]->n == 0)
		return xstrdup("");
	return sv_expand(run, n->pos[i]->v[0].s);
}

static char **arg_list(struct sieve_run *run, const struct sv_arg *a, size_t *n_r)
{
	char **v = xcalloc(a->n + 1, sizeof(char *));
	for (size_t j = 0; j < a->n; j++)
		v[j] = sv_expand(run, a->v[j].s);
	*n_r = a->n;
	return v;
}

char **sieve_arg_list(struct sieve_run *run, const struct sieve_node *n, unsigned i, size_t *n_r)
{
	if (i >= n->npos) {
		*n_r = 0;
		return xcalloc(1, sizeof(char *));
	}
	return arg_list(run, n->pos[i], n_r);
}

/* positional argument i as the script has it, not copied, when nothing in
 * it can be a variable; else a copy as sieve_arg_list() makes. Read only;
 * give it back with sieve_arg_list_ro_free() */
char **sieve_arg_list_ro(struct sieve_run *run, const struct sieve_node *n, unsigned i,
    size_t *n_r)
{
	if (i < n->npos && n->pos[i]->sv != NULL && !run->script->uses_vars) {
		*n_r = n->pos[i]->n;
		return n->pos[i]->sv;
	}
	return sieve_arg_list(run, n, i, n_r);
}

void sieve_arg_list_ro_free(const struct sieve_node *n, unsigned i, char **v, size_t nv)
{
	if (i < n->npos && v == n->pos[i]->sv)
		return;
	sieve_strv_free(v, nv);
}

static int tag_index(const struct sieve_node *n, const char *tag)
{
	const char *const *tags = n->def ? n->def->tags : n->ext ? n->ext->tags : NULL;
	size_t tl = strlen(tag);
	unsigned char c0 = (unsigned char)tag[0] | 0x20;	/* tags are letters */
	for (int i = 0; tags && tags[i] && i < 12; i++) {
		const char *t = tags[i] + 1;
		if (((unsigned char)t[0] | 0x20) != c0)
			continue;	/* (asked on every test run: the cheap check first) */
		size_t l = strcspn(t, "=@");
		if (tl == l && strncasecmp(t, tag, l) == 0)
			return i;
	}
	return -1;
}

int sieve_node_has_tag(const struct sieve_node *n, const char *tag)
{
	int i = tag_index(n, tag);
	return i >= 0 && n->tagset[i];
}

const char *sieve_tag_str(struct sieve_run *run, const struct sieve_node *n, const char *tag,
    int *present_r)
{
	(void)run;
	int i = tag_index(n, tag);
	*present_r = i >= 0 && n->tagset[i];
	if (!*present_r || n->tagv[i]->type == ARG_TAG || n->tagv[i]->n == 0)
		return NULL;
	return n->tagv[i]->v[0].s;
}

long long sieve_tag_num(const struct sieve_node *n, const char *tag, long long dflt)
{
	int i = tag_index(n, tag);
	if (i < 0 || !n->tagset[i] || n->tagv[i]->type != ARG_NUM)
		return dflt;
	return (long long)n->tagv[i]->num;
}

char *sv_tag_expanded(struct sieve_run *run, const struct sieve_node *n, int i)
{
	if (!n->tagset[i] || n->tagv[i]->type == ARG_TAG || n->tagv[i]->n == 0)
		return NULL;
	return sv_expand(run, n->tagv[i]->v[0].s);
}

/* ---- matching ---- */

static void set_caps(struct sieve_run *run, char **caps)
{
	for (int k = 0; k < SV_NCAPS; k++) {
		free(run->caps[k]);
		run->caps[k] = caps[k];
		caps[k] = NULL;
	}
}

static int match_one(struct sieve_run *run, const struct sieve_node *n, const char *v,
    size_t vl, const char *k, size_t kl, void *re)
{
	run->steps += 1;
	switch (n->mtype) {
	case MT_IS:
		return sv_cmp_eq(n->comp, v, vl, k, kl);
	case MT_CONTAINS:
		return sv_contains(n->comp, v, vl, k, kl, &run->steps);
	case MT_MATCHES: {
		char *caps[SV_NCAPS] = { 0 };
		int want = run->script->uses_vars && !(n->def && n->def->id == T_BODY);
		int r = sv_glob(n->comp, k, kl, v, vl, want ? caps : NULL, &run->steps);
		if (r && want)
			set_caps(run, caps);
		for (int i = 0; want && i < SV_NCAPS; i++)
			free(caps[i]);
		return r;
	}
	case MT_VALUE:
		return sv_rel_holds(n->rel, sv_cmp_order(n->comp, v, vl, k, kl));
	case MT_REGEX: {
		char *caps[SV_NCAPS] = { 0 };
		int want = run->script->uses_vars && !(n->def && n->def->id == T_BODY);
		int r = sv_regex_match(re, v, vl, want ? caps : NULL);
		run->steps += vl;
		if (r > 0 && want)
			set_caps(run, caps);
		for (int i = 0; want && i < SV_NCAPS; i++)
			free(caps[i]);
		if (r < 0) {
			sv_runtime_error(run, n->line, "regex match exceeded its limits");
			run->steps = run->limits.max_cpu_steps + 1;
			return 0;
		}
		return r;
	}
	}
	return 0;
}

int sieve_match_values(struct sieve_run *run, const struct sieve_node *n,
    char **values, size_t nvalues, char **keys, size_t nkeys)
{
	return sv_match_n(run, n, (const char *const *)values, NULL, nvalues, keys, nkeys);
}

#define MATCH_STACK 16	/* keys whose regexes and lengths need no allocation */

static int match_general(struct sieve_run *run, const struct sieve_node *n,
    const char *const *values, const size_t *vlens, size_t nvalues, char **keys, size_t nkeys)
    __attribute__((noinline));

/* the match types without captures or set-up, for one key: what
 * match_general() does, in a function small enough to cost little */
int sv_match_n(struct sieve_run *run, const struct sieve_node *n, const char *const *values,
    const size_t *vlens, size_t nvalues, char **keys, size_t nkeys)
{
	int mt = n->mtype;
	if (nkeys != 1 || (mt != MT_IS && mt != MT_CONTAINS && mt != MT_VALUE))
		return match_general(run, n, values, vlens, nvalues, keys, nkeys);
	if (nvalues == 0)
		return 0;
	const char *k = keys[0];
	size_t kl = strlen(k);
	for (size_t i = 0; i < nvalues; i++) {
		size_t vl = vlens != NULL ? vlens[i] : strlen(values[i]);
		int r;
		run->steps += 1;
		if (mt == MT_IS)
			r = sv_cmp_eq(n->comp, values[i], vl, k, kl);
		else if (mt == MT_CONTAINS)
			r = sv_contains(n->comp, values[i], vl, k, kl, &run->steps);
		else
			r = sv_rel_holds(n->rel, sv_cmp_order(n->comp, values[i], vl, k, kl));
		if (r)
			return 1;
		if (run->steps > run->limits.max_cpu_steps)
			return 0;
	}
	return 0;
}

static int match_general(struct sieve_run *run, const struct sieve_node *n,
    const char *const *values, const size_t *vlens, size_t nvalues, char **keys, size_t nkeys)
{
	if (n->mtype == MT_COUNT) {
		char cnt[32];
		snprintf(cnt, sizeof(cnt), "%zu", nvalues);
		for (size_t j = 0; j < nkeys; j++)
			if (sv_rel_holds(n->rel, sv_cmp_order(n->comp, cnt, strlen(cnt), keys[j],
			    strlen(keys[j]))))
				return 1;
		return 0;
	}
	/* nothing to match: false (a regex key is still compiled below, for
	 * its error) */
	if (nvalues == 0 && n->mtype != MT_REGEX)
		return 0;
	void *re_st[MATCH_STACK], **re = NULL;
	int node_re = 0;	/* re[0] is n->regex (not ours to free) */
	if (n->mtype == MT_REGEX) {
		re = nkeys <= MATCH_STACK ? re_st : xcalloc(nkeys, sizeof(void *));
		for (size_t j = 0; j < nkeys; j++) {
			const char *e;
			re[j] = NULL;
			/* the script's one constant key was compiled with it */
			if (j == 0 && nkeys == 1 && n->regex != NULL && n->npos > 0 &&
			    n->pos[n->npos - 1]->n == 1 &&
			    (keys == n->pos[n->npos - 1]->sv ||
			    strcmp(keys[0], n->pos[n->npos - 1]->v[0].s) == 0)) {
				re[0] = n->regex;
				node_re = 1;
				continue;
			}
			re[j] = sv_regex_compile(keys[j], n->comp == CMP_CASEMAP, &e);
			if (re[j] == NULL)	/* logged; the key just never matches */
				sieve_error_add(run->err, run->script->name, n->line, 0, "invalid regular "
				    "expression '%s' for regex match: %s", keys[j], e);
		}
	}
	size_t kl_st[MATCH_STACK], *kl = nkeys <= MATCH_STACK ? kl_st :
	    xmalloc(nkeys * sizeof(size_t));
	for (size_t j = 0; j < nkeys && nvalues > 0; j++)
		kl[j] = strlen(keys[j]);
	int found = 0;
	for (size_t i = 0; i < nvalues && !found; i++) {
		size_t vl = vlens != NULL ? vlens[i] : strlen(values[i]);
		for (size_t j = 0; j < nkeys && !found; j++) {
			if (re && re[j] == NULL)
				continue;
			if (match_one(run, n, values[i], vl, keys[j], kl[j], re ? re[j] : NULL))
				found = 1;
			if (run->steps > run->limits.max_cpu_steps)
				goto out;
		}
	}
out:
	if (kl != kl_st)
		free(kl);
	if (re) {
		for (size_t j = node_re; j < nkeys; j++)
			if (re[j])
				sv_regex_free(re[j]);
		if (re != re_st)
			free(re);
	}
	return found;
}

/* ---- the message view (editheader edits a private copy) ---- */

const struct sieve_header *sv_hdrs(struct sieve_run *run, size_t *n_r)
{
	if (run->hdr_edited) {
		*n_r = run->nhdr;
		return run->hdr;
	}
	*n_r = run->msg ? run->msg->nhdr : 0;
	return run->msg ? run->msg->hdr : NULL;
}

static void hdr_own(struct sieve_run *run)
{
	if (run->hdr_edited)
		return;
	size_t n;
	const struct sieve_header *h = sv_hdrs(run, &n);
	run->hdr = xcalloc(n + 1, sizeof(*run->hdr));
	for (size_t i = 0; i < n; i++) {
		run->hdr[i].name = xstrdup(h[i].name);
		run->hdr[i].value = xstrdup(h[i].value);
	}
	run->nhdr = n;
	run->hdr_edited = 1;
}

const char *sv_header_get(struct sieve_run *run, const char *name, size_t idx)
{
	size_t n;
	const struct sieve_header *h = sv_hdrs(run, &n);
	int c0 = name[0] | 0x20;	/* first letter first: most names differ there */
	for (size_t i = 0; i < n; i++)
		if ((h[i].name[0] | 0x20) == c0 && strcasecmp(h[i].name, name) == 0 && idx-- == 0)
			return h[i].value;
	return NULL;
}

/* values of the named headers; :index / :last select one occurrence */
static int exec_block(struct sieve_run *run, struct sieve_node **cmds, size_t n);

static int eval_test_full(struct sieve_run *run, const struct sieve_node *n, int *res)
    __attribute__((noinline));

/* the tests a rule set is mostly made of, as eval_test_full() runs them, in
 * a function small enough to cost little to enter */
static int eval_test(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	int id = n->ext == NULL ? n->def->id : T_EXT;
	if (id != T_HEADER && id != T_ADDRESS && id != T_ENVELOPE && id != T_EXISTS)
		return eval_test_full(run, n, res);
	if (++run->steps > run->limits.max_cpu_steps)
		return budget(run, n->line) < 0 ? R_ERR : R_GO;
	*res = id == T_HEADER ? sv_test_header(run, n) : id == T_ADDRESS ?
	    sv_test_address(run, n) : id == T_ENVELOPE ? sv_test_envelope(run, n) :
	    sv_test_exists(run, n);
	if (run->steps > run->limits.max_cpu_steps)
		return budget(run, n->line) < 0 ? R_ERR : R_GO;
	return run->errored ? R_ERR : R_GO;
}

static int eval_test_full(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	run->steps++;
	if (budget(run, n->line) < 0)
		return R_ERR;
	if (n->ext) {
		int r = n->ext->exec(run, n, res);
		return r < 0 ? R_ERR : R_GO;
	}
	int r = 0;
	switch (n->def->id) {
	case T_TRUE: *res = 1; return R_GO;
	case T_FALSE: *res = 0; return R_GO;
	case T_NOT:
		r = eval_test(run, n->tests[0], res);
		*res = !*res;
		return r;
	case T_ALLOF:
	case T_ANYOF: {
		int want = n->def->id == T_ANYOF;
		*res = !want;
		for (size_t i = 0; i < n->ntests; i++) {
			int t;
			if ((r = eval_test(run, n->tests[i], &t)) != R_GO)
				return r;
			if (t == want) {
				*res = want;
				break;
			}
		}
		return R_GO;
	}
	case T_ADDRESS: *res = sv_test_address(run, n); break;
	case T_HEADER: *res = sv_test_header(run, n); break;
	case T_ENVELOPE: *res = sv_test_envelope(run, n); break;
	case T_EXISTS: *res = sv_test_exists(run, n); break;
	case T_SIZE: {
		uint64_t lim = n->pos[0]->num;
		long long sz = run->msg ? (long long)run->msg->size + run->size_delta : 0;
		if (sz < 0)
			sz = 0;
		*res = n->tagset[0] ? (uint64_t)sz > lim : (uint64_t)sz < lim;
		break;
	}
	case T_STRING: *res = sv_test_string(run, n); break;
	case T_HASFLAG: *res = sv_test_hasflag(run, n); break;
	case T_BODY: {
		char **vals;
		size_t nv, nk;
		if (sv_body_values(run, n, &vals, &nv) < 0)
			return R_ERR;
		char **keys = sieve_arg_list(run, n, 0, &nk);
		*res = sieve_match_values(run, n, vals, nv, keys, nk);
		free(vals);	/* the strings are the run's (sieve_body.c) */
		sieve_strv_free(keys, nk);
		break;
	}
	case T_DATE: *res = sv_test_date(run, n, 0); break;
	case T_CURRENTDATE: *res = sv_test_date(run, n, 1); break;
	case T_MAILBOXEXISTS: {
		size_t nb;
		char **boxes = sieve_arg_list(run, n, 0, &nb);
		*res = 1;
		for (size_t i = 0; i < nb && *res; i++) {
			int found = strcasecmp(boxes[i], "INBOX") == 0;
			if (!found && run->opts.mailbox_exists)
				found = run->opts.mailbox_exists(run->opts.ctx, boxes[i]);
			*res = found;
		}
		sieve_strv_free(boxes, nb);
		break;
	}
	case T_ENVIRONMENT: *res = sv_test_environment(run, n); break;
	case T_DUPLICATE: *res = sv_test_duplicate(run, n); break;
	case T_IHAVE: {
		size_t nc;
		char **c = sieve_arg_list(run, n, 0, &nc);
		*res = 1;
		for (size_t i = 0; i < nc; i++)
			*res &= sv_ihave_known(&run->script->opts, c[i]);
		sieve_strv_free(c, nc);
		break;
	}
	default:
		sv_runtime_error(run, n->line, "unsupported test '%s'", n->name);
		return R_ERR;
	}
	if (run->steps > run->limits.max_cpu_steps)
		return budget(run, n->line) < 0 ? R_ERR : R_GO;
	return run->errored ? R_ERR : R_GO;
}

/* ---- commands ---- */

static char *normalize_address(const char *in)
{
	char *r;
	return sv_addr_parse(in, &r) == 0 ? r : NULL;
}

static int valid_mailbox(const char *m)
{
	if (m[0] == '\0' || !sv_utf8_valid(m))
		return 0;
	for (const unsigned char *p = (const unsigned char *)m; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return 0;
	return 1;
}

static void take_flags(struct sieve_run *run, const struct sieve_node *n, struct sieve_action *a)
{
	int i = tag_index(n, "flags");
	char *cur;
	if (i >= 0 && n->tagset[i]) {
		size_t nl;
		char **l = arg_list(run, n->tagv[i], &nl);
		cur = sv_flags_join(l, nl);
		sieve_strv_free(l, nl);
	} else {
		/* the internal flags, possibly set by an earlier script of a multiscript run */
		if (!run->flags && !sv_script_has_cap(run->script, "imap4flags"))
			return;
		cur = xstrdup(run->flags ? run->flags : "");
	}
	a->flags = sv_flags_split(cur, &a->nflags);
	sv_flags_filter(a->flags, &a->nflags);
	if (a->flags == NULL)
		a->flags = xcalloc(1, sizeof(char *));
	free(cur);
}

static int add(struct sieve_run *run, struct sieve_action *a)
{
	return sv_result_add(run, a) < 0 ? R_ERR : R_GO;
}

/* add a; a new (not merged) action without :copy cancels the implicit keep
 * (a duplicate of an earlier :copy one does not: Pigeonhole) */
static int add_cancel(struct sieve_run *run, struct sieve_action *a)
{
	int copy = a->copy;
	int r = sv_result_add(run, a);
	if (r < 0)
		return R_ERR;
	if (r == 0 && !copy)
		run->keep_cancelled = 1;
	return R_GO;
}

static int in_list(const char *p, const char *h)
{
	size_t l = strlen(h);
	while (*p) {
		while (*p == ' ')
			p++;
		size_t n = strcspn(p, " ");
		if (n == l && !strncasecmp(p, h, l))
			return 1;
		p += n;
	}
	return 0;
}

/* may the script add (adding=1) or delete this field? */
static int is_protected_header(struct sieve_run *run, const char *h, int adding)
{
	if (!adding && (!strcasecmp(h, "received") || !strcasecmp(h, "auto-submitted")))
		return 1;	/* RFC 5293 9: never deleted (adding one is allowed) */
	if (!strcasecmp(h, "subject"))
		return 0;	/* never protectable (Pigeonhole) */
	return in_list(run->limits.editheader_protected, h) ||
	    in_list(adding ? run->limits.editheader_forbid_add :
	    run->limits.editheader_forbid_delete, h);
}

static int valid_header_name(const char *h)
{
	if (*h == '\0')
		return 0;
	for (const unsigned char *p = (const unsigned char *)h; *p; p++)
		if (*p <= 32 || *p >= 127 || *p == ':')
			return 0;
	return 1;
}

static int cmd_editheader(struct sieve_run *run, const struct sieve_node *n, int id)
{
	if (id == C_ADDHEADER) {
		char *name = sieve_arg_str(run, n, 0);
		char *val = sieve_arg_str(run, n, 1);
		if (!valid_header_name(name)) {
			sv_runtime_error(run, n->line, "addheader action: specified field name "
			    "'%s' is invalid", name);
			free(name);
			free(val);
			return R_ERR;
		}
		if (is_protected_header(run, name, 1)) {
			free(name);
			free(val);
			return R_GO;	/* Pigeonhole: silently ignored */
		}
		size_t maxh = run->limits.editheader_max_header_size;
		if (maxh && strlen(name) + strlen(val) + 2 > maxh) {
			sv_runtime_error(run, n->line, "addheader action: specified header field is too "
			    "large (max %zu bytes)", maxh);
			free(name);
			free(val);
			return R_ERR;
		}
		/* folded on the way in, unfolded on the way out: drop line ends */
		char *w = val;
		for (char *q = val; *q; q++)
			if (*q != '\r' && *q != '\n')
				*w++ = *q;
		*w = '\0';
		while (w > val && (w[-1] == ' ' || w[-1] == '\t'))
			*--w = '\0';
		hdr_own(run);
		run->hdr = xreallocarray(run->hdr, run->nhdr + 1, sizeof(*run->hdr));
		if (n->tagset[0]) {
			run->hdr[run->nhdr].name = xstrdup(name);
			run->hdr[run->nhdr].value = xstrdup(val);
		} else {
			memmove(run->hdr + 1, run->hdr, run->nhdr * sizeof(*run->hdr));
			run->hdr[0].name = xstrdup(name);
			run->hdr[0].value = xstrdup(val);
		}
		run->nhdr++;
		run->size_delta += (long long)(strlen(name) + strlen(val) + 4);
		struct sieve_action a = { .type = SIEVE_A_ADDHEADER, .target = name, .value = val,
			.last = n->tagset[0], .line = n->line };
		run->res->a = xreallocarray(run->res->a, run->res->n + 1, sizeof(a));
		run->res->a[run->res->n++] = a;
		return R_GO;
	}
	char *name = sieve_arg_str(run, n, 0);
	if (is_protected_header(run, name, 0) || !valid_header_name(name)) {
		free(name);
		return R_GO;
	}
	size_t nk = 0;
	char **keys = n->npos > 1 ? sieve_arg_list(run, n, 1, &nk) : NULL;
	long long index = sieve_tag_num(n, "index", 0);
	int last = n->tagset[1];
	hdr_own(run);
	size_t total = 0;
	for (size_t i = 0; i < run->nhdr; i++)
		total += strcasecmp(run->hdr[i].name, name) == 0;
	size_t seen = 0, w = 0;
	for (size_t i = 0; i < run->nhdr; i++) {
		int del = 0;
		if (strcasecmp(run->hdr[i].name, name) == 0) {
			seen++;
			del = 1;
			if (index > 0) {
				size_t want = last ? (index <= (long long)total ? total - (size_t)index + 1 : 0)
				    : (size_t)index;
				del = seen == want;
			}
			if (del && keys) {
				char *dv = sv_mime_decode(run->hdr[i].value);
				char *vals[1] = { dv };
				del = sieve_match_values(run, n, vals, 1, keys, nk);
				free(dv);
			}
		}
		if (del) {
			run->size_delta -= (long long)(strlen(run->hdr[i].name) +
			    strlen(run->hdr[i].value) + 4);
			free(run->hdr[i].name);
			free(run->hdr[i].value);
		} else {
			run->hdr[w++] = run->hdr[i];
		}
	}
	run->nhdr = w;
	struct sieve_action a = { .type = SIEVE_A_DELETEHEADER, .target = name, .line = n->line };
	run->res->a = xreallocarray(run->res->a, run->res->n + 1, sizeof(a));
	run->res->a[run->res->n++] = a;
	sieve_strv_free(keys, nk);
	return R_GO;
}

static int cmd_vacation(struct sieve_run *run, const struct sieve_node *n)
{
	struct sieve_action a = { .type = SIEVE_A_VACATION, .line = n->line };
	a.target = sieve_arg_str(run, n, 0);
	long long days = sieve_tag_num(n, "days", -1), secs = sieve_tag_num(n, "seconds", -1);
	a.seconds = secs >= 0 ? (unsigned long)secs : days >= 0 ? (unsigned long)days * 86400 :
	    7 * 86400;
	a.value = sv_tag_expanded(run, n, 2);
	a.from = sv_tag_expanded(run, n, 3);
	if (n->tagset[4]) {
		a.addresses = arg_list(run, n->tagv[4], &a.naddresses);
	}
	a.mime = n->tagset[5];
	a.handle = sv_tag_expanded(run, n, 6);
	char *nf = a.from ? normalize_address(a.from) : NULL;
	free(nf);
	if (a.from && nf == NULL) {
		sv_runtime_error(run, n->line, "specified :from address '%s' is invalid for "
		    "vacation action", a.from);
		sv_action_clear(&a);
		return R_ERR;
	}
	return add(run, &a);
}

static int run_script(struct sieve_run *run, const struct sieve_script *s);

static int exec_cmd_full(struct sieve_run *run, const struct sieve_node *n, int *chain)
    __attribute__((noinline));

/* if and elsif, as exec_cmd_full() runs them, in a function small enough
 * to cost little to enter (a rule set is a row of them) */
static int exec_cmd(struct sieve_run *run, const struct sieve_node *n, int *chain)
{
	int id = n->ext == NULL ? n->def->id : 0;
	if (id != C_IF && id != C_ELSIF)
		return exec_cmd_full(run, n, chain);
	run->steps++;
	if (budget(run, n->line) < 0)
		return R_ERR;
	if (id == C_ELSIF && *chain)
		return R_GO;
	if (n->ihave_dead) {
		*chain = 0;	/* never compiled: cannot run */
		return R_GO;
	}
	int t, r;
	if ((r = eval_test(run, n->tests[0], &t)) != R_GO)
		return r;
	*chain = t;
	return t ? exec_block(run, n->cmds, n->ncmds) : R_GO;
}

static int exec_cmd_full(struct sieve_run *run, const struct sieve_node *n, int *chain)
{
	run->steps++;
	if (budget(run, n->line) < 0)
		return R_ERR;
	if (n->ext) {
		int t = 0;
		int r = n->ext->exec(run, n, &t);
		return r < 0 ? R_ERR : r == 1 ? R_STOP : R_GO;
	}
	int id = n->def->id;
	int r, t;
	switch (id) {
	case C_REQUIRE:
		return R_GO;
	case C_IF:
	case C_ELSIF:
		if (id == C_ELSIF && *chain)
			return R_GO;
		if (n->ihave_dead) {
			*chain = 0;	/* never compiled: cannot run */
			return R_GO;
		}
		if ((r = eval_test(run, n->tests[0], &t)) != R_GO)
			return r;
		*chain = t;
		return t ? exec_block(run, n->cmds, n->ncmds) : R_GO;
	case C_ELSE:
		if (*chain)
			return R_GO;
		return exec_block(run, n->cmds, n->ncmds);
	case C_STOP:
		return R_STOP;
	case C_KEEP: {
		struct sieve_action a = { .type = SIEVE_A_KEEP, .line = n->line };
		take_flags(run, n, &a);
		run->keep_cancelled = 1;
		return add(run, &a);
	}
	case C_DISCARD: {
		struct sieve_action a = { .type = SIEVE_A_DISCARD, .line = n->line };
		run->keep_cancelled = 1;
		return add(run, &a);
	}
	case C_REDIRECT: {
		char *raw = sieve_arg_str(run, n, 0);
		char *addr = normalize_address(raw);
		if (addr == NULL) {
			sv_runtime_error(run, n->line, "specified redirect address '%s' is invalid", raw);
			free(raw);
			return R_ERR;
		}
		free(raw);
		struct sieve_action a = { .type = SIEVE_A_REDIRECT, .target = addr,
			.copy = n->tagset[0], .line = n->line };
		return add_cancel(run, &a);
	}
	case C_FILEINTO: {
		char *box = sieve_arg_str(run, n, 0);
		if (!valid_mailbox(box)) {
			sv_runtime_error(run, n->line, "fileinto action: invalid folder name '%s' "
			    "specified", box);
			free(box);
			return R_ERR;
		}
		if (strncasecmp(box, "INBOX", 5) == 0 && (box[5] == '\0' || box[5] == '.' ||
		    box[5] == '/'))
			memcpy(box, "INBOX", 5);
		struct sieve_action a = { .type = SIEVE_A_FILEINTO, .target = box,
			.copy = n->tagset[0], .create = n->tagset[2], .line = n->line };
		take_flags(run, n, &a);
		return add_cancel(run, &a);
	}
	case C_REJECT:
	case C_EREJECT: {
		struct sieve_action a = { .type = id == C_REJECT ? SIEVE_A_REJECT : SIEVE_A_EREJECT,
			.target = sieve_arg_str(run, n, 0), .line = n->line };
		run->keep_cancelled = 1;
		return add(run, &a);
	}
	case C_SET: {
		char *name = sieve_arg_str(run, n, 0);
		char *val = sieve_arg_str(run, n, 1);
		char *mod = sv_set_modify(n, val);
		size_t ml = strlen(mod);
		if (n->tagset[4] && ml > run->limits.max_var_size) {
			/* a cut must not leave half of a "\x" pair */
			size_t cut = run->limits.max_var_size, bs = 0;
			while (cut > 0 && ((unsigned char)mod[cut] & 0xc0) == 0x80)
				cut--;
			while (bs < cut && mod[cut - 1 - bs] == '\\')
				bs++;
			if (bs % 2)
				cut--;
			mod[cut] = '\0';
		}
		sv_var_set(run, name, mod);
		free(mod);
		free(val);
		free(name);
		return R_GO;
	}
	case C_ADDFLAG:
	case C_SETFLAG:
	case C_REMOVEFLAG:
		sv_flag_cmd(run, n, id);
		return R_GO;
	case C_ADDHEADER:
	case C_DELETEHEADER:
		return cmd_editheader(run, n, id);
	case C_VACATION:
		return cmd_vacation(run, n);
	case C_INCLUDE:
		if (n->incl == NULL)
			return R_GO;	/* :optional and missing */
		if (n->once)
			for (size_t i = 0; i < run->nincluded; i++)
				if (run->included[i] == n->incl || (run->included[i]->path &&
				    n->incl->path && !strcmp(run->included[i]->path, n->incl->path)))
					return R_GO;
		if (run->include_depth >= run->limits.max_include_depth) {
			sv_runtime_error(run, n->line, "include nesting too deep");
			return R_ERR;
		}
		run->included = xreallocarray(run->included, run->nincluded + 1, sizeof(void *));
		run->included[run->nincluded++] = n->incl;
		run->include_depth++;
		r = run_script(run, n->incl);
		run->include_depth--;
		return r == R_RETURN ? R_GO : r;
	case C_RETURN:
		return R_RETURN;
	case C_GLOBAL: {
		size_t nn;
		char **names = sieve_arg_list(run, n, 0, &nn);
		for (size_t i = 0; i < nn; i++)
			sv_var_declare_global(run, names[i]);
		sieve_strv_free(names, nn);
		return R_GO;
	}
	case C_ERROR: {
		char *m = sieve_arg_str(run, n, 0);
		sv_runtime_error(run, n->line, "%s", m);
		free(m);
		return R_ERR;
	}
	default:
		sv_runtime_error(run, n->line, "unsupported command '%s'", n->name);
		return R_ERR;
	}
}

static int exec_block(struct sieve_run *run, struct sieve_node **cmds, size_t n)
{
	int chain = 0;
	for (size_t i = 0; i < n; i++) {
		int r = exec_cmd(run, cmds[i], &chain);
		if (r != R_GO)
			return r;
	}
	return R_GO;
}

int sieve_run_block(struct sieve_run *run, const struct sieve_node *n)
{
	int r = exec_block(run, n->cmds, n->ncmds);
	return r == R_ERR ? -1 : r == R_GO ? 0 : 1;
}

static int run_script(struct sieve_run *run, const struct sieve_script *s)
{
	const struct sieve_script *saved = run->script;
	struct sv_vars *saved_vars = run->vars;
	struct sv_vars local = { 0 };
	run->script = s;
	run->vars = &local;
	int r = exec_block(run, s->cmds, s->ncmds);
	sv_vars_free(&local);
	run->script = saved;
	run->vars = saved_vars;
	return r;
}

int sieve_run(const struct sieve_script *s, const struct sieve_msg *m,
    const struct sieve_run_opts *o, struct sieve_result **res_r, struct sieve_errors *err)
{
	return sieve_run_with(s, m, o, res_r, err, NULL);
}

int sieve_run_with(const struct sieve_script *s, const struct sieve_msg *m,
    const struct sieve_run_opts *o, struct sieve_result **res_r, struct sieve_errors *err,
    struct sieve_run **run_r)
{
	struct sieve_run run = { 0 };
	if (run_r)
		*run_r = &run;
	run.script = s;
	run.msg = m;
	if (o)
		run.opts = *o;
	if (o && o->limits)
		run.limits = *o->limits;
	else
		sieve_limits_default(&run.limits);
	if (*res_r == NULL)
		*res_r = xcalloc(1, sizeof(**res_r));
	run.res = *res_r;
	run.err = err;
	/* a result carried over from an earlier script keeps its keep state
	 * and its internal flags (imap4flags), as Pigeonhole's multiscript does */
	run.keep_cancelled = run.res->n > 0 && !run.res->implicit_keep;
	if (run.res->nkeep_flags)
		run.flags = sv_flags_join(run.res->keep_flags, run.res->nkeep_flags);
	if (run.res->keep_hdr) {
		/* and the header as the earlier script left it (editheader) */
		run.hdr = xcalloc(run.res->keep_nhdr + 1, sizeof(*run.hdr));
		for (size_t i = 0; i < run.res->keep_nhdr; i++) {
			run.hdr[i].name = xstrdup(run.res->keep_hdr[i].name);
			run.hdr[i].value = xstrdup(run.res->keep_hdr[i].value);
		}
		run.nhdr = run.res->keep_nhdr;
		run.hdr_edited = 1;
	}
	int r = run_script(&run, s);
	if (r == R_ERR || run.errored) {
		/* a failed run keeps the message, as it came (Pigeonhole does so) */
		run.res->failed = 1;
		run.res->implicit_keep = 1;
	} else {
		run.res->implicit_keep = !run.keep_cancelled;
		sieve_strv_free(run.res->keep_flags, run.res->nkeep_flags);
		run.res->keep_flags = sv_flags_split(run.flags ? run.flags : "", &run.res->nkeep_flags);
		if (run.hdr_edited)
			sv_result_snapshot(&run, &run.res->keep_hdr, &run.res->keep_nhdr);
	}
	for (int k = 0; k < SV_NCAPS; k++)
		free(run.caps[k]);
	free(run.flags);
	sv_vars_free(&run.globals);
	sieve_run_set_msg(&run, NULL);
	free(run.included);
	*res_r = run.res;	/* an extension may have replaced it */
	if (run_r)
		*run_r = NULL;
	return r == R_ERR || run.errored ? -1 : 0;
}
