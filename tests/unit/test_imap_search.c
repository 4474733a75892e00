/*
 * imap_search: SEARCH programs (as imap_parser parses them) against four
 * messages with known facts; each row the program and the set of messages
 * it must select (bit i: message i+1). Then the laziness contract: keys on
 * flags, UIDs, sequence numbers and sizes never open the file, date keys
 * only ask for the date, and a file that cannot be read is an error, not
 * a non-match; charsets other than UTF-8/US-ASCII are BADCHARSET.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/xmalloc.h"
#include "pop-imap-proxy/imap_mime.h"
#include "pop-imap-proxy/imap_parser.h"
#include "pop-imap-proxy/imap_search.h"
#include "storage-adapter/mailstore.h"
#include "tests/unit/unit.h"

static const char m1[] =
    "From: \"Alice Example\" <alice@example.com>\r\n"
    "To: Bob <bob@example.org>\r\n"
    "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus   Berlin\r\n"
    "Date: Mon, 7 Dec 2026 23:30:00 -0500\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/mixed; boundary=b\r\n"
    "\r\n"
    "preamble word zebra\r\n"
    "--b\r\n"
    "Content-Type: text/plain; charset=iso-8859-1\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "Caf=E9 cr=E8me, the secret is in the sau=\r\n"
    "ce\r\n"
    "--b\r\n"
    "Content-Type: application/octet-stream\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "aGlkZGVuIGJpbmFyeSB3b3Jk\r\n"
    "--b\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "YmFzZTY0IHRleHQgd29yZA==\r\n"
    "--b--\r\n";
static const char m2[] =
    "From: =?ISO-8859-1?Q?Andr=E9?= <andre@example.net>\n"
    "Cc: Team: carol@example.com, dave@example.com;\n"
    "Subject: plain\n"
    " folded subject\n"
    "X-Custom: Hello Header\n"
    "Date: 1 Dec 2026 10:00:00 +0000\n"
    "\n"
    "Bare LF body with NEEDLE inside.\n";
static const char m3[] = "Subject: no date\r\n\r\nshort\r\n";
static const char m4[] =
    "From: bounce@example.com\r\nTo: x@example.com\r\nDate: not a date\r\n"
    "Content-Type: message/rfc822\r\nMIME-Version: 1.0\r\n\r\n"
    "From: inner@example.com\r\nSubject: inner subject\r\n\r\ninner body text\r\n";

struct fixture {
	const char *data;
	size_t len;
	struct mailstore_msg msg;
	time_t date;
	int opens, dates;
	struct imap_mime *m;
	int fail_open;
};

static const char *const keywords[] = { "$Label1", "Project" };

static struct fixture fx[4];

static void
fixtures(void)
{
	const char *data[4] = { m1, m2, m3, m4 };
	size_t len[4] = { sizeof(m1) - 1, sizeof(m2) - 1, sizeof(m3) - 1, sizeof(m4) - 1 };
	unsigned flags[4] = { MAILSTORE_SEEN | MAILSTORE_ANSWERED, MAILSTORE_FLAGGED, 0,
		MAILSTORE_DELETED | MAILSTORE_DRAFT | MAILSTORE_SEEN };
	uint32_t kw[4] = { 1, 3, 0, 2 };
	/* internal dates: 2026-11-30 12:00, 12-01 00:30, 12-05 23:59:59 UTC, 12-07 */
	time_t dates[4] = { 1796040000, 1796085000, 1796515199, 1796601600 };

	/* the internal-date keys work in the server's zone: make it UTC */
	setenv("TZ", "UTC", 1);
	tzset();
	memset(fx, 0, sizeof(fx));
	for (int i = 0; i < 4; i++) {
		fx[i].data = data[i];
		fx[i].len = len[i];
		fx[i].msg.uid = (uint32_t)(i + 1) * 10;
		fx[i].msg.flags = flags[i];
		fx[i].msg.keywords = kw[i];
		fx[i].msg.size = len[i];
		fx[i].msg.recent = i >= 2;
		struct imap_mime *m = imap_mime_open_mem(data[i], len[i]);
		fx[i].msg.vsize = imap_mime_vsize(m);
		imap_mime_free(&m);
		fx[i].date = dates[i];
	}
}

