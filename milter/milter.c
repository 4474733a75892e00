/*
 * milter - libmilter callbacks: translate each event into an engine call and
 * each verdict into an smfi_* reply. Nothing else lives here.
 *
 *   milter_listen_spec()  our listen syntax -> libmilter's
 *   milter_setup()        register callbacks, bind
 *   milter_run()          smfi_main(): libmilter's threads call us
 *
 * Negotiation asks the MTA only for what the engine uses (no body, no
 * end-of-headers, no unknown commands, no headers when no header is
 * required) and for no reply where we never refuse (connect, headers): fewer
 * round trips per message than a naive milter. DATA is kept (see
 * cb_negotiate) because skipping it stalls Postfix on TCP.
 *
 * libmilter allows one filter per process, hence the file-scope env.
 * Callbacks never block: lists come from the lock-free snapshot, bans go
 * through env->ban (a non-blocking pipe write).
 *
 * Sieve (issue 10): when env->sieve has server or domain scripts, the
 * session also asks for the headers (and the body when a script needs it,
 * kept up to message_size_limit, spilled to an unlinked temporary file past
 * MILTER_BODY_MEM), and for the right to edit the message. At end of
 * message, after the engine's own checks, the scripts run: reject -> 550
 * 5.7.1 with the script's text, discard -> SMFIS_DISCARD, quarantine ->
 * smfi_quarantine (Postfix's hold queue), header edits -> smfi_insheader /
 * smfi_addheader / smfi_chgheader, redirect -> smfi_addrcpt (and
 * smfi_delrcpt of the original recipients when it took the message). A
 * recipient under another domain script than the transaction's first gets
 * 452 4.5.3: one reply per message cannot carry two domains' verdicts.
 *
 * Live reload: milter_set_policy() publishes a new policy. Each milter
 * session takes a reference to the policy in force when it begins and keeps
 * it to its end; the last session to let go of a replaced policy frees it.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <libmilter/mfapi.h>

#include "common/conf.h"
#include "common/connid.h"
#include "common/log.h"
#include "common/stats.h"
#include "common/xmalloc.h"
#include "milter/milter.h"
#include "rules/engine.h"
#include "rules/sieve_rules.h"
#include "common/mailaddr.h"

static const struct milter_env *env;
static struct sockaddr_storage listen_sa;	/* to wake the listener at shutdown */
static socklen_t listen_salen;
static atomic_int poked;

/* libmilter's own: MILTER_CONT (0) until its signal thread asks it to stop */
extern int mi_stop(void);
static atomic_int mail_macros_seen;	/* 0 unknown, 1 seen */
static atomic_int mail_macros_warned;

/* a published policy and the sessions that hold it */
struct mpol {
	struct policy *pol;
	unsigned refs;		/* sessions, plus one while it is the current one */
	int owned;		/* ours to free (set by milter_set_policy) */
};

static pthread_mutex_t mpol_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mpol *mpol_cur;

/* what Sieve needs of one transaction */
#define MILTER_BODY_MEM (256 * 1024)
struct msieve {
	const struct sieve_rules *rules;	/* held from MAIL to the end of message */
	char *helo, *host, *from, *auth;
	char **rcpt;		/* as the MTA gave them (for smfi_delrcpt) */
	size_t nrcpt;
	char *rcpt_addr;	/* the first recipient, canonical */
	const struct sieve_rules_script *dom;	/* its domain's script */
	char dom_name[256];
	struct sieve_header *hdr;	/* as received */
	size_t nhdr;
	char *body;		/* in memory, up to MILTER_BODY_MEM */
	size_t body_len, body_total;
	FILE *spill;		/* the rest, past MILTER_BODY_MEM */
	int truncated;		/* past message_size_limit: not all kept */
};

struct mpriv {
	struct engine_session *es;
	struct mpol *mp;	/* the policy this session began with */
	unsigned long proto;	/* negotiated SMFIP_* steps */
	char qid[32];
	char conn[CONNID_MAX];	/* "conn=ID" on every log line of the connection */
	int sieve_on;		/* headers (and maybe the body) were negotiated */
	int sieve_body;
	struct msieve sv;
};

struct milter_conf *
milter_conf_new(const struct conf *c, const char **error_r)
{
	static char err[600];
	char spec[512];
	const char *e;
	struct milter_conf *mc;

	if (milter_listen_spec(conf_get(c, "milter_listen"), spec, sizeof(spec), &e) < 0) {
		snprintf(err, sizeof(err), "%s: %s", conf_where(c, "milter_listen"), e);
		*error_r = err;
		return NULL;
	}
	mc = xcalloc(1, sizeof(*mc));
	mc->listen = conf_get(c, "milter_listen");
	return mc;
}

void
milter_conf_free(struct milter_conf **mc)
{
	free(*mc);
	*mc = NULL;
}

