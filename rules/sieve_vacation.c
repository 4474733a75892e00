/*
 * sieve_vacation.c - the vacation decision (RFC 5230 + Pigeonhole's
 * rules): whether a vacation action should answer this message, and the
 * reply to send. Sending is the door's job, not this module's.
 *
 *   sieve_vacation_should_reply() / sieve_vacation_reply()  public forms
 *   sv_vacation_reply(run, action, user_email, &from, &to, &text)
 *     1 reply (the three strings are the caller's), 0 no reply
 *
 * Never answers the null sender, system or list senders, auto-submitted,
 * bulk or list mail, or mail not addressed to one of "my" addresses; with a
 * tracking store, answers a sender once per period (:days / :seconds).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "rules/sieve_eval.h"
#include "common/xmalloc.h"

static int addr_in_headers(struct sieve_run *run, const char *addr);

/* the Subject of the reply */
static char *reply_subject(struct sieve_run *run, const struct sieve_action *a,
    const struct sieve_vacation_conf *vc)
{
	const char *v = sv_header_get(run, "subject", 0);
	char *subj;
	if (a->value) {
		subj = xstrdup(a->value);
	} else if (v) {
		char *d = sv_mime_decode(v);
		const char *t = vc->subject_template;
		if (t && *t) {
			size_t cap = strlen(t) + 1, n = 0;
			for (const char *p = t; *p; p++)
				cap += strlen(d);
			subj = xmalloc(cap);
			for (const char *p = t; *p;) {
				if (p[0] == '%' && p[1] == '$') {
					n += (size_t)sprintf(subj + n, "%s", d);
					p += 2;
				} else if (!strncmp(p, "%{subject}", 10)) {
					n += (size_t)sprintf(subj + n, "%s", d);
					p += 10;
				} else {
					subj[n++] = *p++;
				}
			}
			subj[n] = '\0';
		} else {
			subj = xasprintf("Auto: %s", d);
		}
		free(d);
	} else {
		subj = xstrdup(vc->default_subject && *vc->default_subject ? vc->default_subject :
		    "Automated reply");
	}
	/* unfold, and cap the length in code points with an ellipsis */
	char *w = subj;
	for (char *q = subj; *q; q++)
		if (*q != '\r' && *q != '\n')
			*w++ = *q;
	*w = '\0';
	unsigned max = vc->max_subject_codepoints ? vc->max_subject_codepoints : 256, cps = 0;
	for (char *q = subj; *q; q++) {
		if (((unsigned char)*q & 0xc0) == 0x80)
			continue;
		if (++cps > max) {
			*q = '\0';
			char *e = xasprintf("%s\xe2\x80\xa6", subj);
			free(subj);
			return e;
		}
	}
	return subj;
}

static int addr_in_headers(struct sieve_run *run, const char *addr)
{
	static const char *const hs[] = { "to", "cc", "bcc", "resent-to", "resent-cc",
		"resent-bcc", NULL };
	for (const char *const *h = hs; *h; h++) {
		const char *v;
		for (size_t i = 0; (v = sv_header_get(run, *h, i)) != NULL; i++) {
			size_t n;
			char **as = sv_addr_list(v, &n);
			int hit = 0;
			for (size_t k = 0; k < n; k++)
				hit |= strcasecmp(as[k], addr) == 0;
			sieve_strv_free(as, n);
			if (hit)
				return 1;
		}
	}
	return 0;
}

static int system_sender(const char *a)
{
	const char *at = strrchr(a, '@');
	size_t l = at ? (size_t)(at - a) : strlen(a);
	static const char *const sys[] = { "mailer-daemon", "listserv", "majordomo", "owner-",
		"-request", "-bounces", "-owner", NULL };
	if (l == 13 && strncasecmp(a, "mailer-daemon", 13) == 0) return 1;
	if (l == 8 && strncasecmp(a, "listserv", 8) == 0) return 1;
	if (l == 9 && strncasecmp(a, "majordomo", 9) == 0) return 1;
	if (l >= 6 && strncasecmp(a, "owner-", 6) == 0) return 1;
	if (l >= 8 && strncasecmp(a + l - 8, "-request", 8) == 0) return 1;
	if (l >= 6 && strncasecmp(a + l - 6, "-owner", 6) == 0) return 1;
	(void)sys;
	return 0;
}

static char *bare(const char *a)
{
	if (a == NULL)
		return NULL;
	const char *lt = strchr(a, '<');
	if (lt) {
		const char *gt = strchr(lt, '>');
		return gt ? xstrndup(lt + 1, (size_t)(gt - lt - 1)) : xstrdup(lt + 1);
	}
	return xstrdup(a);
}