static int
fx_date(void *ctx, time_t *t)
{
	struct fixture *f = ctx;

	f->dates++;
	*t = f->date;
	return 0;
}

static int
fx_open(void *ctx, struct imap_mime **m_r)
{
	struct fixture *f = ctx;

	f->opens++;
	if (f->fail_open)
		return -1;
	if (f->m == NULL)
		f->m = imap_mime_open_mem(f->data, f->len);
	*m_r = f->m;
	return 0;
}

static int
fx_open_one(void *ctx, struct imap_mime **m_r)
{
	*m_r = ctx;
	return 0;
}

static const struct imap_cmd *
parse(struct imap_parser **pp, const char *prog)
{
	struct imap_parser_limits lim;
	struct imap_event ev;
	char line[8192];
	size_t off = 0, len;

	snprintf(line, sizeof(line), "t SEARCH %s\r\n", prog);
	len = strlen(line);
	imap_parser_limits_default(&lim, 1);
	*pp = imap_parser_new(&lim);
	while (off < len) {
		off += imap_parser_feed(*pp, line + off, len - off, &ev);
		if (ev.type == IMAP_EV_COMMAND)
			return ev.cmd;
		if (ev.type == IMAP_EV_REPLY || ev.type == IMAP_EV_DISCONNECT)
			return NULL;
	}
	return NULL;
}

/* the messages PROG selects, as bits; -1 on an error */
static int
run(const char *prog, int *opens_r, int *dates_r)
{
	struct imap_parser *p;
	const struct imap_cmd *c = parse(&p, prog);
	int mask = 0;

	if (c == NULL) {
		fprintf(stderr, "\nunparsable: %s\n", prog);
		imap_parser_free(&p);
		return -2;
	}
	*opens_r = *dates_r = 0;
	for (int i = 0; i < 4; i++) {
		struct imap_search_input in = {
			.msg = &fx[i].msg, .seq = (uint32_t)i + 1, .max_seq = 4, .max_uid = 40,
			.in_saved = i == 1, .keywords = keywords, .nkeywords = 2,
			.date = fx_date, .open = fx_open, .ctx = &fx[i],
		};
		int match;
		const char *err;
		fx[i].opens = fx[i].dates = 0;
		if (imap_search_match(c->search, &in, &match, &err) < 0) {
			mask = -1;
			break;
		}
		if (match)
			mask |= 1 << i;
		*opens_r += fx[i].opens;
		*dates_r += fx[i].dates;
		CU_ASSERT(fx[i].opens <= 1);
		CU_ASSERT(fx[i].dates <= 1);
		imap_mime_free(&fx[i].m);
	}
	imap_parser_free(&p);
	return mask;
}