int
milter_listen_spec(const char *s, char *buf, size_t cap, const char **error_r)
{
	const char *colon;

	if (strncmp(s, "unix:", 5) == 0 || strncmp(s, "local:", 6) == 0) {
		if (strchr(s, '/') == NULL) {
			*error_r = "milter_listen: unix: needs a path";
			return -1;
		}
		snprintf(buf, cap, "%s", s);
		return 0;
	}
	if (strncmp(s, "inet6:", 6) == 0) {
		const char *h = s + 6, *end;

		if (strchr(h, '@') != NULL) {	/* libmilter form already */
			snprintf(buf, cap, "%s", s);
			return 0;
		}
		if (*h != '[' || (end = strchr(h, ']')) == NULL || end[1] != ':' ||
		    end[2] == '\0') {
			*error_r = "milter_listen: write inet6:[ADDRESS]:PORT";
			return -1;
		}
		snprintf(buf, cap, "inet6:%s@%.*s", end + 2, (int)(end - h - 1), h + 1);
		return 0;
	}
	if (strncmp(s, "inet:", 5) == 0) {
		const char *h = s + 5;

		if (strchr(h, '@') != NULL) {
			snprintf(buf, cap, "%s", s);
			return 0;
		}
		colon = strrchr(h, ':');
		if (colon == NULL || colon == h || colon[1] == '\0' ||
		    strspn(colon + 1, "0123456789") != strlen(colon + 1)) {
			*error_r = "milter_listen: write inet:HOST:PORT, e.g. inet:127.0.0.1:8891";
			return -1;
		}
		snprintf(buf, cap, "inet:%s@%.*s", colon + 1, (int)(colon - h), h);
		return 0;
	}
	*error_r = "milter_listen: expected inet:HOST:PORT, inet6:[ADDRESS]:PORT or unix:/PATH";
	return -1;
}

static struct mpol *
mpol_acquire(void)
{
	struct mpol *mp;

	pthread_mutex_lock(&mpol_lock);
	mp = mpol_cur;
	mp->refs++;
	pthread_mutex_unlock(&mpol_lock);
	return mp;
}

static void
mpol_release(struct mpol **mpp)
{
	struct mpol *mp = *mpp;
	int last;

	if (mp == NULL)
		return;
	*mpp = NULL;
	pthread_mutex_lock(&mpol_lock);
	last = --mp->refs == 0;
	pthread_mutex_unlock(&mpol_lock);
	if (last) {
		if (mp->owned)
			policy_free(&mp->pol);
		free(mp);
	}
}

void
milter_set_policy(struct policy *pol)
{
	struct mpol *mp = xcalloc(1, sizeof(*mp)), *old;

	mp->pol = pol;
	mp->refs = 1;
	mp->owned = 1;
	pthread_mutex_lock(&mpol_lock);
	old = mpol_cur;
	mpol_cur = mp;
	pthread_mutex_unlock(&mpol_lock);
	mpol_release(&old);
}

static struct mpriv *
priv_new(void)
{
	struct mpriv *p = xcalloc(1, sizeof(*p));

	p->mp = mpol_acquire();
	p->es = engine_session_new(p->mp->pol);
	engine_session_set_ratelimit(p->es, env->rl);
	/* Postfix's queue id (macro i) names each message on the engine's
	 * lines; this names the connection, on all of them */
	connid_new(p->conn);
	engine_session_set_id(p->es, p->conn);
	return p;
}

static struct mpriv *
priv_of(SMFICTX *ctx)
{
	struct mpriv *p = smfi_getpriv(ctx);

	if (p == NULL) {	/* an MTA that skipped negotiation */
		p = priv_new();
		smfi_setpriv(ctx, p);
	}
	return p;
}

