/*
 * conformance.c - test-only runner for Pigeonhole's own test suite
 * (../shared/sieve-conformance/tests, *.svtest): implements the
 * vnd.dovecot.testsuite vocabulary on top of rules/sieve*, runs every file
 * and prints, per file, PASS / FAIL (the test and why) / SKIP (why), then
 * "sieve conformance: N passed, N failed, N skipped".
 *
 *   sieve-conformance [-e EXPECTED] [-C CORPUS] [FILE.svtest ...]
 *   sieve-conformance --run SCRIPT MESSAGE FROM TO   (differential test)
 *
 * With -e, the exit status is 1 only when a file the expected list marks
 * "pass" does not pass now (a regression); otherwise 0.
 * Executing a result here is simulated: stores go to in-memory folders,
 * redirects and vacation replies to an in-memory SMTP outbox.
 */
#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include "rules/sieve_eval.h"
#include "common/xmalloc.h"

struct stored { char *box; char *text; char *flags; };
struct sent { char *from; char *to; char *text; };

struct ctx {
	const char *dir;		/* the .svtest's directory */
	struct sieve_run *run;		/* the testsuite's own run */
	struct sieve_msg *msg;		/* current message */
	struct sieve_msg **old; size_t nold;
	char *env_from, *env_to, *env_orig_to, *env_auth;
	char *msg_text;
	struct sieve_script *script;	/* last compiled (owned by all_scripts) */
	struct sieve_script **all; size_t nall;
	char **saved_names; struct sieve_script **saved; size_t nsaved;
	struct sieve_errors errs;	/* of the last compile / run / execute */
	int res_from_script;
	struct stored *st; size_t nst;
	struct sent *sm; size_t nsm;
	char **boxes; size_t nboxes;
	struct sieve_limits limits;
	struct sieve_limits pending;
	char **cfg; size_t ncfg;	/* key, value pairs */
	/* per file */
	int ntests, nfailed;
	char *first_fail;
	int in_test, failed;
	char *test_name;
	char *skip_reason;
	struct sv_vars dupes;
	const char *rel;		/* the file, relative to the corpus */
	int tst_set;
	int nskipped;
	const char *skipped_why;
};

static struct ctx *C(struct sieve_run *run) { return sieve_run_ctx(run); }

static const char *cfg_get(struct ctx *c, const char *k)
{
	for (size_t i = 0; i < c->ncfg; i++)
		if (!strcmp(c->cfg[2 * i], k))
			return c->cfg[2 * i + 1];
	return NULL;
}

static void apply_env(struct ctx *c, struct sieve_msg *m)
{
	sieve_msg_set_env(m, "from", c->env_from);
	sieve_msg_set_env(m, "to", c->env_to);
	sieve_msg_set_env(m, "orig_to", c->env_orig_to);
	sieve_msg_set_env(m, "auth", c->env_auth);
}

static void set_message(struct ctx *c, const char *text, const char *from, const char *to)
{
	struct sieve_msg *m = sieve_msg_parse(text, strlen(text));
	/* the testsuite's environment (RFC 5183 items) */
	sieve_msg_set_item(m, "name", "Pigeonhole Sieve");
	sieve_msg_set_item(m, "version", "0.5.19");
	sieve_msg_set_item(m, "location", "MS");
	sieve_msg_set_item(m, "phase", "during");
	sieve_msg_set_item(m, "domain", "example.com");
	sieve_msg_set_item(m, "host", "testsuite.example.com");
	if (from || to) {
		sieve_msg_set_env(m, "from", from);
		sieve_msg_set_env(m, "to", to);
		sieve_msg_set_env(m, "orig_to", to);
	} else {
		apply_env(c, m);
	}
	if (c->msg) {
		c->old = xreallocarray(c->old, c->nold + 1, sizeof(*c->old));
		c->old[c->nold++] = c->msg;
	}
	c->msg = m;
	free(c->msg_text);
	c->msg_text = xstrdup(text);
	if (c->run)
		sieve_run_set_msg(c->run, m);
}

/* as Pigeonhole's testsuite: a new message brings its own envelope, taken
 * from Envelope-To/To and Return-Path/Sender/From */
static void envelope_from_headers(struct ctx *c)
{
	static const char *const rh[] = { "envelope-to", "to", NULL };
	static const char *const sh[] = { "return-path", "sender", "from", NULL };
	const char *const *lists[2] = { rh, sh };
	char *found[2] = { NULL, NULL };
	for (int k = 0; k < 2; k++)
		for (const char *const *h = lists[k]; *h && !found[k]; h++)
			for (size_t i = 0; i < c->msg->nhdr && !found[k]; i++)
				if (!strcasecmp(c->msg->hdr[i].name, *h)) {
					size_t n;
					char **as = sv_addr_list(c->msg->hdr[i].value, &n);
					found[k] = n ? xstrdup(as[0]) : xstrdup(c->msg->hdr[i].value);
					sieve_strv_free(as, n);
				}
	free(c->env_to);
	free(c->env_orig_to);
	free(c->env_from);
	c->env_to = found[0] ? found[0] : xstrdup("recipient@example.com");
	c->env_orig_to = xstrdup(c->env_to);
	c->env_from = found[1] ? found[1] : xstrdup("sender@example.com");
	apply_env(c, c->msg);
}

static char *strip_null(const char *v)
{
	if (!strcmp(v, "<>"))
		return xstrdup("");
	return xstrdup(v);
}

/* ---- commands and tests ---- */

/* single tests that exercise Pigeonhole-only features, skipped by name */
static const struct { const char *file, *test, *why; } skip_tests[] = {
	{ "extensions/include/execute.svtest", "Namespace - dict", "dict: script storage" },
	{ "extensions/include/execute.svtest", "Namespace - file", "sieve/sieve_global settings" },
	{ "extensions/duplicate/errors.svtest", "Invalid Syntax (vnd)", "vnd.dovecot.duplicate" },
	{ "extensions/duplicate/errors.svtest", "Extension conflict", "vnd.dovecot.duplicate" },
	{ "extensions/duplicate/errors.svtest", "Extension conflict (vnd first)", "vnd.dovecot.duplicate" },
	{ NULL, NULL, NULL },
};

