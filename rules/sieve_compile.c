/*
 * sieve_compile.c - from text to a checked script: lex + parse, then
 * validate every command and test against its signature (sieve_defs.c):
 * capabilities named by `require`, tagged and positional arguments and their
 * types, sub-tests and blocks, comparators, match types, address parts,
 * encoded-character. Errors read FILE:LINE:COLUMN: message, in Pigeonhole's
 * words where they fit, followed by one summary error, as Pigeonhole counts.
 *
 *   sieve_compile() / sieve_compile_file() / sieve_script_free()
 *   sieve_limits_default(), sieve_errors_clear(), sieve_error_add()
 *
 * Never executes anything; reads files only for `include`.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include "rules/sieve_ast.h"
#include "common/xmalloc.h"

static const char *const core_caps[] = {
	"comparator-i;octet", "comparator-i;ascii-casemap", "comparator-i;ascii-numeric",
	"fileinto", "envelope", "reject", "ereject", "copy", "relational", "subaddress",
	"imap4flags", "variables", "body", "editheader", "date", "index", "mailbox",
	"environment", "include", "vacation", "vacation-seconds", "duplicate", "regex",
	"encoded-character", "ihave", NULL,
};

void sieve_limits_default(struct sieve_limits *l)
{
	memset(l, 0, sizeof(*l));
	l->editheader_max_header_size = SIEVE_MAX_HEADER_SIZE;
	l->max_script_size = SIEVE_MAX_SCRIPT_SIZE;
	l->max_nesting = SIEVE_MAX_NESTING;
	l->max_actions = SIEVE_MAX_ACTIONS;
	l->max_redirects = SIEVE_MAX_REDIRECTS;
	l->max_include_depth = SIEVE_MAX_INCLUDE_DEPTH;
	l->max_cpu_steps = SIEVE_MAX_CPU_STEPS;
	l->max_var_size = SIEVE_MAX_VAR_SIZE;
	l->max_includes = SIEVE_MAX_INCLUDES;
	snprintf(l->recipient_delimiter, sizeof(l->recipient_delimiter), "+");
}

void sieve_errors_clear(struct sieve_errors *e)
{
	for (size_t i = 0; i < e->n; i++)
		free(e->msg[i]);
	free(e->msg);
	e->msg = NULL;
	e->n = 0;
	e->warnings = 0;
}

void sieve_error_add(struct sieve_errors *e, const char *file, unsigned line,
    unsigned col, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (e == NULL || e->n >= SIEVE_MAX_ERRORS * 4)
		return;
	e->msg = xreallocarray(e->msg, e->n + 1, sizeof(*e->msg));
	if (line > 0 && col > 0)
		e->msg[e->n++] = xasprintf("%s:%u:%u: %s", file ? file : "script", line, col, buf);
	else if (line > 0)	/* run-time errors know the line only */
		e->msg[e->n++] = xasprintf("%s:%u: %s", file ? file : "script", line, buf);
	else
		e->msg[e->n++] = xasprintf("%s: %s", file ? file : "script", buf);
}

int sv_script_has_cap(const struct sieve_script *s, const char *cap)
{
	for (size_t i = 0; i < s->ncaps; i++)
		if (strcasecmp(s->caps[i], cap) == 0)
			return 1;
	return 0;
}

struct cctx {
	struct sieve_script *s;
	struct sieve_errors *err;
	int errors;
	int seen_other;		/* a command other than require was seen */
	unsigned depth;		/* include depth */
	char **unknown; size_t nunknown;
	struct cctx *parent;
	const char **vars; size_t nvars;	/* variables set (a count for the limit) */
	unsigned nincludes;			/* at the root: includes so far */
	int vars_over;
};