static void
note_qid(SMFICTX *ctx, struct mpriv *p)
{
	const char *q = smfi_getsymval(ctx, "i");

	if (q != NULL && *q != '\0') {
		size_t n = strspn(q, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789");

		if (n >= sizeof(p->qid))
			n = sizeof(p->qid) - 1;
		memcpy(p->qid, q, n);
		p->qid[n] = '\0';
	}
}

/* smfi_setreply() treats % as a format character */
static void
reply_text(char *dst, size_t cap, const char *src)
{
	size_t n = 0;

	for (; *src && n + 3 < cap; src++) {
		if (*src == '%')
			dst[n++] = '%';
		dst[n++] = *src;
	}
	dst[n] = '\0';
}

static sfsistat
answer(SMFICTX *ctx, struct mpriv *p, enum engine_stage stage, const struct verdict *v,
    const char *arg)
{
	char text[2 * MAX_REPLY_TEXT];

	engine_log(p->es, stage, v, p->qid[0] ? p->qid : NULL,
	    v->tag && strcmp(v->tag, "long-command") == 0 ? arg : NULL);
	if (v->ban_seconds > 0 && env->ban != NULL && engine_client_addr(p->es) != NULL)
		env->ban(env->ban_arg, engine_client_addr(p->es), v->ban_seconds, v->tag);
	switch (v->action) {
	case VERDICT_REJECT:
	case VERDICT_TEMPFAIL:
		reply_text(text, sizeof(text), v->text);
		if (smfi_setreply(ctx, (char *)v->code, (char *)v->dsn, text) != MI_SUCCESS)
			log_warn("conn=%s smfi_setreply failed for \"%s %s\"", p->conn, v->code, v->dsn);
		return v->action == VERDICT_REJECT ? SMFIS_REJECT : SMFIS_TEMPFAIL;
	case VERDICT_DISCARD:
		return SMFIS_DISCARD;
	case VERDICT_ACCEPT:
		return SMFIS_ACCEPT;
	default:
		return SMFIS_CONTINUE;
	}
}

/* ---- Sieve ---- */

static void
msieve_reset(struct msieve *sv, int keep_session)
{
	sieve_rules_unref(&sv->rules);
	free(sv->from);
	sv->from = NULL;
	free(sv->auth);
	sv->auth = NULL;
	sieve_strv_free(sv->rcpt, sv->nrcpt);
	sv->rcpt = NULL;
	sv->nrcpt = 0;
	free(sv->rcpt_addr);
	sv->rcpt_addr = NULL;
	sv->dom = NULL;
	sv->dom_name[0] = '\0';
	sieve_headers_free(&sv->hdr, sv->nhdr);
	sv->nhdr = 0;
	free(sv->body);
	sv->body = NULL;
	sv->body_len = sv->body_total = 0;
	if (sv->spill != NULL)
		fclose(sv->spill);
	sv->spill = NULL;
	sv->truncated = 0;
	if (!keep_session) {
		free(sv->helo);
		free(sv->host);
		sv->helo = sv->host = NULL;
	}
}

static void
setstr(char **dst, const char *src)
{
	free(*dst);
	*dst = src != NULL ? xstrdup(src) : NULL;
}

/* a header value as Sieve sees it: leading blanks and line ends dropped */
static char *
header_value(const char *v)
{
	char *o = xmalloc(strlen(v) + 1), *q = o;

	while (*v == ' ' || *v == '\t')
		v++;
	for (; *v; v++)
		if (*v != '\r' && *v != '\n')
			*q++ = *v;
	while (q > o && (q[-1] == ' ' || q[-1] == '\t'))
		q--;
	*q = '\0';
	return o;
}

static void
msieve_header(struct msieve *sv, const char *name, const char *value)
{
	if (sv->nhdr >= 10000)
		return;
	sv->hdr = xreallocarray(sv->hdr, sv->nhdr + 2, sizeof(*sv->hdr));
	sv->hdr[sv->nhdr].name = xstrdup(name);
	sv->hdr[sv->nhdr].value = header_value(value);
	sv->nhdr++;
	sv->hdr[sv->nhdr].name = sv->hdr[sv->nhdr].value = NULL;
}

static void
msieve_body(struct msieve *sv, const unsigned char *b, size_t len)
{
	size_t cap = env->message_size_limit > 0 ? env->message_size_limit : (size_t)10240000;

	if (sv->body_total >= cap) {
		sv->truncated = 1;
		return;
	}
	if (len > cap - sv->body_total) {
		len = cap - sv->body_total;
		sv->truncated = 1;
	}
	sv->body_total += len;
	if (sv->body_len < MILTER_BODY_MEM) {
		size_t n = len < MILTER_BODY_MEM - sv->body_len ? len : MILTER_BODY_MEM - sv->body_len;

		if (sv->body == NULL)
			sv->body = xmalloc(MILTER_BODY_MEM + 1);
		memcpy(sv->body + sv->body_len, b, n);
		sv->body_len += n;
		b += n;
		len -= n;
	}
	if (len == 0)
		return;
	if (sv->spill == NULL && (sv->spill = tmpfile()) == NULL) {
		log_warn("milter: cannot spill a large body to a temporary file: Sieve sees "
		    "its first %d KB", MILTER_BODY_MEM / 1024);
		sv->truncated = 1;
		return;
	}
	if (fwrite(b, 1, len, sv->spill) != len)
		sv->truncated = 1;
}

/* the whole kept body, NUL-terminated (caller frees) */
static char *
msieve_body_text(struct msieve *sv, size_t *len_r)
{
	size_t spilled = 0;
	char *t;

	if (sv->spill != NULL) {
		long l;

		fflush(sv->spill);
		l = ftell(sv->spill);
		spilled = l > 0 ? (size_t)l : 0;
	}
	t = xmalloc(sv->body_len + spilled + 1);
	if (sv->body_len > 0)
		memcpy(t, sv->body, sv->body_len);
	if (spilled > 0) {
		rewind(sv->spill);
		spilled = fread(t + sv->body_len, 1, spilled, sv->spill);
	}
	*len_r = sv->body_len + spilled;
	t[*len_r] = '\0';
	return t;
}

/*
 * The header edits: the scripts' header (fin) against the received one
 * (org). editheader only prepends, appends and deletes, so fin is
 * [added on top] + [org less the deleted] + [added at the end]; the longest
 * common subsequence finds the kept fields.
 */
static void
apply_header_edits(SMFICTX *ctx, const struct sieve_header *org, size_t no,
    const struct sieve_header *fin, size_t nf)
{
	unsigned short *lcs;
	size_t i, j, first_kept = nf;
	char *kept_o, *kept_f;

	if (no > 2000 || nf > 2000) {
		log_warn("milter: too many header fields to edit (%zu, %zu): edits skipped", no, nf);
		return;
	}
	lcs = xcalloc((no + 1) * (nf + 1), sizeof(*lcs));
	kept_o = xcalloc(no + 1, 1);
	kept_f = xcalloc(nf + 1, 1);
#define L(a, b) lcs[(a) * (nf + 1) + (b)]
	for (i = no; i-- > 0;)
		for (j = nf; j-- > 0;)
			L(i, j) = strcasecmp(org[i].name, fin[j].name) == 0 &&
			    strcmp(org[i].value, fin[j].value) == 0 ? L(i + 1, j + 1) + 1 :
			    L(i + 1, j) > L(i, j + 1) ? L(i + 1, j) : L(i, j + 1);
	for (i = 0, j = 0; i < no && j < nf;) {
		if (strcasecmp(org[i].name, fin[j].name) == 0 && strcmp(org[i].value, fin[j].value) == 0) {
			kept_o[i++] = kept_f[j] = 1;
			if (first_kept == nf)
				first_kept = j;
			j++;
		} else if (L(i + 1, j) >= L(i, j + 1))
			i++;
		else
			j++;
	}
#undef L
	/* deletions: per name, the highest occurrence first, so indexes hold */
	for (i = no; i-- > 0;) {
		unsigned idx = 1;

		if (kept_o[i])
			continue;
		for (size_t k = 0; k < i; k++)
			idx += strcasecmp(org[k].name, org[i].name) == 0;
		if (smfi_chgheader(ctx, org[i].name, (int)idx, NULL) != MI_SUCCESS)
			log_warn("milter: smfi_chgheader failed (%s)", org[i].name);
	}
	for (j = 0; j < nf; j++) {
		if (kept_f[j])
			continue;
		if (first_kept < nf && j < first_kept) {
			/* on top: its place among the fields, from 0 */
			if (smfi_insheader(ctx, (int)j, fin[j].name, fin[j].value) != MI_SUCCESS)
				log_warn("milter: smfi_insheader failed (%s)", fin[j].name);
		} else if (smfi_addheader(ctx, fin[j].name, fin[j].value) != MI_SUCCESS)
			log_warn("milter: smfi_addheader failed (%s)", fin[j].name);
	}
	free(lcs);
	free(kept_o);
	free(kept_f);
}

static void
sieve_verdict(struct verdict *v, enum verdict_action a, const char *tag, const char *text,
    const char *where)
{
	memset(v, 0, sizeof(*v));
	v->action = a;
	v->tag = tag;
	if (a == VERDICT_REJECT || a == VERDICT_TEMPFAIL) {
		snprintf(v->code, sizeof(v->code), "%s", a == VERDICT_REJECT ? "550" : "452");
		snprintf(v->dsn, sizeof(v->dsn), "%s", a == VERDICT_REJECT ? "5.7.1" : "4.5.3");
		snprintf(v->text, sizeof(v->text), "%.*s", (int)sizeof(v->text) - 1, text);
	}
	snprintf(v->rule, sizeof(v->rule), "sieve %.240s", where);
}

/* at end of message, after the engine passed it: 1 when the answer is made */
static int
sieve_eom(SMFICTX *ctx, struct mpriv *p, sfsistat *rc_r)
{
	struct msieve *sv = &p->sv;
	struct sieve_msg *m;
	struct sieve_door_result d;
	struct verdict v;
	char ip[64];
	const struct ipaddr *ca;
	size_t blen;
	int quarantined;

	if (!p->sieve_on || !sieve_rules_any(sv->rules) ||
	    (sv->rules->server == NULL && sv->dom == NULL))
		return 0;
	m = sieve_msg_new();
	m->hdr = xcalloc(sv->nhdr + 1, sizeof(*m->hdr));
	for (size_t i = 0; i < sv->nhdr; i++) {
		m->hdr[i].name = xstrdup(sv->hdr[i].name);
		m->hdr[i].value = xstrdup(sv->hdr[i].value);
	}
	m->nhdr = sv->nhdr;
	if (p->sieve_body) {
		m->body = msieve_body_text(sv, &blen);
		m->body_len = blen;
	}
	m->size = sv->body_total;
	for (size_t i = 0; i < sv->nhdr; i++)
		m->size += strlen(sv->hdr[i].name) + 2 + strlen(sv->hdr[i].value) + 2;
	m->size += 2;
	sieve_msg_set_env(m, "from", sv->from != NULL ? sv->from : "");
	if (sv->rcpt_addr != NULL)
		sieve_msg_set_env(m, "to", sv->rcpt_addr);
	ca = engine_client_addr(p->es);
	sieve_rules_msg_facts(m, ca != NULL ? cidr_addr_format(ca, ip) : NULL, sv->host, sv->helo,
	    sv->auth, engine_session_country(p->es));
	sieve_rules_eval(sv->rules, sv->dom_name[0] ? sv->dom_name : NULL, m, env->sieve_limits, &d);
	sieve_msg_free(&m);
	if (log_is_debug())
		for (size_t i = 0; i < d.ntrace; i++)
			log_debug("sieve: %s", d.trace[i]);
	switch (d.action) {
	case SIEVE_DOOR_REJECT:
		sieve_verdict(&v, VERDICT_REJECT, d.tag, d.text, d.where);
		*rc_r = answer(ctx, p, STAGE_EOM, &v, NULL);
		sieve_door_result_free(&d);
		return 1;
	case SIEVE_DOOR_DISCARD:
		sieve_verdict(&v, VERDICT_DISCARD, d.tag, "", d.where);
		*rc_r = answer(ctx, p, STAGE_EOM, &v, NULL);
		sieve_door_result_free(&d);
		return 1;
	case SIEVE_DOOR_QUARANTINE: {
		char reason[400];

		snprintf(reason, sizeof(reason), "portcullis sieve %s", d.where);
		if (smfi_quarantine(ctx, reason) != MI_SUCCESS)
			log_warn("milter: smfi_quarantine failed (the MTA did not grant it)");
		sieve_verdict(&v, VERDICT_QUARANTINE, d.tag, "", d.where);
		(void)answer(ctx, p, STAGE_EOM, &v, NULL);
		break;
	}
	case SIEVE_DOOR_PASS:
		break;
	}
	if (d.hdr != NULL)
		apply_header_edits(ctx, sv->hdr, sv->nhdr, d.hdr, d.nhdr);
	for (size_t i = 0; i < d.nredirect; i++) {
		char *a = xasprintf("<%s>", d.redirect[i]);

		if (smfi_addrcpt(ctx, a) != MI_SUCCESS)
			log_warn("milter: smfi_addrcpt failed for a redirect");
		else
			log_info("conn=%s %s: sieve redirect to %s (%s)", p->conn,
			    p->qid[0] ? p->qid : "NOQUEUE", a, d.where);
		free(a);
	}
	if (d.drop_original)
		for (size_t i = 0; i < sv->nrcpt; i++)
			if (smfi_delrcpt(ctx, sv->rcpt[i]) != MI_SUCCESS)
				log_warn("milter: smfi_delrcpt failed");
	quarantined = d.action == SIEVE_DOOR_QUARANTINE;
	sieve_door_result_free(&d);
	*rc_r = SMFIS_CONTINUE;
	return quarantined;
}

/* a recipient the engine passed: 1 (with a 452 answer) when it falls under
 * another domain script than the transaction's first recipient */
static int
sieve_rcpt(SMFICTX *ctx, struct mpriv *p, const char *raw, sfsistat *rc_r)
{
	struct msieve *sv = &p->sv;
	const struct mailaddr *a;
	const struct sieve_rules_script *dom;
	char buf[MAILADDR_TEXT_MAX];
	struct verdict v;
	int local;

	if (!p->sieve_on || !sieve_rules_any(sv->rules))
		return 0;
	a = engine_rcpt_address(p->es, &local);
	if (a == NULL)
		return 0;
	dom = sieve_rules_domain(sv->rules, a->domain);
	if (sv->nrcpt > 0 && dom != sv->dom) {
		char text[MAX_REPLY_TEXT];

		snprintf(text, sizeof(text), "Too many recipients: %.100s is under other rules, "
		    "send to it in a new transaction", a->domain[0] ? a->domain : "this recipient");
		sieve_verdict(&v, VERDICT_TEMPFAIL, "sieve-domains", text, "(another domain)");
		engine_rcpt_refused(p->es);
		*rc_r = answer(ctx, p, STAGE_RCPT, &v, raw);
		return 1;
	}
	if (sv->nrcpt == 0) {
		sv->dom = dom;
		snprintf(sv->dom_name, sizeof(sv->dom_name), "%s", a->domain);
		sv->rcpt_addr = xstrdup(mailaddr_format(a, buf));
	}
	sv->rcpt = xreallocarray(sv->rcpt, sv->nrcpt + 1, sizeof(char *));
	sv->rcpt[sv->nrcpt++] = xstrdup(raw);
	return 0;
}

static sfsistat
cb_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2,
    unsigned long f3, unsigned long *pf0, unsigned long *pf1, unsigned long *pf2,
    unsigned long *pf3)
{
	struct mpriv *p = priv_new();
	/*
	 * DATA is asked for, with a reply, on purpose: when it is skipped,
	 * Postfix sends the DATA-stage macros and then the first header as two
	 * small writes with nothing coming back in between, and on TCP the
	 * second waits ~40 ms for a delayed ACK (Nagle). Answering DATA costs a
	 * round trip and removes that stall (measured: 44 ms -> 2-3 ms/message).
	 */
	unsigned long want = SMFIP_NOBODY | SMFIP_NOEOH | SMFIP_NOUNKNOWN |
	    SMFIP_NR_CONN | SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY | SMFIP_NR_UNKN;

	(void)f0; (void)f2; (void)f3;
	/* the session keeps the policy it began with, so this holds to its end */
	if (p->mp->pol->nrequire_headers == 0)
		want |= SMFIP_NOHDRS;
	if (env->sieve != NULL) {
		const struct sieve_rules *r = sieve_rules_ref_get(env->sieve);

		/* scripts in force now: they see the headers (and the body when
		 * one needs it) and may edit the message */
		if (sieve_rules_any(r)) {
			p->sieve_on = 1;
			want &= ~(unsigned long)SMFIP_NOHDRS;
			if (sieve_rules_need_body(r)) {
				want &= ~(unsigned long)SMFIP_NOBODY;
				p->sieve_body = 1;
			}
		}
		sieve_rules_unref(&r);
	}
	p->proto = want & f1;
	if (p->sieve_body && (p->proto & SMFIP_NOBODY))
		p->sieve_body = 0;
	smfi_setpriv(ctx, p);
	/* we modify messages only for Sieve */
	*pf0 = p->sieve_on ? (f0 & (SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_ADDRCPT |
	    SMFIF_DELRCPT | SMFIF_QUARANTINE)) : 0;
	*pf1 = p->proto;
	*pf2 = 0;
	*pf3 = 0;
	/* ask for the macros we use; Postfix and Sendmail 8.14+ honour this */
	smfi_setsymlist(ctx, SMFIM_ENVFROM, "i {auth_authen} {mail_addr}");
	smfi_setsymlist(ctx, SMFIM_EOM, "i");
	return SMFIS_CONTINUE;
}