static void tst_vars(struct ctx *c, struct sieve_run *run)
{
	if (c->tst_set)
		return;
	c->tst_set = 1;
	const char *n = "tst.path";
	run->globals.v = xreallocarray(run->globals.v, run->globals.n + 1, sizeof(struct sv_var));
	run->globals.v[run->globals.n].name = xstrdup(n);
	run->globals.v[run->globals.n++].value = xstrdup(c->dir);
}

static int x_test(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	(void)res;
	struct ctx *c = C(run);
	char *name = sieve_arg_str(run, n, 0);
	tst_vars(c, run);
	for (int k = 0; skip_tests[k].file; k++)
		if (!strcmp(skip_tests[k].file, c->rel) && !strcmp(skip_tests[k].test, name)) {
			c->nskipped++;
			if (!c->skipped_why)
				c->skipped_why = skip_tests[k].why;
			free(name);
			return 0;
		}
	c->ntests++;
	c->in_test = 1;
	c->failed = 0;
	free(c->test_name);
	c->test_name = name;
	size_t before = run->err ? run->err->n : 0;
	int r = sieve_run_block(run, n);
	if (r < 0 && !c->failed) {
		c->failed = 1;
		if (!c->first_fail) {
			const char *why = run->err && run->err->n > before ? run->err->msg[run->err->n - 1] :
			    "runtime error";
			c->first_fail = xasprintf("test \"%s\": %s", name, why);
		}
	}
	if (c->failed)
		c->nfailed++;
	run->errored = 0;
	run->steps = 0;
	c->in_test = 0;
	return 0;
}

static int x_test_fail(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	(void)res;
	struct ctx *c = C(run);
	char *why = sieve_arg_str(run, n, 0);
	if (!c->failed && !c->first_fail)
		c->first_fail = xasprintf("test \"%s\": %s (line %u)",
		    c->test_name ? c->test_name : "(top level)", why, n->line);
	c->failed = 1;
	if (!c->in_test)
		c->nfailed++;
	free(why);
	return 1;
}

static int x_test_set(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	(void)res;
	struct ctx *c = C(run);
	char *k = sieve_arg_str(run, n, 0), *v = sieve_arg_str(run, n, 1);
	if (!strcmp(k, "message")) {
		set_message(c, v, NULL, NULL);
		envelope_from_headers(c);
	} else if (!strncmp(k, "envelope.", 9)) {
		char **p = !strcmp(k + 9, "from") ? &c->env_from : !strcmp(k + 9, "to") ? &c->env_to :
		    !strcmp(k + 9, "orig_to") ? &c->env_orig_to : !strcmp(k + 9, "auth") ? &c->env_auth : NULL;
		if (p) {
			free(*p);
			*p = !strcmp(k + 9, "from") ? strip_null(v) : xstrdup(v);
			apply_env(c, c->msg);
		}
	}
	free(k);
	free(v);
	return 0;
}

static int x_mailbox_create(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	(void)res;
	struct ctx *c = C(run);
	c->boxes = xreallocarray(c->boxes, c->nboxes + 2, sizeof(char *));
	c->boxes[c->nboxes++] = sieve_arg_str(run, n, 0);
	c->boxes[c->nboxes] = NULL;
	return 0;
}

static int x_config_set(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	(void)res;
	struct ctx *c = C(run);
	char *k = sieve_arg_str(run, n, 0), *v = n->npos > 1 ? sieve_arg_str(run, n, 1) : NULL;
	for (size_t i = 0; i < c->ncfg; i++)
		if (!strcmp(c->cfg[2 * i], k)) {
			free(c->cfg[2 * i + 1]);
			c->cfg[2 * i + 1] = v ? v : xstrdup("");
			free(k);
			goto apply;
		}
	c->cfg = xreallocarray(c->cfg, 2 * (c->ncfg + 1), sizeof(char *));
	c->cfg[2 * c->ncfg] = k;
	c->cfg[2 * c->ncfg + 1] = v ? v : xstrdup("");
	c->ncfg++;
apply:;
	const char *x;
	sieve_limits_default(&c->pending);
	if ((x = cfg_get(c, "sieve_max_redirects")) && *x)
		c->pending.max_redirects = (unsigned)atoi(x);
	if ((x = cfg_get(c, "sieve_max_actions")) && *x)
		c->pending.max_actions = (unsigned)atoi(x);
	if ((x = cfg_get(c, "sieve_variables_max_variable_size")) && *x)
		c->pending.max_var_size = (size_t)atol(x);
	if ((x = cfg_get(c, "sieve_editheader_protected")))
		snprintf(c->pending.editheader_protected, sizeof(c->pending.editheader_protected),
		    "%s", x);
	if ((x = cfg_get(c, "sieve_editheader_forbid_add")))
		snprintf(c->pending.editheader_forbid_add, sizeof(c->pending.editheader_forbid_add),
		    "%s", x);
	if ((x = cfg_get(c, "sieve_editheader_forbid_delete")))
		snprintf(c->pending.editheader_forbid_delete,
		    sizeof(c->pending.editheader_forbid_delete), "%s", x);
	if ((x = cfg_get(c, "sieve_editheader_max_header_size")) && *x)
		c->pending.editheader_max_header_size = (size_t)atol(x);
	if ((x = cfg_get(c, "recipient_delimiter")) && *x)
		snprintf(c->pending.recipient_delimiter, sizeof(c->pending.recipient_delimiter), "%s", x);
	if ((x = cfg_get(c, "sieve_include_max_includes")) && *x)
		c->pending.max_includes = (unsigned)atoi(x);
	if ((x = cfg_get(c, "sieve_include_max_nesting_depth")) && *x)
		c->pending.max_include_depth = (unsigned)atoi(x);
	return 0;
}