static const struct {
	const char *prog;
	int want;	/* bit i: message i+1 */
	int may_open;	/* 0: the file must not be opened */
} rows[] = {
	{ "ALL", 0xf, 0 },
	{ "SEEN", 0x9, 0 },
	{ "UNSEEN", 0x6, 0 },
	{ "ANSWERED", 0x1, 0 },
	{ "FLAGGED UNDELETED", 0x2, 0 },
	{ "DELETED DRAFT", 0x8, 0 },
	{ "UNDRAFT UNANSWERED UNFLAGGED", 0x4, 0 },
	{ "RECENT", 0xc, 0 },
	{ "NEW", 0x4, 0 },
	{ "OLD", 0x3, 0 },
	{ "KEYWORD $Label1", 0x3, 0 },
	{ "KEYWORD project", 0xa, 0 },
	{ "UNKEYWORD Project", 0x5, 0 },
	{ "KEYWORD unknown", 0x0, 0 },
	{ "2:3", 0x6, 0 },
	{ "*", 0x8, 0 },
	{ "3:*", 0xc, 0 },
	{ "UID 20,40", 0xa, 0 },
	{ "UID *", 0x8, 0 },
	{ "UID 15:25", 0x2, 0 },
	{ "$", 0x2, 0 },
	{ "UID $", 0x2, 0 },
	{ "LARGER 200", 0x3, 0 },
	{ "LARGER 1000", 0x0, 0 },
	{ "SMALLER 30", 0x4, 0 },
	{ "NOT (SEEN OR FLAGGED DRAFT)", 0x7, 0 },
	{ "OR SEEN RECENT", 0xd, 0 },
	{ "OR (OR SEEN FLAGGED) (NOT ALL)", 0xb, 0 },
	{ "BEFORE 1-Dec-2026", 0x1, 0 },
	{ "ON 1-Dec-2026", 0x2, 0 },
	{ "ON 5-Dec-2026", 0x4, 0 },
	{ "SINCE 5-Dec-2026", 0xc, 0 },
	{ "SENTON 7-Dec-2026", 0x1, 1 },	/* the header's own date, not UTC */
	{ "SENTBEFORE 2-Dec-2026", 0xe, 1 },	/* no or bad Date: is 1970 */
	{ "SENTSINCE 2-Dec-2026", 0x1, 1 },
	{ "FROM alice", 0x1, 1 },
	{ "FROM \"Alice Example\"", 0x1, 1 },
	{ "FROM {6+}\r\nandr\303\251", 0x2, 1 },
	{ "FROM {6+}\r\nANDR\303\211", 0x2, 1 },
	{ "CC team", 0x2, 1 },
	{ "CC dave@example", 0x2, 1 },
	{ "TO bob", 0x1, 1 },
	{ "BCC x", 0x0, 1 },
	{ "SUBJECT {7+}\r\ngr\303\274\303\237e", 0x1, 1 },
	{ "SUBJECT \"aus Berlin\"", 0x1, 1 },
	{ "SUBJECT \"plain folded\"", 0x2, 1 },	/* folds join without their line end */
	{ "SUBJECT folded", 0x2, 1 },
	{ "SUBJECT \"\"", 0x7, 1 },
	{ "HEADER X-Custom hello", 0x2, 1 },
	{ "HEADER x-custom \"\"", 0x2, 1 },
	{ "HEADER Subject inner", 0x0, 1 },
	{ "BODY needle", 0x2, 1 },
	{ "BODY {5+}\r\ncaf\303\251", 0x1, 1 },
	{ "BODY \"secret is in the sauce\"", 0x1, 1 },
	{ "BODY \"base64 text word\"", 0x1, 1 },
	{ "BODY \"hidden binary\"", 0x0, 1 },
	{ "BODY zebra", 0x0, 1 },
	{ "BODY \"inner body\"", 0x8, 1 },
	{ "BODY \"inner subject\"", 0x0, 1 },
	{ "TEXT \"inner subject\"", 0x8, 1 },
	{ "TEXT \"x-custom: hello\"", 0x2, 1 },
	{ "TEXT short", 0x4, 1 },
	{ "TEXT \"\"", 0xf, 1 },
	{ "CHARSET UTF-8 BODY short", 0x4, 1 },
	{ "SEEN BODY needle", 0x0, 1 },
	{ "OR BODY needle FROM alice", 0x3, 1 },
	{ "NOT NOT NOT NOT NOT NOT NOT NOT FLAGGED", 0x2, 0 },
};

static void
test_table(void)
{
	fixtures();
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		int opens, dates;
		int got = run(rows[i].prog, &opens, &dates);
		if (got != rows[i].want)
			fprintf(stderr, "\n%s: got %#x want %#x\n", rows[i].prog, got, rows[i].want);
		CU_ASSERT_EQUAL(got, rows[i].want);
		if (!rows[i].may_open)
			CU_ASSERT_EQUAL(opens, 0);
	}
}