static sfsistat
cb_connect(SMFICTX *ctx, char *hostname, _SOCK_ADDR *hostaddr)
{
	struct mpriv *p = priv_of(ctx);
	struct ipaddr a;
	unsigned ticket;
	const struct snapshot *snap = snapref_acquire(env->snaps, &ticket);
	int have = cidr_addr_from_sockaddr(hostaddr, &a) == 0;
	struct verdict v;

	stats_add("connections_total{door=\"milter\"}", 1);
	if (p->sieve_on && hostname != NULL && hostname[0] != '[' &&
	    strcmp(hostname, "unknown") != 0)
		setstr(&p->sv.host, hostname);
	engine_connect(p->es, snap, have ? &a : NULL, hostname, (long long)time(NULL), &v);
	snapref_release(env->snaps, ticket);
	if (log_is_debug())
		log_debug("conn=%s connect from %s: %s", p->conn, engine_client_text(p->es), v.rule);
	return (p->proto & SMFIP_NR_CONN) ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat
cb_helo(SMFICTX *ctx, char *helo)
{
	struct mpriv *p = priv_of(ctx);
	unsigned ticket;
	const struct snapshot *snap = snapref_acquire(env->snaps, &ticket);
	struct verdict v;

	if (p->sieve_on)
		setstr(&p->sv.helo, helo);
	engine_helo(p->es, snap, helo, 5 + strlen(helo) + 2, (long long)time(NULL), &v);
	snapref_release(env->snaps, ticket);
	return answer(ctx, p, STAGE_HELO, &v, helo);
}

/* "MAIL FROM:" or "RCPT TO:" + arguments joined by spaces + CRLF */
static size_t
command_length(size_t verb, char **argv)
{
	size_t n = verb + 2;

	for (int i = 0; argv[i] != NULL; i++)
		n += strlen(argv[i]) + (i > 0);
	return n;
}

static void
check_mail_macros(SMFICTX *ctx)
{
	if (atomic_load(&mail_macros_seen))
		return;
	if (smfi_getsymval(ctx, "{mail_addr}") != NULL || smfi_getsymval(ctx, "i") != NULL) {
		atomic_store(&mail_macros_seen, 1);
		return;
	}
	if (atomic_exchange(&mail_macros_warned, 1) == 0)
		log_warn("the MTA sends no macros at MAIL FROM (neither {mail_addr} nor i): "
		    "{auth_authen} cannot arrive, so authenticated clients will be refused relaying. "
		    "Postfix: check milter_mail_macros; Sendmail: confMILTER_MACROS_ENVFROM");
}

static sfsistat
cb_envfrom(SMFICTX *ctx, char **argv)
{
	struct mpriv *p = priv_of(ctx);
	const char *auth;
	unsigned ticket;
	const struct snapshot *snap;
	struct verdict v;

	if (argv[0] == NULL)
		return SMFIS_CONTINUE;
	note_qid(ctx, p);
	check_mail_macros(ctx);
	/* Postfix sends {auth_authen} at MAIL only: the session carries it on */
	auth = smfi_getsymval(ctx, "{auth_authen}");
	/* MAIL FROM:<...> SMTPUTF8 (RFC 6531): UTF-8 addresses are addresses;
	 * DSN parameters earn room on the command line (RFC 3461) */
	for (int i = 1; argv[i] != NULL; i++) {
		if (strcasecmp(argv[i], "SMTPUTF8") == 0)
			engine_mail_smtputf8(p->es);
		engine_command_params(p->es, argv[i]);
	}
	snap = snapref_acquire(env->snaps, &ticket);
	engine_mail(p->es, snap, argv[0], command_length(10, argv), auth,
	    (long long)time(NULL), &v);
	snapref_release(env->snaps, ticket);
	msieve_reset(&p->sv, 1);
	if (p->sieve_on) {
		char buf[MAILADDR_TEXT_MAX];
		const struct mailaddr *sa = engine_sender_address(p->es);

		/* the scripts in force now hold for this transaction */
		p->sv.rules = sieve_rules_ref_get(env->sieve);
		p->sv.from = xstrdup(sa != NULL ? mailaddr_format(sa, buf) : "");
		/* Postfix sends {auth_authen} at MAIL only */
		if (auth != NULL && *auth != '\0')
			p->sv.auth = xstrdup(auth);
	}
	return answer(ctx, p, STAGE_MAIL, &v, argv[0]);
}

static sfsistat
cb_envrcpt(SMFICTX *ctx, char **argv)
{
	struct mpriv *p = priv_of(ctx);
	unsigned ticket;
	const struct snapshot *snap;
	struct verdict v;

	if (argv[0] == NULL)
		return SMFIS_CONTINUE;
	for (int i = 1; argv[i] != NULL; i++)
		engine_command_params(p->es, argv[i]);
	snap = snapref_acquire(env->snaps, &ticket);
	engine_rcpt(p->es, snap, argv[0], command_length(8, argv), (long long)time(NULL), &v);
	snapref_release(env->snaps, ticket);
	if (v.action == VERDICT_CONTINUE) {
		sfsistat rc;

		if (sieve_rcpt(ctx, p, argv[0], &rc))
			return rc;
	}
	return answer(ctx, p, STAGE_RCPT, &v, argv[0]);
}

static sfsistat
cb_data(SMFICTX *ctx)
{
	(void)ctx;
	return SMFIS_CONTINUE;
}

static sfsistat
cb_header(SMFICTX *ctx, char *name, char *value)
{
	struct mpriv *p = priv_of(ctx);
	struct verdict v;

	engine_header(p->es, name, &v);
	if (p->sieve_on && p->sv.rules != NULL)
		msieve_header(&p->sv, name, value);
	return (p->proto & SMFIP_NR_HDR) ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat
cb_body(SMFICTX *ctx, unsigned char *b, size_t len)
{
	struct mpriv *p = priv_of(ctx);

	if (p->sieve_body && p->sv.rules != NULL)
		msieve_body(&p->sv, b, len);
	return (p->proto & SMFIP_NR_BODY) ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat
cb_eom(SMFICTX *ctx)
{
	struct mpriv *p = priv_of(ctx);
	struct verdict v;
	sfsistat rc;

	note_qid(ctx, p);
	engine_eom(p->es, &v);
	if ((v.action != VERDICT_CONTINUE && v.action != VERDICT_ACCEPT) ||
	    !sieve_eom(ctx, p, &rc))
		rc = answer(ctx, p, STAGE_EOM, &v, NULL);
	msieve_reset(&p->sv, 1);
	if (rc == SMFIS_CONTINUE || rc == SMFIS_ACCEPT)
		stats_add("messages_total{door=\"milter\",route=\"mta\"}", 1);
	p->qid[0] = '\0';
	return rc;
}

static sfsistat
cb_abort(SMFICTX *ctx)
{
	struct mpriv *p = smfi_getpriv(ctx);

	if (p != NULL) {
		engine_abort(p->es);
		msieve_reset(&p->sv, 1);
		p->qid[0] = '\0';
	}
	return SMFIS_CONTINUE;
}

static sfsistat
cb_close(SMFICTX *ctx)
{
	struct mpriv *p = smfi_getpriv(ctx);

	if (p != NULL) {
		msieve_reset(&p->sv, 0);
		engine_session_free(&p->es);
		mpol_release(&p->mp);
		free(p);
		smfi_setpriv(ctx, NULL);
	}
	return SMFIS_CONTINUE;
}

static struct smfiDesc desc = {
	.xxfi_name = "portcullis",
	.xxfi_version = SMFI_VERSION,
	.xxfi_flags = SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_ADDRCPT | SMFIF_DELRCPT |
	    SMFIF_QUARANTINE,
	.xxfi_connect = cb_connect,
	.xxfi_helo = cb_helo,
	.xxfi_envfrom = cb_envfrom,
	.xxfi_envrcpt = cb_envrcpt,
	.xxfi_header = cb_header,
	.xxfi_eoh = NULL,
	.xxfi_body = cb_body,
	.xxfi_eom = cb_eom,
	.xxfi_abort = cb_abort,
	.xxfi_close = cb_close,
	.xxfi_unknown = NULL,
	.xxfi_data = cb_data,
	.xxfi_negotiate = cb_negotiate,
};

/* remember where we listen, as a socket address we can connect to */
static void
note_listen_address(const char *spec)
{
	const char *at = strchr(spec, '@');

	memset(&listen_sa, 0, sizeof(listen_sa));
	listen_salen = 0;
	if (strncmp(spec, "unix:", 5) == 0 || strncmp(spec, "local:", 6) == 0) {
		struct sockaddr_un *sun = (struct sockaddr_un *)&listen_sa;
		const char *path = strchr(spec, ':') + 1;

		if (strlen(path) < sizeof(sun->sun_path)) {
			sun->sun_family = AF_UNIX;
			strcpy(sun->sun_path, path);
			listen_salen = sizeof(*sun);
		}
	} else if (at != NULL && strncmp(spec, "inet6:", 6) == 0) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&listen_sa;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)atoi(spec + 6));
		if (inet_pton(AF_INET6, at + 1, &sin6->sin6_addr) == 1)
			listen_salen = sizeof(*sin6);
		if (IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr))
			sin6->sin6_addr = in6addr_loopback;
	} else if (at != NULL) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&listen_sa;

		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)atoi(spec + 5));
		if (inet_pton(AF_INET, at + 1, &sin->sin_addr) == 1)
			listen_salen = sizeof(*sin);
		if (sin->sin_addr.s_addr == htonl(INADDR_ANY))
			sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	}
}

