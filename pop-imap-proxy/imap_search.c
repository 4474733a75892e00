/*
 * imap_search: a SEARCH program against one message (see imap_search.h).
 *
 *   imap_search_charset_check   UTF-8, US-ASCII or none; else [BADCHARSET]
 *   imap_search_match           evaluate the program (AND/OR/NOT trees)
 *   imap_search_needs_file      does it read the message? (header/body keys)
 *   imap_search_needs_date      does it need the internal date?
 *
 * Keys are evaluated cheapest first within an AND, so a failing flag test
 * never opens the file; the file (and the internal date) are asked for
 * through the caller's accessors at most once per match. String keys follow
 * Dovecot: both sides case-folded and decomposed (GLib's casefold + NFKD,
 * close to Dovecot's titlecase decomposition), a substring match; HEADER
 * with an empty value tests that the field exists; FROM/TO/CC/BCC match the
 * addresses as Dovecot rewrites them; SUBJECT with whitespace runs as one
 * space. BEFORE/ON/SINCE compare the internal date in the server's time
 * zone, SENT* the Date: header's own date (no or bad Date: is the epoch,
 * as Dovecot has it). Pure functions; never logs message bytes.
 */
#include "pop-imap-proxy/imap_search.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <glib.h>

#include "common/xmalloc.h"
#include "pop-imap-proxy/imap_mime.h"
#include "pop-imap-proxy/imap_parser.h"
#include "storage-adapter/mailstore.h"

struct eval {
	const struct imap_search_input *in;
	struct imap_mime *m;
	int m_tried;
	time_t date;
	int date_tried, date_ok;
	int failed;
	const char *error;
};

int
imap_search_charset_check(const char *charset, const char **error_r)
{
	if (charset == NULL || strcasecmp(charset, "UTF-8") == 0 ||
	    strcasecmp(charset, "US-ASCII") == 0)
		return 0;
	*error_r = "[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset";
	return -1;
}

/* case-folded, decomposed UTF-8 (invalid bytes replaced); free() it */
static char *
normalize(const char *s, size_t len)
{
	char *nonul = NULL;

	if (memchr(s, '\0', len) != NULL) {
		/* a NUL matches nothing (and would end GLib's strings) */
		nonul = xmalloc(len);
		for (size_t i = 0; i < len; i++)
			nonul[i] = s[i] ? s[i] : '\x01';
		s = nonul;
	}
	char *valid = g_utf8_make_valid(s, (gssize)len);
	free(nonul);
	char *fold = g_utf8_casefold(valid, -1);
	char *norm = g_utf8_normalize(fold, -1, G_NORMALIZE_NFKD);
	char *r = xstrdup(norm ? norm : fold);

	g_free(norm);
	g_free(fold);
	g_free(valid);
	return r;
}

static int
contains(const char *hay, const char *key_norm)
{
	char *h = normalize(hay, strlen(hay));
	int r = strstr(h, key_norm) != NULL;

	free(h);
	return r;
}

static struct imap_mime *
get_msg(struct eval *ev)
{
	if (!ev->m_tried) {
		ev->m_tried = 1;
		if (ev->in->open == NULL || ev->in->open(ev->in->ctx, &ev->m) < 0) {
			ev->m = NULL;
			ev->failed = 1;
			ev->error = "Message could not be read";
		}
	}
	return ev->m;
}

static int
get_date(struct eval *ev, time_t *t)
{
	if (!ev->date_tried) {
		ev->date_tried = 1;
		ev->date_ok = ev->in->date != NULL && ev->in->date(ev->in->ctx, &ev->date) == 0;
		if (!ev->date_ok) {
			ev->failed = 1;
			ev->error = "Internal date could not be read";
		}
	}
	*t = ev->date;
	return ev->date_ok ? 0 : -1;
}

/* midnight UTC of the search date */
static time_t
search_day(const struct imap_search *k)
{
	struct tm tm;

	memset(&tm, 0, sizeof(tm));
	tm.tm_year = k->year - 1900;
	tm.tm_mon = k->month - 1;
	tm.tm_mday = k->day;
	return timegm(&tm);
}