static void cerr(struct cctx *c, unsigned line, unsigned col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void cerr(struct cctx *c, unsigned line, unsigned col, const char *fmt, ...)
{
	char buf[900];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	sieve_error_add(c->err, c->s->name, line, col, "%s", buf);
	c->errors++;
}

static int cap_known(const struct sieve_compile_opts *o, const char *cap);

/* ihave: known, and loadable at run time (not encoded-character, variables) */
int sv_ihave_known(const struct sieve_compile_opts *o, const char *cap)
{
	if (!strcasecmp(cap, "encoded-character") || !strcasecmp(cap, "variables"))
		return 0;
	return cap_known(o, cap);
}

static int cap_known(const struct sieve_compile_opts *o, const char *cap)
{
	if (o->disabled_caps) {
		const char *p = strstr(o->disabled_caps, cap);
		size_t l = strlen(cap);
		if (p && (p == o->disabled_caps || p[-1] == ' ') && (p[l] == '\0' || p[l] == ' '))
			return 0;
	}
	for (const char *const *k = core_caps; *k; k++)
		if (strcasecmp(*k, cap) == 0)
			return 1;
	if (o->extra_caps)
		for (const char *const *k = o->extra_caps; *k; k++)
			if (strcasecmp(*k, cap) == 0)
				return 1;
	return 0;
}

static const char *kind(const struct sieve_node *n) { return n->is_test ? "test" : "command"; }

static const char *argtype_name(const struct sv_arg *a)
{
	switch (a->type) {
	case ARG_NUM: return "number";
	case ARG_STR: return "string";
	case ARG_LIST: return "string list";
	default: return "tag";
	}
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9') return c - '0';
	c = tolower(c);
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	return -1;
}

static void put_utf8(char **o, unsigned long cp)
{
	unsigned char *u = (unsigned char *)*o;
	int extra = cp < 0x80 ? 0 : cp < 0x800 ? 1 : cp < 0x10000 ? 2 : 3;
	static const unsigned char lead[] = { 0x00, 0xc0, 0xe0, 0xf0 };
	*u++ = (unsigned char)(lead[extra] | (cp >> (6 * extra)));
	for (int i = extra - 1; i >= 0; i--)
		*u++ = (unsigned char)(0x80 | ((cp >> (6 * i)) & 0x3f));
	*o = (char *)u;
}

/* RFC 5228 2.4.2.4: ${hex:..} and ${unicode:..}; a malformed one stays as written */
static int decode_encoded(struct cctx *c, struct sv_arg *a, struct sv_str *str)
{
	if (strstr(str->s, "${") == NULL)
		return 0;
	char *out = xmalloc(str->len + 1), *o = out;
	const char *p = str->s, *end = str->s + str->len;
	while (p < end) {
		int uni = 0;
		size_t pre = 0;
		if (p + 6 <= end && p[0] == '$' && p[1] == '{') {
			if (strncasecmp(p + 2, "hex:", 4) == 0)
				pre = 6;
			else if (p + 10 <= end && strncasecmp(p + 2, "unicode:", 8) == 0)
				pre = 10, uni = 1;
		}
		if (pre == 0) {
			*o++ = *p++;
			continue;
		}
		const char *q = p + pre;
		char tmp[1024], *t = tmp;
		int ok = 1, any = 0;
		unsigned long badv = 0;
		for (;;) {
			while (q < end && (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\n'))
				q++;
			if (q < end && *q == '}')
				break;
			const char *h = q;
			unsigned long v = 0;
			while (q < end && hexval((unsigned char)*q) >= 0) {
				v = v * 16 + (unsigned long)hexval((unsigned char)*q);
				if (v > 0x7fffffff) v = 0x7fffffff;
				q++;
			}
			if (q == h || (size_t)(t - tmp) > sizeof(tmp) - 8) { ok = 0; break; }
			if (q < end && *q != ' ' && *q != '\t' && *q != '\r' && *q != '\n' && *q != '}') { ok = 0; break; }
			any = 1;
			if (uni) {
				if ((v >= 0xd800 && v <= 0xdfff) || v > 0x10ffff) {
					if (!badv)
						badv = v;
					continue;
				}
				put_utf8(&t, v);
			} else {
				if (v > 0xff) { ok = 0; break; }
				*t++ = (char)v;
			}
		}
		if (!any)
			ok = 0;
		if (ok && q < end && *q == '}' && badv) {
			cerr(c, a->line, a->col, "invalid unicode character 0x%lx in encoded character "
			    "substitution", badv);
			ok = 0;
		}
		if (ok && q < end && *q == '}') {
			(void)any;
			memcpy(o, tmp, (size_t)(t - tmp));
			o += t - tmp;
			p = q + 1;
		} else {
			*o++ = *p++;
		}
	}
	*o = '\0';
	free(str->s);
	str->s = out;
	str->len = (size_t)(o - out);
	return 0;
}

static int is_addr_header(const char *h)
{
	static const char *const ok[] = {
		"from", "sender", "to", "cc", "bcc", "reply-to", "resent-from", "resent-sender",
		"resent-to", "resent-cc", "resent-bcc", "resent-reply-to", "return-path",
		"delivered-to", "envelope-to", "errors-to", "mail-followup-to", "mail-reply-to",
		"original-recipient", "x-original-to", "disposition-notification-to",
		"apparently-to", "x-envelope-to", "for", "approved", "original-from",
		"original-sender", "x-beenthere", "x-loop", NULL,
	};
	for (const char *const *k = ok; *k; k++)
		if (strcasecmp(*k, h) == 0)
			return 1;
	return 0;
}

/* a namespace the script may use: global. with include */
static int known_namespace(const struct sieve_script *s, const char *name, size_t len)
{
	if (len == 3 && !strncasecmp(name, "tst", 3) && sv_script_has_cap(s, "vnd.dovecot.testsuite"))
		return 1;	/* the testsuite's own variables */
	return len == 6 && !strncasecmp(name, "global", 6) && sv_script_has_cap(s, "include");
}

/* ${...} references in a string: unknown namespaces, match index range */
static int check_var_refs(struct cctx *c, const struct sv_arg *a, const char *str)
{
	int ret = 0;
	for (const char *p = strstr(str, "${"); p; p = strstr(p + 2, "${")) {
		const char *e = strchr(p + 2, '}');
		if (!e)
			break;
		const char *nm = p + 2;
		size_t l = (size_t)(e - nm);
		if (l == 0)
			continue;
		if (isdigit((unsigned char)nm[0])) {
			size_t k = 0;
			while (k < l && isdigit((unsigned char)nm[k]))
				k++;
			if (k == l && strtoul(nm, NULL, 10) > SIEVE_MAX_MATCH_INDEX) {
				cerr(c, a->line, a->col, "match value index %.*s exceeds the maximum of %d",
				    (int)l, nm, SIEVE_MAX_MATCH_INDEX);
				ret = -1;
			}
			continue;
		}
		const char *dot = memchr(nm, '.', l);
		if (!dot)
			continue;
		int ok = 1;
		for (size_t k = 0; k < l; k++)
			if (!(isalnum((unsigned char)nm[k]) || nm[k] == '_' || nm[k] == '.'))
				ok = 0;
		if (ok && !known_namespace(c->s, nm, (size_t)(dot - nm))) {
			cerr(c, a->line, a->col, "referring to variable in unknown namespace '%.*s'",
			    (int)(dot - nm), nm);
			ret = -1;
		}
	}
	return ret;
}

static int valid_var_name(const char *s, int allow_num)
{
	if (*s == '\0')
		return 0;
	if (allow_num && isdigit((unsigned char)*s)) {
		for (; *s; s++)
			if (!isdigit((unsigned char)*s))
				return 0;
		return 1;
	}
	const char *p = s;
	for (;;) {
		if (!(isalpha((unsigned char)*p) || *p == '_'))
			return 0;
		while (isalnum((unsigned char)*p) || *p == '_')
			p++;
		if (*p == '\0')
			return 1;
		if (*p != '.')
			return 0;
		p++;
	}
}

/* a tag of the def's table: ":name=T@ext" */
static int def_tag(const char *const *tags, const char *name, char *type_r, const char **ext_r)
{
	for (int i = 0; tags && tags[i]; i++) {
		const char *t = tags[i] + 1;
		size_t l = strcspn(t, "=@");
		if (strlen(name) == l && strncasecmp(t, name, l) == 0) {
			*type_r = t[l] == '=' ? t[l + 1] : 0;
			const char *at = strchr(t, '@');
			*ext_r = at ? at + 1 : NULL;
			return i;
		}
	}
	return -1;
}

static int group_tag(const struct sieve_script *s, int groups, const char *t)
{
	static const char *const mt[] = { "is", "contains", "matches", NULL };
	static const char *const ap[] = { "all", "localpart", "domain", NULL };
	if (groups & SIEVE_G_MATCH) {
		for (int i = 0; mt[i]; i++)
			if (!strcasecmp(t, mt[i]))
				return 1;
		if (sv_script_has_cap(s, "relational") && (!strcasecmp(t, "value") ||
		    !strcasecmp(t, "count")))
			return 1;
		if (sv_script_has_cap(s, "regex") && !strcasecmp(t, "regex"))
			return 1;
	}
	if (groups & SIEVE_G_ADDR) {
		for (int i = 0; ap[i]; i++)
			if (!strcasecmp(t, ap[i]))
				return 1;
		if (sv_script_has_cap(s, "subaddress") && (!strcasecmp(t, "user") ||
		    !strcasecmp(t, "detail")))
			return 1;
	}
	if ((groups & SIEVE_G_COMP) && !strcasecmp(t, "comparator"))
		return 1;
	return 0;
}

static int compile_nodes(struct cctx *c, struct sieve_node **v, size_t n, int top);
static int compile_nodes_test(struct cctx *c, struct sieve_node *t);

static int load_include(struct cctx *c, struct sieve_node *n);

/* sub-tests and block, Pigeonhole's words: -1 after reporting */
static int check_structure(struct cctx *c, struct sieve_node *n, int subtests, int block,
    const char *const *tags, int groups, int with_block)
{
	const struct sieve_script *s = c->s;
	if (subtests == 0 && n->has_tests) {
		char ty;
		const char *ext;
		const char *t0 = n->tests[0]->name;
		const struct sv_def *td = sv_def_find(t0, 1);
		const struct sv_def *cd = sv_def_find(t0, 0);
		if (td && (!td->ext || sv_script_has_cap(s, td->ext)))
			cerr(c, n->line, n->col, "the %s %s accepts no sub-tests, but tests are "
			    "specified", n->name, kind(n));
		else if (!(cd && (!cd->ext || sv_script_has_cap(s, cd->ext))) &&
		    (def_tag(tags, t0, &ty, &ext) >= 0 || group_tag(s, groups, t0)))
			cerr(c, n->line, n->col, "missing colon ':' before ':%s' tag in %s %s", t0,
			    n->name, kind(n));
		else
			cerr(c, n->line, n->col, "missing semicolon ';' after %s %s", n->name, kind(n));
		return -1;
	}
	if (subtests == 1 && (n->ntests != 1 || n->has_tests == 2)) {
		cerr(c, n->line, n->col, "the %s %s requires one sub-test, but %s", n->name, kind(n),
		    n->ntests ? "a list of tests is specified" : "none is specified");
		return -1;
	}
	if (subtests == 2 && n->has_tests != 2) {
		cerr(c, n->line, n->col, "the %s %s requires a list of sub-tests, but %s",
		    n->name, kind(n), n->ntests ? "a single test is specified" : "none is specified");
		return -1;
	}
	if (!with_block || n->is_test)
		return 0;
	if (block && !n->has_block) {
		cerr(c, n->line, n->col, "the %s command requires a command block, but it is missing",
		    n->name);
		return -1;
	}
	if (!block && n->has_block) {
		cerr(c, n->line, n->col, "the %s command does not accept a command block, but one "
		    "is specified anyway", n->name);
		return -1;
	}
	return 0;
}

static int check_node(struct cctx *c, struct sieve_node *n)
{
	struct sieve_script *s = c->s;
	const struct sv_def *d = sv_def_find(n->name, n->is_test);
	const struct sieve_extdef *x = NULL;
	if (d && d->ext && !sv_script_has_cap(s, d->ext))
		d = NULL;
	if (!d && s->opts.extra) {
		for (const struct sieve_extdef *e = s->opts.extra; e->name; e++)
			if (e->is_test == n->is_test && strcasecmp(e->name, n->name) == 0 &&
			    (!e->ext || sv_script_has_cap(s, e->ext)))
				x = e;
	}
	if (!d && !x) {
		const struct sv_def *o = sv_def_find(n->name, !n->is_test);
		if (o && (!o->ext || sv_script_has_cap(s, o->ext))) {
			cerr(c, n->line, n->col, "attempted to use %s '%s' as %s",
			    o->is_test ? "test" : "command", n->name, kind(n));
			return -1;
		}
		for (size_t i = 0; i < c->nunknown; i++)
			if (strcmp(c->unknown[i], n->name) == 0) {
				c->errors++;	/* still an error, reported once */
				return -1;
			}
		c->unknown = xreallocarray(c->unknown, c->nunknown + 1, sizeof(char *));
		c->unknown[c->nunknown++] = n->name;
		cerr(c, n->line, n->col, "unknown %s '%s' (only reported once at first occurrence)",
		    kind(n), n->name);
		return -1;
	}
	n->def = d;
	n->ext = x;
	const char *pos = d ? d->pos : x->pos;
	const char *const *tags = d ? d->tags : x->tags;
	int groups = d ? d->groups : x->groups;
	int block = d ? d->block : x->block;
	int subtests = d ? d->subtests : 0;
	int ret = 0;
	n->mtype = MT_IS;
	/* Pigeonhole's string test compares octets unless told otherwise */
	n->comp = d && d->id == T_STRING ? CMP_OCTET : CMP_CASEMAP;
	n->apart = AP_ALL;
	int have_mt = 0, have_cmp = 0, have_ap = 0;

	/* encoded-character first: it changes the strings */
	if (sv_script_has_cap(s, "encoded-character"))
		for (size_t i = 0; i < n->nargs; i++)
			for (size_t j = 0; j < n->args[i].n; j++)
				decode_encoded(c, &n->args[i], &n->args[i].v[j]);


	if (sv_script_has_cap(s, "variables")) {
		int bad = 0;
		for (size_t i = 0; i < n->nargs; i++)
			for (size_t j = 0; j < n->args[i].n; j++)
				if (check_var_refs(c, &n->args[i], n->args[i].v[j].s) < 0)
					bad = 1;
		if (bad)
			goto args_failed;
	}
	for (size_t i = 0; i < n->nargs; i++) {
		struct sv_arg *a = &n->args[i];
		if (a->type != ARG_TAG) {
			if (n->npos >= 8) {
				cerr(c, a->line, a->col, "too many positional arguments for the %s %s",
				    n->name, kind(n));
				goto args_failed;
			}
			n->pos[n->npos++] = a;
			continue;
		}
		const char *t = a->tag;
		int mt = -1, ap = -1;
		if (n->npos > 0 && !n->ext) {
			char ty0;
			const char *e0;
			if (def_tag(tags, t, &ty0, &e0) >= 0 || group_tag(s, groups, t)) {
				cerr(c, a->line, a->col, "unexpected tagged argument ':%s' for the %s "
				    "%s (tagged arguments come before positional ones)", t, n->name, kind(n));
				goto args_failed;
			}
		}
		if (groups & SIEVE_G_MATCH) {
			if (!strcasecmp(t, "is")) mt = MT_IS;
			else if (!strcasecmp(t, "contains")) mt = MT_CONTAINS;
			else if (!strcasecmp(t, "matches")) mt = MT_MATCHES;
			else if (!strcasecmp(t, "value") && sv_script_has_cap(s, "relational")) mt = MT_VALUE;
			else if (!strcasecmp(t, "count") && sv_script_has_cap(s, "relational")) mt = MT_COUNT;
			else if (!strcasecmp(t, "regex") && sv_script_has_cap(s, "regex")) mt = MT_REGEX;
		}
		if (groups & SIEVE_G_ADDR) {
			if (!strcasecmp(t, "all")) ap = AP_ALL;
			else if (!strcasecmp(t, "localpart")) ap = AP_LOCAL;
			else if (!strcasecmp(t, "domain")) ap = AP_DOMAIN;
			else if (!strcasecmp(t, "user") && sv_script_has_cap(s, "subaddress")) ap = AP_USER;
			else if (!strcasecmp(t, "detail") && sv_script_has_cap(s, "subaddress")) ap = AP_DETAIL;
		}
		if (mt >= 0) {
			if (have_mt) {
				cerr(c, a->line, a->col, "unexpected tagged argument ':%s' for the %s %s "
				    "(match type already specified)", t, n->name, kind(n));
				goto args_failed;
			}
			have_mt = 1;
			n->mtype = mt;
			if (mt == MT_VALUE || mt == MT_COUNT) {
				if (i + 1 >= n->nargs || n->args[i + 1].type != ARG_STR) {
					cerr(c, a->line, a->col, "the :%s match type requires a constant "
					    "string argument being a relational match type", t);
					goto args_failed;
				}
				struct sv_arg *r = &n->args[++i];
				n->mtarg = r;
				n->rel = sv_rel_parse(r->v[0].s);
				if (n->rel < 0) {
					cerr(c, r->line, r->col, "invalid relational match type '%s' "
					    "specified for :%s", r->v[0].s, t);
					goto args_failed;
				}
			}
			continue;
		}
		if (ap >= 0) {
			if (have_ap) {
				cerr(c, a->line, a->col, "unexpected tagged argument ':%s' for the %s %s "
				    "(address part already specified)", t, n->name, kind(n));
				goto args_failed;
			}
			have_ap = 1;
			n->apart = ap;
			continue;
		}
		if ((groups & SIEVE_G_COMP) && !strcasecmp(t, "comparator")) {
			if (i + 1 >= n->nargs || n->args[i + 1].type != ARG_STR) {
				cerr(c, a->line, a->col, "the :comparator tag for the %s %s requires one "
				    "string argument, but %s was found", n->name, kind(n),
				    i + 1 < n->nargs ? argtype_name(&n->args[i + 1]) : "none");
				goto args_failed;
			}
			struct sv_arg *r = &n->args[++i];
			if (have_cmp) {
				cerr(c, a->line, a->col, "unexpected tagged argument ':comparator' for the "
				    "%s %s (comparator already specified)", n->name, kind(n));
				goto args_failed;
			}
			have_cmp = 1;
			const char *cn = r->v[0].s;
			char capname[80];
			snprintf(capname, sizeof(capname), "comparator-%s", cn);
			if (!strcasecmp(cn, "i;octet")) n->comp = CMP_OCTET;
			else if (!strcasecmp(cn, "i;ascii-casemap")) n->comp = CMP_CASEMAP;
			else if (!strcasecmp(cn, "i;ascii-numeric") && sv_script_has_cap(s, capname))
				n->comp = CMP_NUMERIC;
			else {
				cerr(c, r->line, r->col, "unknown comparator '%s'", cn);
				goto args_failed;
			}
			continue;
		}
		char ty;
		const char *ext;
		int ti = def_tag(tags, t, &ty, &ext);
		if (ti < 0 || (ext && !sv_script_has_cap(s, ext))) {
			cerr(c, a->line, a->col, "unknown tagged argument ':%s' for the %s %s "
			    "(reported only once at first occurrence)", t, n->name, kind(n));
			goto args_failed;
		}
		if (ti >= 12)
			continue;
		if (n->tagset[ti]) {
			cerr(c, a->line, a->col, "encountered duplicate tagged argument ':%s' for the "
			    "%s %s", t, n->name, kind(n));
			goto args_failed;
		}
		n->tagset[ti] = 1;
		n->tagv[ti] = a;
		if (ty) {
			struct sv_arg *r = i + 1 < n->nargs ? &n->args[i + 1] : NULL;
			int okt = r && ((ty == 'n' && r->type == ARG_NUM) ||
			    (ty == 's' && r->type == ARG_STR) ||
			    (ty == 'l' && (r->type == ARG_STR || r->type == ARG_LIST)));
			if (!okt) {
				cerr(c, a->line, a->col, "the :%s tag for the %s %s requires %s argument, "
				    "but %s was found", t, n->name, kind(n),
				    ty == 'n' ? "a number" : ty == 's' ? "a string" : "a string list",
				    r ? argtype_name(r) : "none");
				goto args_failed;
			}
			n->tagv[ti] = r;
			i++;
		}
	}
	/* positional arguments */
	size_t need = strcspn(pos, "?"), max = strlen(pos) - (pos[need] == '?');
	if (n->npos < need || n->npos > max) {
		if (n->npos < need)
			cerr(c, n->line, n->col, "the %s %s requires %zu positional argument(s), "
			    "but %u %s specified", n->name, kind(n), need, n->npos,
			    n->npos == 1 ? "was" : "were");
		else
			cerr(c, n->pos[max]->line, n->pos[max]->col, "the %s %s requires %zu "
			    "positional argument(s), but %u were specified", n->name, kind(n),
			    max, n->npos);
		goto args_failed;
	} else {
		static const char *const hnames[] = { "header names", "key list" };
		static const char *const anames[] = { "header list", "key list" };
		for (unsigned i = 0, k = 0; i < n->npos; i++, k++) {
			if (pos[k] == '?')
				k++;
			char want = pos[k];
			struct sv_arg *a = n->pos[i];
			int okt = (want == 'n' && a->type == ARG_NUM) ||
			    (want == 's' && a->type == ARG_STR) ||
			    (want == 'l' && (a->type == ARG_STR || a->type == ARG_LIST));
			if (!okt) {
				char what[40] = "";
				if (d && d->id == T_HEADER && i < 2)
					snprintf(what, sizeof(what), " (%s)", hnames[i]);
				else if (d && (d->id == T_ADDRESS || d->id == T_ENVELOPE) && i < 2)
					snprintf(what, sizeof(what), " (%s)", anames[i]);
				cerr(c, a->line, a->col, "the %s %s expects %s as argument %u%s, but %s %s "
				    "was found", n->name, kind(n),
				    want == 'n' ? "a number" : want == 's' ? "a string" : "a string list",
				    i + 1, what, a->type == ARG_NUM ? "a" : "a", argtype_name(a));
				goto args_failed;
			}
		}
	}
	if (d && (d->id == T_HEADER || d->id == T_ADDRESS || d->id == T_DATE)) {
		int ii = -1, li = -1;
		char ty;
		const char *ex;
		ii = def_tag(tags, "index", &ty, &ex);
		li = def_tag(tags, "last", &ty, &ex);
		if (li >= 0 && n->tagset[li] && !(ii >= 0 && n->tagset[ii])) {
			cerr(c, n->line, n->col, "the :last tag for the %s test requires the :index tag "
			    "to be specified as well", n->name);
			goto args_failed;
		}
		if (ii >= 0 && n->tagset[ii] && n->tagv[ii]->num == 0) {
			cerr(c, n->tagv[ii]->line, n->tagv[ii]->col, "the :index tag for the %s test "
			    "requires a non-zero argument", n->name);
			goto args_failed;
		}
	}
	if (check_structure(c, n, subtests, block, tags, groups, 1) < 0)
		return -1;
	/* comparator vs match type */
	if (n->comp == CMP_NUMERIC && (n->mtype == MT_CONTAINS || n->mtype == MT_MATCHES ||
	    n->mtype == MT_REGEX)) {
		cerr(c, n->line, n->col, "the specified :%s match type cannot be used with the "
		    "i;ascii-numeric comparator", n->mtype == MT_CONTAINS ? "contains" :
		    n->mtype == MT_MATCHES ? "matches" : "regex");
		ret = -1;
	}
	if (ret < 0 || !d)
		return ret;

	switch (d->id) {
	case T_ADDRESS:
		if (n->pos[0]->n > 0)
			for (size_t j = 0; j < n->pos[0]->n; j++)
				if (!strstr(n->pos[0]->v[j].s, "${") && !is_addr_header(n->pos[0]->v[j].s)) {
					cerr(c, n->pos[0]->line, n->pos[0]->col, "specified header '%s' "
					    "is not allowed for the address test", n->pos[0]->v[j].s);
					ret = -1;
				}
		break;
	case T_ENVELOPE:
		for (size_t j = 0; j < n->pos[0]->n; j++) {
			const char *p = n->pos[0]->v[j].s;
			if (strcasecmp(p, "from") && strcasecmp(p, "to") && strcasecmp(p, "auth") &&
			    !strstr(p, "${")) {
				cerr(c, n->pos[0]->line, n->pos[0]->col, "specified envelope part '%s' "
				    "is not supported by the envelope test", p);
				ret = -1;
			}
		}
		break;
	case T_DUPLICATE:
		if (n->tagset[1] && n->tagset[2]) {
			cerr(c, n->line, n->col, "the duplicate test cannot have both :header and "
			    ":uniqueid");
			ret = -1;
		}
		break;
	case T_BODY:
		if (n->tagset[0] + n->tagset[1] + n->tagset[2] > 1) {
			cerr(c, n->line, n->col, "the body test accepts only one body transform "
			    "(:raw, :content or :text)");
			ret = -1;
		}
		break;
	case T_SIZE:
		if (n->tagset[0] == n->tagset[1]) {
			cerr(c, n->line, n->col, "the size test requires either the :under or the "
			    ":over tag to be specified");
			ret = -1;
		}
		break;
	case C_FILEINTO:
		/* as Pigeonhole 0.5.19: the name is checked when :create is given */
		if (n->tagset[2] && (!strstr(n->pos[0]->v[0].s, "${") ||
		    !sv_script_has_cap(s, "variables")) && !sv_utf8_valid(n->pos[0]->v[0].s)) {
			cerr(c, n->pos[0]->line, n->pos[0]->col, "fileinto command: invalid folder "
			    "name specified: not in UTF-8");
			ret = -1;
		}
		break;
	case C_REDIRECT:
		if (!strstr(n->pos[0]->v[0].s, "${") || !sv_script_has_cap(s, "variables")) {
			char *norm;
			if (sv_addr_parse(n->pos[0]->v[0].s, &norm) < 0) {
				cerr(c, n->pos[0]->line, n->pos[0]->col, "specified redirect address '%s' "
				    "is invalid", n->pos[0]->v[0].s);
				ret = -1;
			} else {
				free(norm);
			}
		}
		break;
	case C_SET: {
		const char *vn = n->pos[0]->v[0].s;
		const char *dot = strchr(vn, '.');
		if (!valid_var_name(vn, 0)) {
			cerr(c, n->pos[0]->line, n->pos[0]->col, "invalid variable name '%s'", vn);
			ret = -1;
		} else if (strlen(vn) > SIEVE_MAX_VAR_NAME) {
			cerr(c, n->pos[0]->line, n->pos[0]->col, "variable name '%.32s...' is too long "
			    "(max %d characters)", vn, SIEVE_MAX_VAR_NAME);
			ret = -1;
		} else if (dot && !known_namespace(s, vn, (size_t)(dot - vn))) {
			cerr(c, n->pos[0]->line, n->pos[0]->col, "variable name '%s' refers to unknown "
			    "namespace '%.*s'", vn, (int)(dot - vn), vn);
			ret = -1;
		} else if (!dot) {
			int known = 0;
			for (size_t i = 0; i < c->nvars; i++)
				if (!strcasecmp(c->vars[i], vn))
					known = 1;
			if (!known) {
				if (c->nvars >= SIEVE_MAX_VARIABLES) {
					if (!c->vars_over)
						cerr(c, n->pos[0]->line, n->pos[0]->col, "too many variables "
						    "declared (max %d)", SIEVE_MAX_VARIABLES);
					c->vars_over = 1;
					ret = -1;
				} else {
					c->vars = xreallocarray(c->vars, c->nvars + 1, sizeof(char *));
					c->vars[c->nvars++] = vn;
				}
			}
		}
		break;
	}
	case C_ADDHEADER:
	case C_DELETEHEADER: {
		const char *fn = n->pos[0]->v[0].s;
		int bad = fn[0] == '\0';
		for (const unsigned char *q = (const unsigned char *)fn; *q; q++)
			if (*q <= 32 || *q >= 127 || *q == ':')
				bad = 1;
		if (bad && (!strstr(fn, "${") || !sv_script_has_cap(s, "variables"))) {
			cerr(c, n->pos[0]->line, n->pos[0]->col, "%s command: specified field name "
			    "'%s' is invalid", n->name, fn);
			ret = -1;
			break;
		}
		if (d->id == C_ADDHEADER) {
			const struct sv_str *v = &n->pos[1]->v[0];
			const struct sieve_limits *lim = c->s->opts.limits;
			size_t maxh = lim ? lim->editheader_max_header_size : 0;
			if (strlen(v->s) != v->len) {
				cerr(c, n->pos[1]->line, n->pos[1]->col, "addheader command: specified "
				    "value '%s' is invalid", v->s);
				ret = -1;
				break;
			}
			if (maxh && (!strstr(v->s, "${") || !sv_script_has_cap(s, "variables")) &&
			    strlen(fn) + v->len + 2 > maxh) {
				cerr(c, n->pos[1]->line, n->pos[1]->col, "addheader command: specified "
				    "header field is too large (max %zu bytes)", maxh);
				ret = -1;
				break;
			}
		}
	}
		if (d->id == C_DELETEHEADER && n->tagset[1] && !n->tagset[0]) {
			cerr(c, n->line, n->col, "the :last tag for the deleteheader command requires "
			    "the :index tag to be specified as well");
			ret = -1;
		}
		break;
	case C_VACATION:
		if (n->tagset[3] && (!strstr(n->tagv[3]->v[0].s, "${") ||
		    !sv_script_has_cap(s, "variables"))) {
			char *norm;
			if (sv_addr_parse(n->tagv[3]->v[0].s, &norm) < 0) {
				cerr(c, n->tagv[3]->line, n->tagv[3]->col, "specified :from address '%s' "
				    "is invalid for vacation action", n->tagv[3]->v[0].s);
				ret = -1;
			} else {
				free(norm);
			}
		}
		if (n->tagset[0] && n->tagset[1]) {
			cerr(c, n->line, n->col, "the vacation command cannot have both :days and "
			    ":seconds");
			ret = -1;
		}
		break;
	case C_INCLUDE: {
		struct cctx *root = c;
		while (root->parent)
			root = root->parent;
		const struct sieve_limits *lim = c->s->opts.limits;
		unsigned maxi = lim ? lim->max_includes : SIEVE_MAX_INCLUDES;
		if (++root->nincludes > maxi) {
			cerr(c, n->line, n->col, "failed to include script '%s': no more than %u "
			    "includes allowed", n->pos[0]->v[0].s, maxi);
			ret = -1;
		} else if (load_include(c, n) < 0) {
			ret = -1;
		}
		break;
	}
	case C_GLOBAL:
		if (!sv_script_has_cap(s, "variables")) {
			cerr(c, n->line, n->col, "the global command requires the variables "
			    "extension to be active");
			ret = -1;
		}
		break;
	case C_RETURN:
		break;
	default:
		break;
	}
	if (n->mtype == MT_REGEX) {
		struct sv_arg *k = n->pos[n->npos - 1];
		if (k->n == 1 && !strstr(k->v[0].s, "${")) {
			const char *e = NULL;
			void *re = sv_regex_compile(k->v[0].s, n->comp == CMP_CASEMAP, &e);
			if (re == NULL) {
				cerr(c, k->line, k->col, "invalid regular expression '%s' for regex match: %s",
				    k->v[0].s, e ? e : "error");
				ret = -1;
			} else if (n->regex == NULL) {
				n->regex = re;	/* kept: matched without compiling again */
			} else {
				sv_regex_free(re);
			}
		}
	}
	if (sv_script_has_cap(s, "variables"))
		s->uses_vars = 1;
	return ret;
args_failed:
	/* a forgotten ':' turns a tag into a test: say so too */
	(void)check_structure(c, n, subtests, block, tags, groups, 0);
	return -1;
}

static int check_require(struct cctx *c, struct sieve_node *n, int top)
{
	if (!top || c->seen_other) {
		cerr(c, n->line, n->col, "the require command can only be placed at top level at the "
		    "beginning of the file");
		return -1;
	}
	if (n->nargs != 1 || n->has_tests || n->has_block ||
	    n->args[0].type == ARG_NUM || n->args[0].type == ARG_TAG) {
		if (n->nargs == 0 || n->args[0].type == ARG_NUM || n->args[0].type == ARG_TAG)
			cerr(c, n->line, n->col, "the require command expects a string list as "
			    "argument 1 (capabilities)");
		else if (n->nargs > 1)
			cerr(c, n->line, n->col, "the require command requires 1 positional "
			    "argument(s), but %zu were specified", n->nargs);
		else if (n->has_tests)
			cerr(c, n->line, n->col, "the require command accepts no sub-tests, but "
			    "tests are specified");
		else
			cerr(c, n->line, n->col, "the require command does not accept a command "
			    "block, but one is specified");
		return -1;
	}
	int ret = 0;
	struct sv_arg *a = &n->args[0];
	for (size_t j = 0; j < a->n; j++) {
		const char *cap = a->v[j].s;
		if (!cap_known(&c->s->opts, cap)) {
			cerr(c, a->line, a->col, "require command: unknown Sieve capability '%s'", cap);
			ret = -1;
			continue;
		}
		if (sv_script_has_cap(c->s, cap))
			continue;
		c->s->caps = xreallocarray(c->s->caps, c->s->ncaps + 1, sizeof(char *));
		c->s->caps[c->s->ncaps++] = xstrdup(cap);
		/* implied capabilities */
		if (!strcasecmp(cap, "imap4flags") || !strcasecmp(cap, "ereject") ||
		    !strcasecmp(cap, "vacation-seconds")) {
			const char *imp = !strcasecmp(cap, "vacation-seconds") ? "vacation" : NULL;
			if (imp && !sv_script_has_cap(c->s, imp)) {
				c->s->caps = xreallocarray(c->s->caps, c->s->ncaps + 1, sizeof(char *));
				c->s->caps[c->s->ncaps++] = xstrdup(imp);
			}
		}
	}
	n->def = sv_def_find("require", 0);
	return ret;
}

static int compile_nodes(struct cctx *c, struct sieve_node **v, size_t n, int top)
{
	int ret = 0, prev_if = 0;
	for (size_t i = 0; i < n; i++) {
		struct sieve_node *x = v[i];
		if (!strcasecmp(x->name, "require")) {
			if (check_require(c, x, top) < 0)
				ret = -1;
			prev_if = 0;
			continue;
		}
		c->seen_other = 1;
		int bad = check_node(c, x) < 0;
		if (bad)
			ret = -1;
		int id = x->def ? x->def->id : 0;
		if ((id == C_ELSIF || id == C_ELSE) && !prev_if) {
			cerr(c, x->line, x->col, "the %s command must follow an if or elseif command",
			    x->name);
			ret = -1;
		}
		prev_if = (id == C_IF || id == C_ELSIF);
		(void)bad;
		/* descend as Pigeonhole does: into tests when the command takes
		 * tests, into the block when it takes one, whatever the result */
		if (x->def && x->def->subtests > 0)
			for (size_t t = 0; t < x->ntests; t++)
				if (compile_nodes_test(c, x->tests[t]) < 0)
					ret = -1;
		/* RFC 5463: the block of `if ihave "x"` is compiled only when x can be
		 * had, and then x is in force inside it */
		if ((id == C_IF || id == C_ELSIF) && x->ntests == 1 && x->tests[0]->def &&
		    x->tests[0]->def->id == T_IHAVE && !bad) {
			struct sv_arg *a = x->tests[0]->pos[0];
			int all = 1;
			for (size_t j = 0; j < a->n; j++)
				if (!sv_ihave_known(&c->s->opts, a->v[j].s))
					all = 0;
			if (!all) {
				x->ihave_dead = 1;
				continue;
			}
			for (size_t j = 0; j < a->n; j++)
				if (!sv_script_has_cap(c->s, a->v[j].s)) {
					c->s->caps = xreallocarray(c->s->caps, c->s->ncaps + 1, sizeof(char *));
					c->s->caps[c->s->ncaps++] = xstrdup(a->v[j].s);
				}
		}
		if ((x->def && x->def->block) || (x->ext && x->ext->block))
			if (compile_nodes(c, x->cmds, x->ncmds, 0) < 0)
				ret = -1;
	}
	return ret;
}

static int compile_nodes_test(struct cctx *c, struct sieve_node *t)
{
	int ret = check_node(c, t);
	for (size_t i = 0; t->def && t->def->subtests > 0 && i < t->ntests; i++)
		if (compile_nodes_test(c, t->tests[i]) < 0)
			ret = -1;
	return ret;
}

static int compile_text(const char *name, const char *path, const char *text, size_t len,
    const struct sieve_compile_opts *o, struct cctx *parent, struct sieve_script **s_r,
    struct sieve_errors *err);

static int load_include(struct cctx *c, struct sieve_node *n)
{
	const char *name = n->pos[0]->v[0].s;
	n->global = n->tagset[1];
	n->once = n->tagset[2];
	n->optional = n->tagset[3];
	if (n->tagset[0] && n->tagset[1]) {
		cerr(c, n->line, n->col, "the include command cannot have both :personal and :global");
		return -1;
	}
	if (strstr(name, "${") || strchr(name, '/') || name[0] == '\0' || name[0] == '.') {
		cerr(c, n->pos[0]->line, n->pos[0]->col, "include: invalid script name '%s'", name);
		return -1;
	}
	unsigned depth = 0;
	for (struct cctx *p = c; p; p = p->parent)
		depth++;
	const struct sieve_limits *l = c->s->opts.limits;
	if (depth > (l ? l->max_include_depth : SIEVE_MAX_INCLUDE_DEPTH)) {
		cerr(c, n->line, n->col, "cannot nest includes deeper than %u levels",
		    l ? l->max_include_depth : SIEVE_MAX_INCLUDE_DEPTH);
		return -1;
	}
	char dir[4096];
	if (n->global) {
		if (!c->s->opts.global_dir) {
			cerr(c, n->line, n->col, "include: sieve_global is not set; cannot include "
			    "global script '%s'", name);
			return -1;
		}
		snprintf(dir, sizeof(dir), "%s", c->s->opts.global_dir);
	} else if (c->s->opts.dir) {
		snprintf(dir, sizeof(dir), "%s", c->s->opts.dir);
	} else {
		snprintf(dir, sizeof(dir), "%s", c->s->path ? c->s->path : ".");
		char *sl = strrchr(dir, '/');
		if (sl) *sl = '\0'; else snprintf(dir, sizeof(dir), ".");
	}
	char *path = xasprintf("%s/%s%s", dir, name,
	    strlen(name) > 6 && !strcmp(name + strlen(name) - 6, ".sieve") ? "" : ".sieve");
	/* a script that includes itself (or an ancestor) is recursion */
	for (struct cctx *p = c; p; p = p->parent)
		if (p->s->path && !strcmp(p->s->path, path)) {
			if (n->once) {
				/* include :once of an ancestor: runs at most once anyway */
				n->incl = p->s;
				n->incl_borrowed = 1;
				free(path);
				return 0;
			}
			cerr(c, n->line, n->col, "circular include of script '%s'", name);
			free(path);
			return -1;
		}
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		free(path);
		if (n->optional)
			return 0;
		cerr(c, n->pos[0]->line, n->pos[0]->col, "included %s script '%s' does not exist",
		    n->global ? "global" : "personal", name);
		return -1;
	}
	char *buf = xmalloc(SIEVE_MAX_SCRIPT_SIZE + 1);
	size_t len = fread(buf, 1, SIEVE_MAX_SCRIPT_SIZE + 1, f);
	fclose(f);
	int r = -1;
	if (len > SIEVE_MAX_SCRIPT_SIZE) {
		cerr(c, n->line, n->col, "included script '%s' is too large", name);
	} else {
		struct sieve_compile_opts o = c->s->opts;
		r = compile_text(name, path, buf, len, &o, c, &n->incl, c->err);
		if (r < 0)
			c->errors++;	/* the included script's errors say it all */
	}
	free(buf);
	free(path);
	return r;
}

/* every argument's strings as a list (sv), for the tests that read their
 * constant arguments without copying them (sieve_arg_list_ro) */
static void strv_nodes(struct sieve_node **ns, size_t nn)
{
	for (size_t i = 0; i < nn; i++) {
		struct sieve_node *n = ns[i];
		for (size_t k = 0; k < n->nargs; k++) {
			struct sv_arg *a = &n->args[k];
			free(a->sv);
			a->sv = xcalloc(a->n + 1, sizeof(char *));
			for (size_t j = 0; j < a->n; j++)
				a->sv[j] = a->v[j].s;
		}
		n->indexed = (n->def != NULL || n->ext != NULL) && sieve_node_has_tag(n, "index");
		n->nomatch_empty = n->mtype != MT_COUNT && (n->mtype != MT_REGEX ||
		    (n->regex != NULL && n->npos > 0 && n->pos[n->npos - 1]->n == 1));
		n->hmask = 0;
		if (n->def != NULL && (n->def->id == T_HEADER || n->def->id == T_ADDRESS ||
		    n->def->id == T_EXISTS) && n->npos > 0 && n->pos[0]->type != ARG_NUM)
			for (size_t j = 0; j < n->pos[0]->n; j++)
				n->hmask |= sv_hname_bit(n->pos[0]->v[j].s, strlen(n->pos[0]->v[j].s));
		strv_nodes(n->tests, n->ntests);
		strv_nodes(n->cmds, n->ncmds);
	}
}

static int compile_text(const char *name, const char *path, const char *text, size_t len,
    const struct sieve_compile_opts *o, struct cctx *parent, struct sieve_script **s_r,
    struct sieve_errors *err)
{
	struct sieve_limits dl;
	sieve_limits_default(&dl);
	const struct sieve_limits *l = o && o->limits ? o->limits : &dl;
	struct sieve_script *s = xcalloc(1, sizeof(*s));
	s->name = xstrdup(name);
	s->path = path ? xstrdup(path) : NULL;
	if (o)
		s->opts = *o;
	s->opts.limits = NULL;	/* not kept: the caller's */
	if (len > l->max_script_size) {
		sieve_error_add(err, name, 0, 0, "script is too large (max %zu bytes)",
		    l->max_script_size);
		sieve_script_free(&s);
		return -1;
	}
	struct sv_lexer lx;
	size_t before = err ? err->n : 0;
	sv_lex_init(&lx, s->name, text, len, err);
	int pr = sv_parse(&lx, l->max_nesting, &s->cmds, &s->ncmds);
	sv_lex_deinit(&lx);
	struct cctx c = { .s = s, .err = err, .parent = parent };
	if (pr < 0) {
		sieve_error_add(err, name, 0, 0, "parse failed");
		sieve_script_free(&s);
		return -1;
	}
	(void)before;
	s->opts.limits = l;
	int r = compile_nodes(&c, s->cmds, s->ncmds, 1);
	s->opts.limits = NULL;
	free(c.unknown);
	free(c.vars);
	if (r < 0 || c.errors > 0) {
		sieve_error_add(err, name, 0, 0, "validation failed");
		sieve_script_free(&s);
		return -1;
	}
	strv_nodes(s->cmds, s->ncmds);
	*s_r = s;
	return 0;
}

int sieve_compile(const char *name, const char *text, size_t len,
    const struct sieve_compile_opts *o, struct sieve_script **s_r, struct sieve_errors *err)
{
	return compile_text(name, NULL, text, len, o, NULL, s_r, err);
}

int sieve_compile_file(const char *path, const struct sieve_compile_opts *o,
    struct sieve_script **s_r, struct sieve_errors *err)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		sieve_error_add(err, path, 0, 0, "cannot open script: %s", strerror(errno));
		return -1;
	}
	char *buf = xmalloc(SIEVE_MAX_SCRIPT_SIZE + 2);
	size_t len = fread(buf, 1, SIEVE_MAX_SCRIPT_SIZE + 1, f);
	fclose(f);
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	char *name = xstrdup(base);
	char *dot = strrchr(name, '.');
	if (dot && !strcmp(dot, ".sieve"))
		*dot = '\0';
	int r = compile_text(name, path, buf, len, o, NULL, s_r, err);
	free(name);
	free(buf);
	return r;
}

void sieve_script_free(struct sieve_script **sp)
{
	struct sieve_script *s = *sp;
	if (s == NULL)
		return;
	for (size_t i = 0; i < s->ncmds; i++)
		sv_node_free(s->cmds[i]);
	free(s->cmds);
	for (size_t i = 0; i < s->ncaps; i++)
		free(s->caps[i]);
	free(s->caps);
	free(s->name);
	free(s->path);
	free(s);
	*sp = NULL;
}