static int x_config_reload(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	(void)n;
	(void)res;
	struct ctx *c = C(run);
	c->limits = c->pending;
	run->limits.max_var_size = c->limits.max_var_size;
	memcpy(run->limits.recipient_delimiter, c->limits.recipient_delimiter,
	    sizeof(run->limits.recipient_delimiter));
	memcpy(run->limits.editheader_protected, c->limits.editheader_protected,
	    sizeof(run->limits.editheader_protected));
	memcpy(run->limits.editheader_forbid_add, c->limits.editheader_forbid_add,
	    sizeof(run->limits.editheader_forbid_add));
	memcpy(run->limits.editheader_forbid_delete, c->limits.editheader_forbid_delete,
	    sizeof(run->limits.editheader_forbid_delete));
	run->limits.editheader_max_header_size = c->limits.editheader_max_header_size;
	return 0;
}

static int x_config_unset(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	(void)res;
	struct ctx *c = C(run);
	char *k = sieve_arg_str(run, n, 0);
	for (size_t i = 0; i < c->ncfg; i++)
		if (!strcmp(c->cfg[2 * i], k)) {
			free(c->cfg[2 * i + 1]);
			c->cfg[2 * i + 1] = xstrdup("");
		}
	free(k);
	sieve_limits_default(&c->pending);
	return 0;
}

static const char *const test_caps[] = { "vnd.dovecot.testsuite", "vnd.dovecot.debug", NULL };
static const struct sieve_extdef testsuite_defs[];

static void compile_opts(struct ctx *c, struct sieve_compile_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->limits = &c->limits;
	o->global_dir = NULL;
	static char gdir[4096];
	snprintf(gdir, sizeof(gdir), "%s/included-global", c->dir);
	o->global_dir = gdir;
}

static int x_script_compile(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	struct ctx *c = C(run);
	char *f = sieve_arg_str(run, n, 0);
	char *path = xasprintf("%s/%s", c->dir, f);
	c->script = NULL;
	sieve_errors_clear(&c->errs);
	struct sieve_compile_opts o;
	compile_opts(c, &o);
	/* included personal scripts live in "included" beside the test */
	char *idir = xasprintf("%s/included", c->dir);
	struct stat sb;
	if (stat(idir, &sb) == 0)
		o.dir = idir;
	*res = sieve_compile_file(path, &o, &c->script, &c->errs) == 0;
	if (c->script) {
		c->all = xreallocarray(c->all, c->nall + 1, sizeof(*c->all));
		c->all[c->nall++] = c->script;
	}
	free(idir);
	free(path);
	free(f);
	return 0;
}

static int box_exists(struct ctx *c, const char *b);
static int mbox_exists(void *ctx, const char *name)
{
	return box_exists(ctx, name);
}

static int dup_check(void *ctx, const char *key, size_t len)
{
	struct ctx *c = ctx;
	(void)len;
	for (size_t i = 0; i < c->dupes.n; i++)
		if (!strcmp(c->dupes.v[i].name, key))
			return 1;
	return 0;
}

static void dup_mark(void *ctx, const char *key, size_t len, unsigned long secs)
{
	struct ctx *c = ctx;
	(void)len;
	(void)secs;
	if (dup_check(ctx, key, len))
		return;
	c->dupes.v = xreallocarray(c->dupes.v, c->dupes.n + 1, sizeof(*c->dupes.v));
	c->dupes.v[c->dupes.n].name = xstrdup(key);
	c->dupes.v[c->dupes.n++].value = NULL;
}

static struct sieve_dupstore dupstore = { dup_check, dup_mark, NULL };

static void reset_result(struct ctx *c, struct sieve_run *run)
{
	sieve_result_free(&run->res);
	run->res = xcalloc(1, sizeof(*run->res));
	run->keep_cancelled = 0;
	c->res_from_script = 0;
}

static int x_script_run(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	struct ctx *c = C(run);
	sieve_errors_clear(&c->errs);
	if (c->script == NULL) {
		*res = 0;
		return 0;
	}
	int append = sieve_node_has_tag(n, "append_result");
	struct sieve_result *r = NULL;
	if (append) {
		r = run->res;
		run->res = xcalloc(1, sizeof(*run->res));
		r->implicit_keep = !run->keep_cancelled && !(c->res_from_script && !r->implicit_keep);
	}
	struct sieve_run_opts o = { .limits = &c->limits, .dup = &dupstore,
		.mailbox_exists = mbox_exists, .ctx = c };
	dupstore.ctx = c;
	*res = sieve_run(c->script, run->msg, &o, &r, &c->errs) == 0;
	sieve_result_free(&run->res);
	run->res = r;
	run->keep_cancelled = !r->implicit_keep;
	c->res_from_script = 1;
	return 0;
}

static int exec_result(struct ctx *c, struct sieve_run *run, struct sieve_result *r, int keep);

static int x_multiscript(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	struct ctx *c = C(run);
	size_t ns;
	char **names = sieve_arg_list(run, n, 0, &ns);
	struct sieve_result *r = NULL;
	*res = 1;
	sieve_errors_clear(&c->errs);
	for (size_t i = 0; i < ns && *res; i++) {
		char *path = xasprintf("%s/%s", c->dir, names[i]);
		struct sieve_script *s = NULL;
		struct sieve_compile_opts o;
		compile_opts(c, &o);
		if (sieve_compile_file(path, &o, &s, &c->errs) < 0) {
			*res = 0;
		} else {
			struct sieve_run_opts ro = { .limits = &c->limits, .dup = &dupstore,
				.mailbox_exists = mbox_exists, .ctx = c };
			if (sieve_run(s, run->msg, &ro, &r, &c->errs) < 0)
				*res = 0;
		}
		sieve_script_free(&s);
		free(path);
		/* a script that did not cancel the keep lets the next one run; a
		 * stop or cancelled keep ends the sequence, as Pigeonhole does */
		if (r && !r->implicit_keep)
			break;
	}
	sieve_strv_free(names, ns);
	if (r) {
		sieve_result_free(&run->res);
		run->res = r;
		run->keep_cancelled = !r->implicit_keep;
		c->res_from_script = 1;
		if (*res)
			*res = exec_result(c, run, r, r->implicit_keep);
	}
	return 0;
}

static char *err_text(const char *m)
{
	/* "name:line:col: text" or "name: text" */
	const char *p = strstr(m, ": ");
	return xstrdup(p ? p + 2 : m);
}