static int
date_cmp(enum imap_search_key key, time_t date, time_t day)
{
	switch (key) {
	case IMAP_SK_BEFORE:
	case IMAP_SK_SENTBEFORE:
		return date < day;
	case IMAP_SK_ON:
	case IMAP_SK_SENTON:
		return date >= day && date < day + 24 * 3600;
	default:
		return date >= day;
	}
}

struct hdr_match {
	const char *key;	/* normalized; "" = exists */
	int found;
};

static int
hdr_cb(void *ctx, const char *name, const char *value)
{
	struct hdr_match *hm = ctx;

	(void)name;
	if (hm->key[0] == '\0' || contains(value, hm->key)) {
		hm->found = 1;
		return 1;
	}
	return 0;
}

static int
match_header(struct eval *ev, const char *field, const char *value, unsigned flags)
{
	struct imap_mime *m = get_msg(ev);

	if (m == NULL)
		return 0;
	char *key = normalize(value, strlen(value));
	struct hdr_match hm = { key, 0 };
	(void)imap_mime_header_foreach(m, field, flags, hdr_cb, &hm);
	free(key);
	return hm.found;
}

/* a streaming substring search over decoded text */
struct text_match {
	const char *key;
	size_t klen;
	char *tail;		/* the last klen-1 normalized bytes */
	size_t ntail;
	char carry[8];		/* an incomplete UTF-8 sequence */
	size_t ncarry;
	int found;
};

static size_t
utf8_complete_prefix(const unsigned char *s, size_t n)
{
	/* back off an incomplete sequence at the end (at most 3 bytes) */
	for (size_t back = 1; back <= 3 && back <= n; back++) {
		unsigned char c = s[n - back];
		if ((c & 0xc0) == 0x80)
			continue;
		size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
		return need > back ? n - back : n;
	}
	return n;
}

static int
text_cb(void *ctx, int part_start, const char *data, size_t len)
{
	struct text_match *tm = ctx;

	if (part_start) {
		tm->ntail = 0;
		tm->ncarry = 0;
	}
	size_t total = tm->ncarry + len;
	unsigned char *buf = xmalloc(total + 1);
	memcpy(buf, tm->carry, tm->ncarry);
	memcpy(buf + tm->ncarry, data, len);
	size_t ok = utf8_complete_prefix(buf, total);
	tm->ncarry = total - ok;
	memcpy(tm->carry, buf + ok, tm->ncarry);
	char *norm = normalize((const char *)buf, ok);
	free(buf);
	size_t nn = strlen(norm);
	char *hay = xmalloc(tm->ntail + nn + 1);
	memcpy(hay, tm->tail, tm->ntail);
	memcpy(hay + tm->ntail, norm, nn);
	size_t hl = tm->ntail + nn;
	hay[hl] = '\0';
	free(norm);
	if (memmem(hay, hl, tm->key, tm->klen) != NULL)
		tm->found = 1;
	size_t keep = tm->klen > 0 ? tm->klen - 1 : 0;
	if (keep > hl)
		keep = hl;
	memcpy(tm->tail, hay + hl - keep, keep);
	tm->ntail = keep;
	free(hay);
	return tm->found;
}

static int
match_text(struct eval *ev, const char *value, int with_headers)
{
	struct imap_mime *m = get_msg(ev);

	if (m == NULL)
		return 0;
	char *key = normalize(value, strlen(value));
	size_t klen = strlen(key);
	if (klen == 0) {
		free(key);
		return 1;
	}
	struct text_match *tm = xcalloc(1, sizeof(*tm));
	tm->key = key;
	tm->klen = klen;
	tm->tail = xmalloc(klen);	/* the key is in memory already: at most as much again */
	(void)imap_mime_text_foreach(m, with_headers, IMAP_SEARCH_TEXT_MAX, text_cb, tm);
	int found = tm->found;
	free(tm->tail);
	free(tm);
	free(key);
	return found;
}