void
milter_poke_if_stopping(void)
{
	int fd;

	/*
	 * libmilter notices a stop request only when its listener's poll()
	 * returns, up to several seconds later. A connection of our own wakes
	 * it at once, so SIGTERM ends the daemon promptly.
	 */
	if (mi_stop() == 0 || listen_salen == 0 || atomic_exchange(&poked, 1))
		return;
	fd = socket(listen_sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	(void)connect(fd, (struct sockaddr *)&listen_sa, listen_salen);
	close(fd);
}

int
milter_setup(const char *listen, const struct milter_env *e, const char **error_r)
{
	static char spec[512];
	static char err[600];

	if (milter_listen_spec(listen, spec, sizeof(spec), error_r) < 0)
		return -1;
	env = e;
	if (mpol_cur == NULL) {	/* the daemon's policy: never ours to free */
		mpol_cur = xcalloc(1, sizeof(*mpol_cur));
		mpol_cur->pol = (struct policy *)e->pol;
		mpol_cur->refs = 1;
	}
	note_listen_address(spec);
	if (smfi_register(desc) != MI_SUCCESS) {
		*error_r = "smfi_register failed";
		return -1;
	}
	if (smfi_setconn(spec) != MI_SUCCESS) {
		*error_r = "smfi_setconn failed";
		return -1;
	}
	smfi_setbacklog(256);
	/* bind now, so a busy port is an error at start-up, not later */
	if (smfi_opensocket(1) != MI_SUCCESS) {
		snprintf(err, sizeof(err),
		    "milter_listen = %.200s: cannot listen (address in use, or bad address?)",
		    listen);
		*error_r = err;
		return -1;
	}
	return 0;
}

int
milter_run(void)
{
	return smfi_main() == MI_SUCCESS ? 0 : -1;
}

void
milter_stop(void)
{
	smfi_stop();
}