int sv_vacation_reply(struct sieve_run *run, const struct sieve_action *a,
    const struct sieve_vacation_conf *vc, char **from_r, char **to_r, char **text_r)
{
	static const struct sieve_vacation_conf none;
	if (vc == NULL)
		vc = &none;
	const char *user_email = vc->user_email && *vc->user_email ? vc->user_email : NULL;
	const struct sieve_msg *m = run->msg;
	char *sender = bare(m->env_from);
	int ret = 0;
	char *me = NULL;
	if (sender == NULL || sender[0] == '\0' || system_sender(sender))
		goto out;
	const char *v;
	if ((v = sv_header_get(run, "auto-submitted", 0)) && strncasecmp(v, "no", 2) != 0)
		goto out;
	if ((v = sv_header_get(run, "precedence", 0)) && (!strncasecmp(v, "bulk", 4) ||
	    !strncasecmp(v, "list", 4) || !strncasecmp(v, "junk", 4)))
		goto out;
	if ((v = sv_header_get(run, "x-auto-response-suppress", 0)) &&
	    (strcasestr(v, "all") || strcasestr(v, "oof")))
		goto out;
	static const char *const lists[] = { "list-id", "list-owner", "list-subscribe",
		"list-post", "list-unsubscribe", "list-help", "list-archive", NULL };
	for (const char *const *l = lists; *l; l++)
		if (sv_header_get(run, *l, 0))
			goto out;
	/* mail from myself is not answered */
	me = bare(m->env_orig_to ? m->env_orig_to : m->env_to);
	char *rcpt = bare(m->env_to);
	if ((rcpt && !strcasecmp(rcpt, sender)) ||
	    (user_email && !strcasecmp(user_email, sender))) {
		free(rcpt);
		goto out;
	}
	for (size_t i = 0; i < a->naddresses; i++)
		if (!strcasecmp(a->addresses[i], sender)) {
			free(rcpt);
			goto out;
		}
	/* it must have been sent to one of my addresses; the one found answers */
	const char *found = NULL;
	if (rcpt && addr_in_headers(run, rcpt))
		found = rcpt;
	else if (vc->use_original_recipient && me && addr_in_headers(run, me))
		found = me;
	else if (user_email && addr_in_headers(run, user_email))
		found = user_email;
	for (size_t i = 0; i < a->naddresses && !found; i++)
		if (addr_in_headers(run, a->addresses[i]))
			found = a->addresses[i];
	if (!found && !vc->dont_check_recipient) {
		free(rcpt);
		goto out;
	}
	const char *from = a->from ? a->from : found ? found : user_email ? user_email :
	    rcpt ? rcpt : me;
	/* one reply per sender and handle within the period (RFC 5230 4.2):
	 * the handle defaults to the reason, :subject and :from, as Pigeonhole's */
	if (vc->track) {
		char *key = a->handle ? xasprintf("vacation\n%s\n%s", a->handle, sender) :
		    xasprintf("vacation\n%s%s%s%s\n%s", a->target, a->value ? a->value : "",
		    a->from ? a->from : "<default-from>", a->mime ? "<MIME>" : "<NO-MIME>", sender);
		for (char *k = key; *k; k++)
			*k = (char)tolower((unsigned char)*k);
		int seen = vc->track->check(vc->track->ctx, key, strlen(key));
		if (!seen)
			vc->track->mark(vc->track->ctx, key, strlen(key), a->seconds);
		free(key);
		if (seen) {
			free(rcpt);
			goto out;
		}
	}
	/* To: the original From: when it names the sender, else the sender */
	char *to_hdr = NULL;
	static const char *const who[] = { "from", "sender", "resent-from", "resent-sender",
		"reply-to", NULL };
	for (const char *const *h = who; *h && !to_hdr; h++)
		if ((v = sv_header_get(run, *h, 0))) {
			size_t n;
			char **as = sv_addr_list(v, &n);
			if (n == 1 && !strcasecmp(as[0], sender))
				to_hdr = xstrdup(v);
			sieve_strv_free(as, n);
		}
	if (!to_hdr && vc->to_header_ignore_envelope) {
		if ((v = sv_header_get(run, "sender", 0)) || (v = sv_header_get(run, "from", 0)))
			to_hdr = xstrdup(v);
	}
	if (!to_hdr)
		to_hdr = xasprintf("<%s>", sender);
	char *subj = reply_subject(run, a, vc);
	const char *mid = sv_header_get(run, "message-id", 0);
	const char *refs = sv_header_get(run, "references", 0);
	char *refl = mid ? xasprintf("In-Reply-To: %s\r\nReferences: %s%s%s\r\n", mid,
	    refs ? refs : "", refs ? " " : "", mid) : xstrdup("");
	*text_r = xasprintf("From: %s\r\nTo: %s\r\nSubject: %s\r\n%sAuto-Submitted: auto-replied "
	    "(vacation)\r\nPrecedence: bulk\r\nMIME-Version: 1.0\r\n%s\r\n%s%s",
	    strchr(from, '<') ? from : from, to_hdr, subj, refl,
	    a->mime ? "" : "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
	    a->target, a->mime ? "" : "\r\n");
	*from_r = xstrdup(vc->send_from_recipient && rcpt ? rcpt : "");
	*to_r = xstrdup(sender);
	free(refl);
	free(subj);
	free(to_hdr);
	free(rcpt);
	ret = 1;
out:
	free(sender);
	free(me);
	return ret;
}

int sieve_vacation_reply(const struct sieve_msg *m, const struct sieve_action *a,
    const struct sieve_vacation_conf *vc, char **from_r, char **to_r, char **text_r)
{
	struct sieve_run run;
	memset(&run, 0, sizeof(run));
	run.msg = m;
	return sv_vacation_reply(&run, a, vc, from_r, to_r, text_r);
}

int sieve_vacation_should_reply(const struct sieve_msg *m, const struct sieve_action *a,
    const struct sieve_vacation_conf *vc)
{
	char *f, *t, *x;
	int r = sieve_vacation_reply(m, a, vc, &f, &t, &x);
	if (r == 1) {
		free(f);
		free(t);
		free(x);
	}
	return r;
}