static int
keyword_set(const struct imap_search_input *in, const char *name)
{
	for (size_t i = 0; i < in->nkeywords && i < 32; i++) {
		if (in->keywords[i] != NULL && strcasecmp(in->keywords[i], name) == 0)
			return (in->msg->keywords >> i) & 1u;
	}
	return 0;
}

/* the cost of a key: 0 facts, 1 the date, 2 the header, 3 the body */
static int
key_cost(const struct imap_search *k)
{
	int c = 0;

	switch (k->key) {
	case IMAP_SK_AND:
	case IMAP_SK_OR:
	case IMAP_SK_NOT:
		for (size_t i = 0; i < k->nchild; i++) {
			int cc = key_cost(&k->child[i]);
			if (cc > c)
				c = cc;
		}
		return c;
	case IMAP_SK_BEFORE:
	case IMAP_SK_ON:
	case IMAP_SK_SINCE:
		return 1;
	case IMAP_SK_BCC:
	case IMAP_SK_CC:
	case IMAP_SK_FROM:
	case IMAP_SK_SUBJECT:
	case IMAP_SK_TO:
	case IMAP_SK_HEADER:
	case IMAP_SK_SENTBEFORE:
	case IMAP_SK_SENTON:
	case IMAP_SK_SENTSINCE:
		return 2;
	case IMAP_SK_BODY:
	case IMAP_SK_TEXT:
		return 3;
	default:
		return 0;
	}
}

static int eval_key(struct eval *ev, const struct imap_search *k, unsigned depth);

static int
eval_and(struct eval *ev, const struct imap_search *k, unsigned depth)
{
	/* cheap keys first: a flag that fails spares the file */
	for (int cost = 0; cost <= 3; cost++) {
		for (size_t i = 0; i < k->nchild; i++) {
			if (key_cost(&k->child[i]) != cost)
				continue;
			if (!eval_key(ev, &k->child[i], depth + 1))
				return 0;
			if (ev->failed)
				return 0;
		}
	}
	return 1;
}