/* a flag key that fails spares the body key after it; dates never open */
static void
test_laziness(void)
{
	int opens, dates;

	fixtures();
	CU_ASSERT_EQUAL(run("BODY needle FLAGGED", &opens, &dates), 0x2);
	CU_ASSERT_EQUAL(opens, 1);	/* only message 2 is flagged */
	CU_ASSERT_EQUAL(run("SINCE 1-Jan-2000 SEEN", &opens, &dates), 0x9);
	CU_ASSERT_EQUAL(opens, 0);
	CU_ASSERT_EQUAL(dates, 2);	/* only the seen ones */
	CU_ASSERT_EQUAL(run("FROM qqq BODY b TEXT c SUBJECT d", &opens, &dates), 0);
	CU_ASSERT_EQUAL(opens, 4);	/* once per message, whatever the keys */

	struct imap_parser *p;
	const struct imap_cmd *c = parse(&p, "BODY x");
	struct imap_search_input in = {
		.msg = &fx[0].msg, .seq = 1, .max_seq = 4, .max_uid = 40,
		.date = fx_date, .open = fx_open, .ctx = &fx[0],
	};
	int match = 7;
	const char *err = NULL;
	fx[0].fail_open = 1;
	CU_ASSERT_EQUAL(imap_search_match(c->search, &in, &match, &err), -1);
	CU_ASSERT_PTR_NOT_NULL(err);
	CU_ASSERT_EQUAL(match, 7);
	fx[0].fail_open = 0;
	CU_ASSERT(imap_search_needs_file(c->search));
	CU_ASSERT(!imap_search_needs_date(c->search));
	imap_parser_free(&p);
	c = parse(&p, "OR SEEN BEFORE 1-Jan-2020");
	CU_ASSERT(!imap_search_needs_file(c->search));
	CU_ASSERT(imap_search_needs_date(c->search));
	imap_parser_free(&p);
}

/* a key longer than any piece the text comes in still matches across pieces */
static void
test_long_key(void)
{
	size_t n = 150000;
	char *body = xmalloc(n + 64), *prog = xmalloc(4200);
	int len = snprintf(body, 64, "Subject: long\r\n\r\n");
	for (size_t i = 0; i < n; i++)
		body[len + i] = (char)('a' + (i * 7 + i / 26) % 26);
	struct imap_mime *m = imap_mime_open_mem(body, len + n);
	struct mailstore_msg msg = { .uid = 1 };
	struct imap_search_input in = {
		.msg = &msg, .seq = 1, .max_seq = 1, .max_uid = 1, .open = fx_open_one, .ctx = m,
	};
	for (int shift = 0; shift < 2; shift++) {
		/* 4,000 octets from offset 64,000 (spanning the 64 KiB pieces), then one changed */
		snprintf(prog, 64, "BODY {4000+}\r\n");
		size_t pl = strlen(prog);
		memcpy(prog + pl, body + len + 64000, 4000);
		if (shift)
			prog[pl + 3999] = prog[pl + 3999] == 'z' ? 'a' : prog[pl + 3999] + 1;
		prog[pl + 4000] = '\0';
		struct imap_parser *p;
		const struct imap_cmd *c = parse(&p, prog);
		CU_ASSERT_PTR_NOT_NULL_FATAL(c);
		int match;
		const char *err;
		CU_ASSERT_EQUAL(imap_search_match(c->search, &in, &match, &err), 0);
		CU_ASSERT_EQUAL(match, !shift);
		imap_parser_free(&p);
	}
	imap_mime_free(&m);
	free(body);
	free(prog);
}

static void
test_charset(void)
{
	static const struct {
		const char *cs;
		int ok;
	} cs[] = {
		{ NULL, 1 }, { "UTF-8", 1 }, { "utf-8", 1 }, { "US-ASCII", 1 },
		{ "ISO-8859-1", 0 }, { "X-UNKNOWN", 0 }, { "", 0 },
	};
	for (size_t i = 0; i < sizeof(cs) / sizeof(cs[0]); i++) {
		const char *err = NULL;
		int r = imap_search_charset_check(cs[i].cs, &err);
		CU_ASSERT_EQUAL(r, cs[i].ok ? 0 : -1);
		if (!cs[i].ok)
			CU_ASSERT(err != NULL && strncmp(err, "[BADCHARSET", 11) == 0);
	}
}

void
test_imap_search_register(void)
{
	static CU_TestInfo tests[] = {
		{ "every key against four messages (table)", test_table },
		{ "flag keys spare the file, date keys only the date", test_laziness },
		{ "charsets: UTF-8 and US-ASCII, else BADCHARSET", test_charset },
		{ "a 4,000-octet key across the text's pieces", test_long_key },
		{ NULL, NULL },
	};
	unit_suite("imap_search", tests);
}
