/*
 * sieve_rules.c - the published compiled Sieve scripts of the server and
 * its domains, and their evaluation at end of message for the doors.
 * Contract in rules/sieve_rules.h. Pure: no I/O but logging.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/log.h"
#include "common/xmalloc.h"
#include "rules/sieve_rules.h"

struct sieve_rules *
sieve_rules_new(void)
{
	struct sieve_rules *r = xcalloc(1, sizeof(*r));

	atomic_init(&r->refs, 1);
	return r;
}

struct sieve_rules_script *
sieve_rules_script_ref(struct sieve_rules_script *s)
{
	if (s != NULL)
		atomic_fetch_add(&s->refs, 1);
	return s;
}

void
sieve_rules_script_unref(struct sieve_rules_script **sp)
{
	struct sieve_rules_script *s = *sp;

	*sp = NULL;
	if (s == NULL || atomic_fetch_sub(&s->refs, 1) != 1)
		return;
	sieve_script_free(&s->s);
	free(s->path);
	free(s->name);
	free(s);
}

const struct sieve_rules *
sieve_rules_hold(const struct sieve_rules *r)
{
	if (r != NULL)
		atomic_fetch_add(&((struct sieve_rules *)r)->refs, 1);
	return r;
}

void
sieve_rules_unref(const struct sieve_rules **rp)
{
	struct sieve_rules *r = (struct sieve_rules *)*rp;

	*rp = NULL;
	if (r == NULL || atomic_fetch_sub(&r->refs, 1) != 1)
		return;
	sieve_rules_script_unref(&r->server);
	for (size_t i = 0; i < r->ndom; i++)
		sieve_rules_script_unref(&r->dom[i]);
	free(r->dom);
	free(r);
}

const struct sieve_rules_script *
sieve_rules_domain(const struct sieve_rules *r, const char *domain)
{
	size_t lo = 0, hi;

	if (r == NULL || domain == NULL)
		return NULL;
	hi = r->ndom;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcasecmp(domain, r->dom[mid]->name);

		if (c == 0)
			return r->dom[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

int
sieve_rules_any(const struct sieve_rules *r)
{
	return r != NULL && (r->server != NULL || r->ndom > 0);
}

int
sieve_rules_need_body(const struct sieve_rules *r)
{
	if (r == NULL)
		return 0;
	if (r->server != NULL && r->server->needs_body)
		return 1;
	for (size_t i = 0; i < r->ndom; i++)
		if (r->dom[i]->needs_body)
			return 1;
	return 0;
}

/* ---- publication (two-epoch wait, as rules/snapshot.c) ---- */

void
sieve_rules_ref_init(struct sieve_rules_ref *ref, struct sieve_rules *first)
{
	atomic_init(&ref->cur, first);
	atomic_init(&ref->epoch, 0);
	atomic_init(&ref->readers[0], 0);
	atomic_init(&ref->readers[1], 0);
}

void
sieve_rules_ref_deinit(struct sieve_rules_ref *ref)
{
	const struct sieve_rules *r = atomic_exchange(&ref->cur, NULL);

	sieve_rules_unref(&r);
}

const struct sieve_rules *
sieve_rules_ref_get(struct sieve_rules_ref *ref)
{
	unsigned e = atomic_load(&ref->epoch) & 1;
	const struct sieve_rules *r;

	atomic_fetch_add(&ref->readers[e], 1);
	r = sieve_rules_hold(atomic_load(&ref->cur));
	atomic_fetch_sub(&ref->readers[e], 1);
	return r;
}

void
sieve_rules_ref_publish(struct sieve_rules_ref *ref, struct sieve_rules *r)
{
	const struct sieve_rules *old = atomic_exchange(&ref->cur, r);
	const struct timespec ts = { 0, 50 * 1000 };

	for (int phase = 0; phase < 2; phase++) {
		unsigned e = atomic_fetch_add(&ref->epoch, 1);

		while (atomic_load(&ref->readers[e & 1]) != 0)
			nanosleep(&ts, NULL);
	}
	sieve_rules_unref(&old);
}

/* ---- evaluation ---- */