static int
eval_key(struct eval *ev, const struct imap_search *k, unsigned depth)
{
	const struct imap_search_input *in = ev->in;
	const struct mailstore_msg *msg = in->msg;
	unsigned f = msg->flags;
	time_t t;

	if (depth > 64 || ev->failed)
		return 0;
	switch (k->key) {
	case IMAP_SK_AND:
		return eval_and(ev, k, depth);
	case IMAP_SK_OR:
		if (k->nchild < 2)
			return k->nchild == 1 && eval_key(ev, &k->child[0], depth + 1);
		if (key_cost(&k->child[1]) < key_cost(&k->child[0]))
			return eval_key(ev, &k->child[1], depth + 1) ||
			    eval_key(ev, &k->child[0], depth + 1);
		return eval_key(ev, &k->child[0], depth + 1) || eval_key(ev, &k->child[1], depth + 1);
	case IMAP_SK_NOT:
		return k->nchild >= 1 && !eval_key(ev, &k->child[0], depth + 1);
	case IMAP_SK_ALL:
		return 1;
	case IMAP_SK_ANSWERED:
		return (f & MAILSTORE_ANSWERED) != 0;
	case IMAP_SK_DELETED:
		return (f & MAILSTORE_DELETED) != 0;
	case IMAP_SK_DRAFT:
		return (f & MAILSTORE_DRAFT) != 0;
	case IMAP_SK_FLAGGED:
		return (f & MAILSTORE_FLAGGED) != 0;
	case IMAP_SK_SEEN:
		return (f & MAILSTORE_SEEN) != 0;
	case IMAP_SK_UNANSWERED:
		return (f & MAILSTORE_ANSWERED) == 0;
	case IMAP_SK_UNDELETED:
		return (f & MAILSTORE_DELETED) == 0;
	case IMAP_SK_UNDRAFT:
		return (f & MAILSTORE_DRAFT) == 0;
	case IMAP_SK_UNFLAGGED:
		return (f & MAILSTORE_FLAGGED) == 0;
	case IMAP_SK_UNSEEN:
		return (f & MAILSTORE_SEEN) == 0;
	case IMAP_SK_RECENT:
		return msg->recent;
	case IMAP_SK_NEW:
		return msg->recent && (f & MAILSTORE_SEEN) == 0;
	case IMAP_SK_OLD:
		return !msg->recent;
	case IMAP_SK_KEYWORD:
		return k->str != NULL && keyword_set(in, k->str);
	case IMAP_SK_UNKEYWORD:
		return k->str == NULL || !keyword_set(in, k->str);
	case IMAP_SK_LARGER:
		return msg->vsize > k->num;
	case IMAP_SK_SMALLER:
		return msg->vsize < k->num;
	case IMAP_SK_UID:
		if (k->set.saved)
			return in->in_saved;
		return imap_seqset_contains(&k->set, msg->uid, in->max_uid);
	case IMAP_SK_SEQSET:
		if (k->set.saved)
			return in->in_saved;
		return imap_seqset_contains(&k->set, in->seq, in->max_seq);
	case IMAP_SK_BEFORE:
	case IMAP_SK_ON:
	case IMAP_SK_SINCE: {
		if (get_date(ev, &t) < 0)
			return 0;
		struct tm tm;
		localtime_r(&t, &tm);
		return date_cmp(k->key, t + tm.tm_gmtoff, search_day(k));
	}
	case IMAP_SK_SENTBEFORE:
	case IMAP_SK_SENTON:
	case IMAP_SK_SENTSINCE: {
		struct imap_mime *m = get_msg(ev);
		int tz = 0;
		if (m == NULL)
			return 0;
		if (imap_mime_sent_date(m, &t, &tz) < 0) {
			t = 0;
			tz = 0;
		}
		return date_cmp(k->key, t + (time_t)tz * 60, search_day(k));
	}
	case IMAP_SK_FROM:
		return match_header(ev, "From", k->str ? k->str : "", IMAP_MIME_HDR_ADDRESS);
	case IMAP_SK_TO:
		return match_header(ev, "To", k->str ? k->str : "", IMAP_MIME_HDR_ADDRESS);
	case IMAP_SK_CC:
		return match_header(ev, "Cc", k->str ? k->str : "", IMAP_MIME_HDR_ADDRESS);
	case IMAP_SK_BCC:
		return match_header(ev, "Bcc", k->str ? k->str : "", IMAP_MIME_HDR_ADDRESS);
	case IMAP_SK_SUBJECT:
		return match_header(ev, "Subject", k->str ? k->str : "", IMAP_MIME_HDR_COMPRESS);
	case IMAP_SK_HEADER:
		if (k->str == NULL)
			return 0;
		return match_header(ev, k->str, k->str2 ? k->str2 : "", 0);
	case IMAP_SK_BODY:
		return match_text(ev, k->str ? k->str : "", 0);
	case IMAP_SK_TEXT:
		return match_text(ev, k->str ? k->str : "", 1);
	}
	return 0;
}

int
imap_search_match(const struct imap_search *prog, const struct imap_search_input *in,
    int *match_r, const char **error_r)
{
	struct eval ev;

	memset(&ev, 0, sizeof(ev));
	ev.in = in;
	int r = eval_key(&ev, prog, 0);
	if (ev.failed) {
		*error_r = ev.error;
		return -1;
	}
	*match_r = r;
	return 0;
}

static int
needs(const struct imap_search *k, int min_cost)
{
	return key_cost(k) >= min_cost;
}

int
imap_search_needs_file(const struct imap_search *prog)
{
	return needs(prog, 2);
}

int
imap_search_needs_date(const struct imap_search *prog)
{
	if (prog->key == IMAP_SK_BEFORE || prog->key == IMAP_SK_ON || prog->key == IMAP_SK_SINCE)
		return 1;
	if (prog->key == IMAP_SK_AND || prog->key == IMAP_SK_OR || prog->key == IMAP_SK_NOT) {
		for (size_t i = 0; i < prog->nchild; i++)
			if (imap_search_needs_date(&prog->child[i]))
				return 1;
	}
	return 0;
}