static int x_error(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	struct ctx *c = C(run);
	long long idx = sieve_tag_num(n, "index", -1);
	size_t nk;
	char **keys = sieve_arg_list(run, n, 0, &nk);
	char **vals = NULL;
	size_t nv = 0;
	for (size_t i = 0; i < c->errs.n; i++) {
		if (idx > 0 && (long long)i + 1 != idx)
			continue;
		vals = xreallocarray(vals, nv + 1, sizeof(char *));
		vals[nv++] = err_text(c->errs.msg[i]);
	}
	*res = sieve_match_values(run, n, vals, nv, keys, nk);
	sieve_strv_free(vals, nv);
	sieve_strv_free(keys, nk);
	return 0;
}

static int visible(const struct sieve_action *a)
{
	return a->type != SIEVE_A_ADDHEADER && a->type != SIEVE_A_DELETEHEADER;
}

static int x_result_action(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	long long idx = sieve_tag_num(n, "index", -1);
	size_t nk;
	char **keys = sieve_arg_list(run, n, 0, &nk);
	char **vals = NULL;
	size_t nv = 0, k = 0;
	for (size_t i = 0; i < run->res->n; i++) {
		if (!visible(&run->res->a[i]))
			continue;
		k++;
		if (idx > 0 && (long long)k != idx)
			continue;
		vals = xreallocarray(vals, nv + 1, sizeof(char *));
		vals[nv++] = xstrdup(sieve_action_name(&run->res->a[i]));
	}
	*res = sieve_match_values(run, n, vals, nv, keys, nk);
	sieve_strv_free(vals, nv);
	sieve_strv_free(keys, nk);
	return 0;
}

/* the message as an action saw it: its header snapshot + the body */
static char *action_text(struct sieve_run *run, const struct sieve_header *snap, size_t nsnap)
{
	size_t nh = snap ? nsnap : run->msg->nhdr;
	const struct sieve_header *h = snap ? snap : run->msg->hdr;
	size_t len = run->msg->body_len + 3;
	for (size_t i = 0; i < nh; i++)
		len += strlen(h[i].name) + strlen(h[i].value) + 4;
	char *o = xmalloc(len), *p = o;
	for (size_t i = 0; i < nh; i++)
		p += sprintf(p, "%s: %s\r\n", h[i].name, h[i].value);
	p += sprintf(p, "\r\n");
	if (run->msg->body)
		memcpy(p, run->msg->body, run->msg->body_len);
	p[run->msg->body_len] = '\0';
	return o;
}

static int box_eq(const char *a, const char *b)
{
	if (!strncasecmp(a, "INBOX", 5) && !strncasecmp(b, "INBOX", 5) &&
	    (a[5] == '\0' || a[5] == '.') && (b[5] == '\0' || b[5] == '.'))
		return strcmp(a + 5, b + 5) == 0;
	return strcmp(a, b) == 0;
}

static int box_exists(struct ctx *c, const char *b)
{
	if (!strcasecmp(b, "INBOX"))
		return 1;
	for (size_t i = 0; i < c->nboxes; i++)
		if (box_eq(c->boxes[i], b))
			return 1;
	return 0;
}

static int store(struct ctx *c, struct sieve_run *run, const char *box, int create,
    char **flags, size_t nflags, unsigned line, const struct sieve_header *snap, size_t nsnap)
{
	size_t bl = strlen(box);
	if (strstr(box, "//") || box[0] == '/' || box[bl - 1] == '/') {
		sieve_error_add(&c->errs, "script", line, 0, "failed to store into mailbox "
		    "'%s': Invalid mailbox name", box);
		return -1;
	}
	if (!box_exists(c, box)) {
		if (!create) {
			sieve_error_add(&c->errs, "script", line, 0, "failed to store into mailbox "
			    "'%s': Mailbox doesn't exist: %s", box, box);
			return -1;
		}
		c->boxes = xreallocarray(c->boxes, c->nboxes + 2, sizeof(char *));
		c->boxes[c->nboxes++] = xstrdup(box);
		c->boxes[c->nboxes] = NULL;
	}
	c->st = xreallocarray(c->st, c->nst + 1, sizeof(*c->st));
	c->st[c->nst].box = xstrdup(box);
	c->st[c->nst].text = action_text(run, snap, nsnap);
	size_t fl = 1;
	for (size_t i = 0; i < nflags; i++)
		fl += strlen(flags[i]) + 1;
	char *f = xmalloc(fl), *p = f;
	*p = '\0';
	for (size_t i = 0; i < nflags; i++)
		p += sprintf(p, "%s%s", i ? " " : "", flags[i]);
	c->st[c->nst].flags = f;
	c->nst++;
	return 0;
}

static void send_msg(struct ctx *c, const char *from, const char *to, char *text)
{
	c->sm = xreallocarray(c->sm, c->nsm + 1, sizeof(*c->sm));
	c->sm[c->nsm].from = xstrdup(from ? from : "");
	c->sm[c->nsm].to = xstrdup(to);
	c->sm[c->nsm].text = text;
	c->nsm++;
}


static int x_result_execute(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	(void)n;
	struct ctx *c = C(run);
	sieve_errors_clear(&c->errs);
	*res = exec_result(c, run, run->res, !run->keep_cancelled);
	return 0;
}