static void
trace_add(struct sieve_door_result *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
trace_add(struct sieve_door_result *d, const char *fmt, ...)
{
	va_list ap;
	char buf[700];

	if (d->ntrace >= 256)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	d->trace = xreallocarray(d->trace, d->ntrace + 1, sizeof(*d->trace));
	d->trace[d->ntrace++] = xstrdup(buf);
}

/* printable ASCII, one line, capped: what an SMTP reply or a log may carry */
static void
clean_text(char *dst, size_t cap, const char *src)
{
	size_t n = 0;
	int sp = 0;

	for (; src != NULL && *src != '\0' && n + 1 < cap; src++) {
		unsigned char c = (unsigned char)*src;

		if (c == '\r' || c == '\n' || c == '\t' || c == ' ') {
			sp = n > 0;
			continue;
		}
		if (sp && n + 2 < cap)
			dst[n++] = ' ';
		sp = 0;
		dst[n++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
	}
	dst[n] = '\0';
}

static int
is_quarantine(const struct sieve_action *a)
{
	return a->type == SIEVE_A_FILEINTO && a->target != NULL &&
	    strcasecmp(a->target, "Quarantine") == 0;
}

static void
trace_action(struct sieve_door_result *d, const char *level, const char *path,
    const struct sieve_action *a)
{
	char arg[200];

	clean_text(arg, sizeof(arg), a->target);
	switch (a->type) {
	case SIEVE_A_FILEINTO:
		trace_add(d, "%s %s: %s \"%s\"%s (line %u)", level, path,
		    is_quarantine(a) ? "quarantine: fileinto" : "fileinto", arg,
		    a->copy ? " :copy" : "", a->line);
		break;
	case SIEVE_A_ADDHEADER: {
		char val[200];

		clean_text(val, sizeof(val), a->value);
		trace_add(d, "%s %s: addheader%s \"%s\" \"%s\" (line %u)", level, path,
		    a->last ? " :last" : "", arg, val, a->line);
		break;
	}
	case SIEVE_A_KEEP:
		trace_add(d, "%s %s: keep (line %u)", level, path, a->line);
		break;
	default:
		trace_add(d, "%s %s: %s%s%s%s%s (line %u)", level, path, sieve_action_name(a),
		    *arg ? " \"" : "", arg, *arg ? "\"" : "", a->copy ? " :copy" : "", a->line);
	}
}

static struct sieve_header *
headers_copy(const struct sieve_header *h, size_t n)
{
	struct sieve_header *c = xcalloc(n + 1, sizeof(*c));

	for (size_t i = 0; i < n; i++) {
		c[i].name = xstrdup(h[i].name);
		c[i].value = xstrdup(h[i].value);
	}
	return c;
}

void
sieve_rules_eval(const struct sieve_rules *r, const char *domain, const struct sieve_msg *m,
    const struct sieve_limits *lim, struct sieve_door_result *d)
{
	const struct sieve_rules_script *lv[2];
	const char *lvname[2] = { "server", "domain" };
	struct sieve_result *res = NULL;
	size_t upto = 0;	/* actions of the levels that ran to the end */
	size_t nserver = 0;	/* actions of the server level */
	int delivered, any_redirect = 0;

	memset(d, 0, sizeof(*d));
	lv[0] = r != NULL ? r->server : NULL;
	lv[1] = sieve_rules_domain(r, domain);
	for (int i = 0; i < 2; i++) {
		struct sieve_errors err = { 0 };
		struct sieve_run_opts ro = { .limits = lim };
		size_t before = res != NULL ? res->n : 0;
		int rc;

		if (lv[i] == NULL) {
			trace_add(d, "%s: no script", lvname[i]);
			continue;
		}
		rc = sieve_run(lv[i]->s, m, &ro, &res, &err);
		if (rc < 0 || res->failed) {
			/* Pigeonhole: a failed script keeps the message as it came */
			for (size_t k = 0; k < err.n; k++) {
				log_warn("sieve: %s run failed: %s", lvname[i], err.msg[k]);
				trace_add(d, "%s %s: run failed: %s", lvname[i], lv[i]->path, err.msg[k]);
			}
			if (err.n == 0)
				trace_add(d, "%s %s: run failed", lvname[i], lv[i]->path);
			sieve_errors_clear(&err);
			break;
		}
		sieve_errors_clear(&err);
		for (size_t k = before; k < res->n; k++) {
			trace_action(d, lvname[i], lv[i]->path, &res->a[k]);
			res->a[k].executed = 1;
			if (res->a[k].line > 0 && d->where[0] == '\0' &&
			    res->a[k].type != SIEVE_A_ADDHEADER && res->a[k].type != SIEVE_A_DELETEHEADER)
				snprintf(d->where, sizeof(d->where), "%.250s line %u", lv[i]->path,
				    res->a[k].line);
		}
		upto = res->n;
		if (i == 0)
			nserver = res->n;
		if (res->keep_hdr != NULL) {
			sieve_headers_free(&d->hdr, d->nhdr);
			d->hdr = headers_copy(res->keep_hdr, res->keep_nhdr);
			d->nhdr = res->keep_nhdr;
		}
		/* Pigeonhole's multiscript: the next script runs when this one kept
		 * the message, implicitly or by an explicit keep */
		int kept = res->implicit_keep;

		for (size_t k = before; k < res->n; k++)
			kept |= res->a[k].type == SIEVE_A_KEEP;
		if (!kept) {
			trace_add(d, "%s %s: the keep is cancelled: lower levels do not run",
			    lvname[i], lv[i]->path);
			break;
		}
		trace_add(d, "%s %s: implicit keep", lvname[i], lv[i]->path);
	}
	if (res == NULL) {
		d->action = SIEVE_DOOR_PASS;
		return;
	}
	delivered = res->implicit_keep && !res->failed;
	if (res->failed)
		delivered = 1;
	for (size_t k = 0; k < upto; k++) {
		const struct sieve_action *a = &res->a[k];

		if (a->type == SIEVE_A_REJECT || a->type == SIEVE_A_EREJECT) {
			d->action = SIEVE_DOOR_REJECT;
			d->tag = "sieve-reject";
			clean_text(d->text, sizeof(d->text), a->target);
			if (d->text[0] == '\0')
				snprintf(d->text, sizeof(d->text), "Message rejected by rules");
			snprintf(d->where, sizeof(d->where), "%.250s line %u",
			    (k < nserver ? lv[0] : lv[1])->path, a->line);
			break;
		}
	}
	if (d->action == SIEVE_DOOR_REJECT)
		goto out;
	for (size_t k = 0; k < upto; k++) {
		const struct sieve_action *a = &res->a[k];

		if (is_quarantine(a)) {
			d->action = SIEVE_DOOR_QUARANTINE;
			d->tag = "sieve-quarantine";
			snprintf(d->where, sizeof(d->where), "%.250s line %u",
			    (k < nserver ? lv[0] : lv[1])->path, a->line);
			snprintf(d->text, sizeof(d->text), "%s", d->where);
			goto out;
		}
		if (a->type == SIEVE_A_KEEP || a->type == SIEVE_A_FILEINTO)
			delivered = 1;
		if (a->type == SIEVE_A_FILEINTO)
			log_info("sieve: fileinto (line %u) means nothing before the store: "
			    "the message passes", a->line);
		if (a->type == SIEVE_A_REDIRECT) {
			any_redirect = 1;
			d->redirect = xreallocarray(d->redirect, d->nredirect + 1, sizeof(char *));
			d->redirect[d->nredirect++] = xstrdup(a->target);
		}
	}
	if (!delivered && any_redirect)
		d->drop_original = 1;
	else if (!delivered) {
		d->action = SIEVE_DOOR_DISCARD;
		d->tag = "sieve-discard";
	}
out:
	sieve_result_free(&res);
}

void
sieve_door_result_free(struct sieve_door_result *d)
{
	sieve_headers_free(&d->hdr, d->nhdr);
	sieve_strv_free(d->redirect, d->nredirect);
	sieve_strv_free(d->trace, d->ntrace);
	memset(d, 0, sizeof(*d));
}

void
sieve_rules_msg_facts(struct sieve_msg *m, const char *remote_ip, const char *remote_host,
    const char *helo, const char *auth, const char *country)
{
	if (remote_ip != NULL)
		sieve_msg_set_item(m, "remote-ip", remote_ip);
	if (remote_host != NULL)
		sieve_msg_set_item(m, "remote-host", remote_host);
	if (helo != NULL)
		sieve_msg_set_item(m, "vnd.portcullis.helo", helo);
	if (auth != NULL && *auth != '\0')
		sieve_msg_set_env(m, "auth", auth);
	if (country != NULL)
		sieve_msg_set_item(m, "vnd.portcullis.country", country);
	sieve_msg_set_item(m, "phase", "during");
}