static int exec_result(struct ctx *c, struct sieve_run *run, struct sieve_result *r, int keep)
{
	int ok = 1;
	if (r->failed) {
		/* the script failed: the message is kept as it came, and that is a failure */
		(void)store(c, run, "INBOX", 0, NULL, 0, 0, NULL, 0);
		r->failed = 0;
		r->n = r->n;	/* its actions are not executed */
		for (size_t i = 0; i < r->n; i++)
			r->a[i].executed = 1;
		return 0;
	}
	for (size_t i = 0; i < r->n; i++) {
		struct sieve_action *a = &r->a[i];
		if (a->executed)
			continue;
		a->executed = 1;
		switch (a->type) {
		case SIEVE_A_KEEP:
			if (store(c, run, "INBOX", 0, a->flags, a->nflags, a->line, a->hdr, a->nhdr) < 0)
				ok = 0;
			break;
		case SIEVE_A_FILEINTO:
			if (store(c, run, a->target, a->create, a->flags, a->nflags, a->line, a->hdr,
			    a->nhdr) < 0)
				ok = 0;
			break;
		case SIEVE_A_REDIRECT: {
			char *body = action_text(run, a->hdr, a->nhdr);
			const char *ue = cfg_get(c, "sieve_user_email");
			char *t = xasprintf("X-Sieve-Redirected-From: %s\r\n%s", ue && *ue ? ue :
			    run->msg->env_to ? run->msg->env_to : "", body);
			free(body);
			const char *ef = cfg_get(c, "sieve_redirect_envelope_from");
			const char *from = run->msg->env_from;
			char *own = NULL;
			if (ef && from && from[0]) {
				while (*ef == ' ')
					ef++;
				if (!strncmp(ef, "recipient", 9))
					from = run->msg->env_to;
				else if (!strncmp(ef, "orig_recipient", 14))
					from = run->msg->env_orig_to ? run->msg->env_orig_to : run->msg->env_to;
				else if (!strncmp(ef, "user_email", 10)) {
					const char *ue = cfg_get(c, "sieve_user_email");
					from = ue && *ue ? ue : run->msg->env_to;
				} else if (*ef == '<') {
					own = xstrndup(ef + 1, strcspn(ef + 1, ">"));
					from = own;
				}
			}
			/* a message we redirected before comes back: a loop, not sent again */
			const char *me = ue && *ue ? ue : run->msg->env_to ? run->msg->env_to : "";
			int loop = 0;
			for (size_t k = 0; k < run->msg->nhdr; k++)
				if (!strcasecmp(run->msg->hdr[k].name, "x-sieve-redirected-from") &&
				    ((*me && strstr(run->msg->hdr[k].value, me)) || (run->msg->env_to &&
				    strstr(run->msg->hdr[k].value, run->msg->env_to))))
					loop = 1;
			if (loop)
				free(t);
			else
				send_msg(c, from, a->target, t);
			free(own);
			break;
		}
		case SIEVE_A_VACATION: {
			char *f, *t, *x;
			const char *mx = cfg_get(c, "sieve_vacation_max_subject_codepoints");
			const char *uo = cfg_get(c, "sieve_vacation_use_original_recipient");
			const char *dc = cfg_get(c, "sieve_vacation_dont_check_recipient");
			const char *ti = cfg_get(c, "sieve_vacation_to_header_ignore_envelope");
			const char *sr = cfg_get(c, "sieve_vacation_send_from_recipient");
			struct sieve_vacation_conf vc = {
				.user_email = cfg_get(c, "sieve_user_email"),
				.default_subject = cfg_get(c, "sieve_vacation_default_subject"),
				.subject_template = cfg_get(c, "sieve_vacation_default_subject_template"),
				.use_original_recipient = uo && !strcmp(uo, "yes"),
				.dont_check_recipient = dc && !strcmp(dc, "yes"),
				.max_subject_codepoints = mx ? (unsigned)atoi(mx) : 0,
				.to_header_ignore_envelope = ti && !strcmp(ti, "yes"),
				.send_from_recipient = sr && !strcmp(sr, "yes"),
			};
			if (sv_vacation_reply(run, a, &vc, &f, &t, &x) == 1) {
				send_msg(c, f, t, x);
				free(f);
				free(t);
			}
			break;
		}
		case SIEVE_A_REJECT: {
			if (run->msg->env_from && run->msg->env_from[0]) {
				char *t = xasprintf("From: Postmaster <postmaster@example.com>\r\n"
				    "To: <%s>\r\nSubject: Automatically rejected mail\r\n"
				    "Auto-Submitted: auto-replied (rejected)\r\nMIME-Version: 1.0\r\n"
				    "Content-Type: multipart/report; report-type=disposition-notification; "
				    "boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
				    "%s\r\n--b--\r\n", run->msg->env_from, a->target);
				send_msg(c, "", run->msg->env_from, t);
			}
			break;
		}
		default:
			break;
		}
	}
	if (keep && ok) {
		/* the testsuite's own result: the header as it is now */
		const struct sieve_header *kh = r->keep_hdr;
		size_t kn = r->keep_nhdr;
		if (!c->res_from_script && run->hdr_edited) {
			kh = run->hdr;
			kn = run->nhdr;
		}
		if (store(c, run, "INBOX", 0, r->keep_flags, r->nkeep_flags, 0, kh, kn) < 0)
			ok = 0;
	}
	if (!ok && !keep)	/* a failed execution still keeps the message, unedited */
		(void)store(c, run, "INBOX", 0, NULL, 0, 0, NULL, 0);
	return ok;
}

static int x_result_reset(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	(void)n;
	(void)res;
	struct ctx *c = C(run);
	reset_result(c, run);
	free(run->flags);
	run->flags = NULL;
	for (size_t i = 0; i < c->nsm; i++) {
		free(c->sm[i].from);
		free(c->sm[i].to);
		free(c->sm[i].text);
	}
	c->nsm = 0;
	return 0;
}

static int x_result_print(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	(void)run; (void)n; (void)res;
	return 0;
}

static int x_message(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	struct ctx *c = C(run);
	int present;
	const char *folder = sieve_tag_str(run, n, "folder", &present);
	long long idx = n->npos > 0 && n->pos[0]->type == ARG_NUM ? (long long)n->pos[0]->num : 0;
	*res = 0;
	if (present && folder) {
		char *box = sv_expand(run, folder);
		long long k = 0;
		for (size_t i = 0; i < c->nst; i++) {
			if (!box_eq(c->st[i].box, box))
				continue;
			if (k++ == idx) {
				char *text = xstrdup(c->st[i].text);
				char *flags = xstrdup(c->st[i].flags);
				set_message(c, text, NULL, NULL);
				envelope_from_headers(c);
				free(run->flags);
				run->flags = flags;
				free(text);
				*res = 1;
				break;
			}
		}
		free(box);
	} else {
		if (idx >= 0 && (size_t)idx < c->nsm) {
			char *text = xstrdup(c->sm[idx].text);
			char *from = xstrdup(c->sm[idx].from), *to = xstrdup(c->sm[idx].to);
			set_message(c, text, from, to);
			free(text);
			free(from);
			free(to);
			*res = 1;
		}
	}
	if (!*res && !n->is_test) {
		sv_runtime_error(run, n->line, "test_message: no message at index %lld", idx);
		return -1;
	}
	return 0;
}

/* our compiled form is the checked tree: a binary round trip is the identity */
static int x_binary_save(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	(void)res;
	struct ctx *c = C(run);
	if (!c->script)
		return 0;
	c->saved_names = xreallocarray(c->saved_names, c->nsaved + 1, sizeof(char *));
	c->saved = xreallocarray(c->saved, c->nsaved + 1, sizeof(*c->saved));
	c->saved_names[c->nsaved] = sieve_arg_str(run, n, 0);
	c->saved[c->nsaved++] = c->script;
	return 0;
}

static int x_binary_load(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	(void)res;
	struct ctx *c = C(run);
	char *name = sieve_arg_str(run, n, 0);
	c->script = NULL;
	for (size_t i = c->nsaved; i-- > 0;)
		if (!strcmp(c->saved_names[i], name)) {
			c->script = c->saved[i];
			break;
		}
	free(name);
	return 0;
}

static int x_unsupported(struct sieve_run *run, const struct sieve_node *n, int *res)
{
	struct ctx *c = C(run);
	(void)res;
	if (!c->skip_reason)
		c->skip_reason = xasprintf("uses %s (Pigeonhole-specific)", n->name);
	return 1;
}

#define T(...) (const char *const[]){ __VA_ARGS__, NULL }
#define NOTAGS (const char *const[]){ NULL }
static const struct sieve_extdef testsuite_defs[] = {
	{ "test", "vnd.dovecot.testsuite", 0, "s", NOTAGS, 0, 1, x_test },
	{ "debug_log", "vnd.dovecot.debug", 0, "s", NOTAGS, 0, 0, x_result_print },
	{ "test_fail", "vnd.dovecot.testsuite", 0, "s", NOTAGS, 0, 0, x_test_fail },
	{ "test_set", "vnd.dovecot.testsuite", 0, "ss", NOTAGS, 0, 0, x_test_set },
	{ "test_mailbox_create", "vnd.dovecot.testsuite", 0, "s", NOTAGS, 0, 0, x_mailbox_create },
	{ "test_config_set", "vnd.dovecot.testsuite", 0, "s?s", NOTAGS, 0, 0, x_config_set },
	{ "test_config_unset", "vnd.dovecot.testsuite", 0, "s", NOTAGS, 0, 0, x_config_unset },
	{ "test_config_reload", "vnd.dovecot.testsuite", 0, "", T(":extension=s"), 0, 0, x_config_reload },
	{ "test_result_reset", "vnd.dovecot.testsuite", 0, "", NOTAGS, 0, 0, x_result_reset },
	{ "test_result_print", "vnd.dovecot.testsuite", 0, "", NOTAGS, 0, 0, x_result_print },
	{ "test_message", "vnd.dovecot.testsuite", 0, "n", T(":smtp", ":folder=s"), 0, 0, x_message },
	{ "test_binary_save", "vnd.dovecot.testsuite", 0, "s", NOTAGS, 0, 0, x_binary_save },
	{ "test_binary_load", "vnd.dovecot.testsuite", 0, "s", NOTAGS, 0, 0, x_binary_load },
	{ "test_imap_metadata_set", "vnd.dovecot.testsuite", 0, "ss", T(":mailbox=s"), 0, 0, x_unsupported },
	{ "test_script_compile", "vnd.dovecot.testsuite", 1, "s", NOTAGS, 0, 0, x_script_compile },
	{ "test_script_run", "vnd.dovecot.testsuite", 1, "", T(":append_result"), 0, 0, x_script_run },
	{ "test_multiscript", "vnd.dovecot.testsuite", 1, "l", NOTAGS, 0, 0, x_multiscript },
	{ "test_error", "vnd.dovecot.testsuite", 1, "l", T(":index=n"), SIEVE_G_MATCH | SIEVE_G_COMP, 0, x_error },
	{ "test_result_action", "vnd.dovecot.testsuite", 1, "l", T(":index=n"),
	  SIEVE_G_MATCH | SIEVE_G_COMP, 0, x_result_action },
	{ "test_result_execute", "vnd.dovecot.testsuite", 1, "", NOTAGS, 0, 0, x_result_execute },
	{ "test_message", "vnd.dovecot.testsuite", 1, "n", T(":smtp", ":folder=s"), 0, 0, x_message },
	{ NULL, NULL, 0, NULL, NULL, 0, 0, NULL },
};

/* ---- files ---- */

static const char *const skip_dirs[] = {
	"plugins/", "extensions/vnd.dovecot/", "deprecated/", "extensions/spamvirustest/",
	"extensions/special-use/", "extensions/metadata/", "extensions/enotify/",
	"extensions/mime/", NULL,
};

static const char *skip_reason_for(const char *rel)
{
	if (!strcmp(rel, "extensions/duplicate/execute-vnd.svtest"))
		return "vnd.dovecot.duplicate (Pigeonhole-only)";
	if (!strcmp(rel, "execute/errors-cpu-limit.svtest"))
		return "needs mime + foreverypart and a CPU-seconds limit (the interpreter counts steps)";
	if (!strcmp(rel, "multiscript/basic.svtest"))
		return "every test runs notify.sieve (enotify is not a listed extension)";
	if (!strcmp(rel, "execute/examples.svtest"))
		return "needs ../examples/*.sieve, which the corpus does not ship";
	for (const char *const *d = skip_dirs; *d; d++)
		if (strncmp(rel, *d, strlen(*d)) == 0)
			return "Pigeonhole-only or unlisted extension";
	return NULL;
}

static char *read_all(const char *path, size_t *len_r)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 65536, n = 0;
	char *b = xmalloc(cap);
	size_t r;
	while ((r = fread(b + n, 1, cap - n - 1, f)) > 0) {
		n += r;
		if (n + 1 >= cap)
			b = xrealloc(b, cap *= 2);
	}
	fclose(f);
	b[n] = '\0';
	*len_r = n;
	return b;
}

enum { RES_PASS, RES_FAIL, RES_SKIP };

static int run_file(const char *path, const char *rel, char **why_r, int *ntests_r,
    char **ret_note_r)
{
	const char *sk = skip_reason_for(rel);
	if (sk) {
		*why_r = xstrdup(sk);
		return RES_SKIP;
	}
	struct ctx c = { 0 };
	char *dir = xstrdup(path);
	char *sl = strrchr(dir, '/');
	if (sl) *sl = '\0';
	c.dir = dir;
	c.rel = rel;
	sieve_limits_default(&c.limits);
	c.pending = c.limits;
	c.env_from = xstrdup("sender@example.com");
	c.env_to = xstrdup("recipient@example.com");
	c.env_orig_to = xstrdup("recipient@example.com");
	set_message(&c, "From: sender@example.com\nTo: recipient@example.org\n"
	    "Subject: Frop!\n\nFriep!\n", NULL, NULL);
	envelope_from_headers(&c);
	c.env_auth = xstrdup("testsuite");
	apply_env(&c, c.msg);
	struct sieve_errors err = { 0 };
	struct sieve_script *s = NULL;
	struct sieve_compile_opts o = { .extra = testsuite_defs, .extra_caps = test_caps };
	char gdir[4096];
	snprintf(gdir, sizeof(gdir), "%s/included-global", dir);
	o.global_dir = gdir;
	char *idir = xasprintf("%s/included", dir);
	struct stat isb;
	if (stat(idir, &isb) == 0)
		o.dir = idir;
	int ret;
	if (sieve_compile_file(path, &o, &s, &err) < 0) {
		*why_r = xasprintf("does not compile: %s", err.n ? err.msg[0] : "?");
		ret = RES_FAIL;
		goto out;
	}
	struct sieve_result *res = NULL;
	struct sieve_limits big;
	sieve_limits_default(&big);
	big.max_actions = 1000;
	big.max_redirects = 1000;
	big.max_cpu_steps = 200000000;
	struct sieve_run_opts ro = { .limits = &big, .ctx = &c, .dup = &dupstore,
		.mailbox_exists = mbox_exists };
	dupstore.ctx = &c;
	/* the testsuite's run is reached through ctx for set_message */
	int rr = sieve_run_with(s, c.msg, &ro, &res, &err, &c.run);
	sieve_result_free(&res);
	*ntests_r = c.ntests;
	if (c.nskipped && ret_note_r)
		*ret_note_r = xasprintf(", %d skipped: %s", c.nskipped, c.skipped_why);
	if (c.skip_reason) {
		*why_r = c.skip_reason;
		c.skip_reason = NULL;
		ret = RES_SKIP;
	} else if (!strncmp(rel, "failures/", 9)) {
		/* Pigeonhole runs these expecting every test to fail (crash regressions) */
		if (c.ntests > 0 && c.nfailed == c.ntests) {
			ret = RES_PASS;
			if (ret_note_r)
				*ret_note_r = xstrdup(", all failed as expected");
		} else {
			*why_r = xasprintf("only %d of %d tests failed (all expected to fail)",
			    c.nfailed, c.ntests);
			ret = RES_FAIL;
		}
	} else if (c.nfailed || c.first_fail) {
		*why_r = c.first_fail ? c.first_fail : xstrdup("failed");
		c.first_fail = NULL;
		ret = RES_FAIL;
	} else if (rr < 0) {
		*why_r = xasprintf("runtime error: %s", err.n ? err.msg[err.n - 1] : "?");
		ret = RES_FAIL;
	} else {
		ret = RES_PASS;
	}
out:
	sieve_script_free(&s);
	for (size_t i = 0; i < c.nall; i++)
		sieve_script_free(&c.all[i]);
	free(c.all);
	sieve_strv_free(c.saved_names, c.nsaved);
	free(c.saved);
	sieve_errors_clear(&err);
	sieve_errors_clear(&c.errs);
	sieve_msg_free(&c.msg);
	for (size_t i = 0; i < c.nold; i++)
		sieve_msg_free(&c.old[i]);
	free(c.old);
	for (size_t i = 0; i < c.nst; i++) {
		free(c.st[i].box);
		free(c.st[i].text);
		free(c.st[i].flags);
	}
	free(c.st);
	for (size_t i = 0; i < c.nsm; i++) {
		free(c.sm[i].from);
		free(c.sm[i].to);
		free(c.sm[i].text);
	}
	free(c.sm);
	sieve_strv_free(c.boxes, c.nboxes);
	sieve_strv_free(c.cfg, 2 * c.ncfg);
	sv_vars_free(&c.dupes);
	free(c.env_from);
	free(c.env_to);
	free(c.env_orig_to);
	free(c.env_auth);
	free(c.msg_text);
	free(c.first_fail);
	free(c.skip_reason);
	free(c.test_name);
	free(idir);
	free(dir);
	return ret;
}

static int cmpstr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void find_svtests(const char *root, const char *sub, char ***v, size_t *n)
{
	char *path = sub[0] ? xasprintf("%s/%s", root, sub) : xstrdup(root);
	DIR *d = opendir(path);
	if (!d) {
		free(path);
		return;
	}
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char *rel = sub[0] ? xasprintf("%s/%s", sub, e->d_name) : xstrdup(e->d_name);
		char *full = xasprintf("%s/%s", root, rel);
		struct stat sb;
		if (stat(full, &sb) == 0 && S_ISDIR(sb.st_mode)) {
			find_svtests(root, rel, v, n);
			free(rel);
		} else if (strlen(rel) > 7 && !strcmp(rel + strlen(rel) - 7, ".svtest")) {
			*v = xreallocarray(*v, *n + 1, sizeof(char *));
			(*v)[(*n)++] = rel;
		} else {
			free(rel);
		}
		free(full);
	}
	closedir(d);
	free(path);
}

/* expected list: "FILE pass" / "FILE skip:reason" / "FILE fail" */
static const char *expected_for(char **exp, size_t nexp, const char *rel)
{
	size_t l = strlen(rel);
	for (size_t i = 0; i < nexp; i++)
		if (strncmp(exp[i], rel, l) == 0 && (exp[i][l] == ' ' || exp[i][l] == '\t')) {
			const char *p = exp[i] + l;
			while (*p == ' ' || *p == '\t')
				p++;
			return p;
		}
	return NULL;
}

/* --run SCRIPT MESSAGE FROM TO: the actions, one normalized line each, for
 * the differential test against Pigeonhole's sieve-test */
static int cmpflag(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void print_store(const char *pre, const char *box, char **flags, size_t nflags)
{
	char **f = xcalloc(nflags + 1, sizeof(char *));
	for (size_t i = 0; i < nflags; i++) {
		f[i] = xstrdup(flags[i]);
		for (char *p = f[i]; *p; p++)
			*p = (char)tolower((unsigned char)*p);
	}
	qsort(f, nflags, sizeof(char *), cmpflag);
	printf("%sstore %s", pre, box);
	for (size_t i = 0; i < nflags; i++)
		printf("%s%s", i ? " " : " flags:", f[i]);
	printf("\n");
	sieve_strv_free(f, nflags);
}

static int run_one(char **argv)
{
	size_t len;
	char *text = read_all(argv[1], &len);
	if (!text)
		return 2;
	struct sieve_msg *m = sieve_msg_parse(text, len);
	free(text);
	sieve_msg_set_env(m, "from", argv[2]);
	sieve_msg_set_env(m, "to", argv[3]);
	sieve_msg_set_env(m, "orig_to", argv[3]);
	struct sieve_errors err = { 0 };
	struct sieve_script *s = NULL;
	struct sieve_result *r = NULL;
	int rc = 0;
	if (sieve_compile_file(argv[0], NULL, &s, &err) < 0) {
		printf("COMPILE-ERROR\n");
	} else if (sieve_run(s, m, NULL, &r, &err) < 0) {
		printf("RUNTIME-ERROR\n");
	} else {
		for (size_t i = 0; i < r->n; i++) {
			const struct sieve_action *a = &r->a[i];
			switch (a->type) {
			case SIEVE_A_KEEP: print_store("", "INBOX", a->flags, a->nflags); break;
			case SIEVE_A_FILEINTO: print_store("", a->target, a->flags, a->nflags); break;
			case SIEVE_A_REDIRECT: printf("redirect %s\n", a->target); break;
			case SIEVE_A_DISCARD: printf("discard\n"); break;
			case SIEVE_A_REJECT: printf("reject %s\n", a->target); break;
			case SIEVE_A_EREJECT: printf("ereject %s\n", a->target); break;
			case SIEVE_A_VACATION:
				printf("vacation %lu %s from=%s reason=%s\n", a->seconds,
				    a->value ? a->value : "", a->from ? a->from : "", a->target);
				break;
			default: break;
			}
		}
		if (r->implicit_keep)
			print_store("implicit ", "INBOX", r->keep_flags, r->nkeep_flags);
	}
	sieve_result_free(&r);
	sieve_script_free(&s);
	sieve_errors_clear(&err);
	sieve_msg_free(&m);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc == 6 && !strcmp(argv[1], "--run"))
		return run_one(argv + 2);
	const char *corpus = "../shared/sieve-conformance/tests", *expfile = NULL;
	int write_expected = 0;
	int i = 1;
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (!strcmp(argv[i], "-C") && i + 1 < argc)
			corpus = argv[++i];
		else if (!strcmp(argv[i], "-e") && i + 1 < argc)
			expfile = argv[++i];
		else if (!strcmp(argv[i], "-w"))
			write_expected = 1;
		else {
			fprintf(stderr, "usage: sieve-conformance [-C CORPUS] [-e EXPECTED] [-w] [FILE...]\n");
			return 2;
		}
	}
	char **files = NULL;
	size_t nfiles = 0;
	if (i < argc) {
		for (; i < argc; i++) {
			files = xreallocarray(files, nfiles + 1, sizeof(char *));
			files[nfiles++] = xstrdup(argv[i]);
		}
	} else {
		find_svtests(corpus, "", &files, &nfiles);
		qsort(files, nfiles, sizeof(char *), cmpstr);
	}
	if (nfiles == 0) {
		fprintf(stderr, "sieve-conformance: no .svtest files under %s\n", corpus);
		return 2;
	}
	char **exp = NULL;
	size_t nexp = 0;
	if (expfile) {
		size_t len;
		char *t = read_all(expfile, &len);
		if (!t) {
			fprintf(stderr, "sieve-conformance: cannot read %s\n", expfile);
			return 2;
		}
		for (char *line = strtok(t, "\n"); line; line = strtok(NULL, "\n"))
			if (line[0] && line[0] != '#') {
				exp = xreallocarray(exp, nexp + 1, sizeof(char *));
				exp[nexp++] = xstrdup(line);
			}
		free(t);
	}
	int np = 0, nf = 0, nsk = 0, regress = 0;
	for (size_t k = 0; k < nfiles; k++) {
		char *path = xasprintf("%s/%s", corpus, files[k]);
		char *why = NULL;
		int nt = 0;
		char *note = NULL;
		int r = run_file(path, files[k], &why, &nt, &note);
		if (write_expected) {
			printf("%s %s%s\n", files[k], r == RES_PASS ? "pass" : r == RES_SKIP ? "skip:" : "fail",
			    r == RES_SKIP ? why : "");
		} else if (r == RES_PASS) {
			printf("PASS %s (%d tests%s)\n", files[k], nt, note ? note : "");
		} else if (r == RES_FAIL) {
			printf("FAIL %s: %s\n", files[k], why);
		} else {
			printf("SKIP %s: %s\n", files[k], why);
		}
		np += r == RES_PASS;
		nf += r == RES_FAIL;
		nsk += r == RES_SKIP;
		const char *e = expected_for(exp, nexp, files[k]);
		if (e && strncmp(e, "pass", 4) == 0 && r != RES_PASS) {
			printf("REGRESSION %s: expected to pass\n", files[k]);
			regress++;
		}
		free(why);
		free(note);
		free(path);
		free(files[k]);
	}
	free(files);
	sieve_strv_free(exp, nexp);
	if (!write_expected)
		printf("sieve conformance: %d passed, %d failed, %d skipped\n", np, nf, nsk);
	if (regress)
		printf("sieve conformance: %d regression(s) against %s\n", regress, expfile);
	return regress ? 1 : 0;
}
