/*
 * common/linereader and common/dotstuff, fed whole and byte by byte: the
 * same lines, the same message bytes, the same flags whatever the pieces.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dotstuff.h"
#include "common/linereader.h"
#include "tests/unit/unit.h"

/* ---- linereader ---- */

struct lcase {
	const char *name;
	const char *in;
	size_t inlen;		/* 0: strlen(in) */
	size_t max;
	const char *want;	/* lines as "text/flags|...": flags C crlf, L bare LF, O overflow, N nul */
};

static const struct lcase lcases[] = {
	{ "one CRLF line", "NOOP\r\n", 0, 64, "NOOP/C|" },
	{ "bare LF reported", "NOOP\n", 0, 64, "NOOP/L|" },
	{ "two lines and a partial", "A\r\nB\nC", 0, 64, "A/C|B/L|" },
	{ "empty lines", "\r\n\n", 0, 64, "/C|/L|" },
	{ "CR inside a line is kept", "a\rb\r\n", 0, 64, "a\rb/C|" },
	{ "exactly the cap (CR counts)", "abcd\r\n", 0, 5, "abcd/C|" },
	{ "one past the cap: overflow, then in step", "abcde\r\nok\r\n", 0, 5, "/O|ok/C|" },
	{ "a long line skipped to its end", "0123456789012345678901234567890123456789\r\nx\r\n", 0, 8,
	  "/O|x/C|" },
	{ "NUL byte reported", "NO\0OP\r\n", 7, 64, "NO/CN|" },
};

/* run one case with pieces of `step` bytes (0: all at once) */
static void
run_lines(const struct lcase *c, size_t step, char *got, size_t gotcap)
{
	struct linereader lr;
	size_t len = c->inlen ? c->inlen : strlen(c->in), off = 0;

	got[0] = '\0';
	linereader_init(&lr, c->max);
	while (off < len) {
		size_t n = step ? (len - off < step ? len - off : step) : len - off;
		size_t pos = 0;

		while (pos < n) {
			struct linereader_line ln;
			size_t used;

			if (linereader_feed(&lr, c->in + off + pos, n - pos, &used, &ln)) {
				char one[256];

				/* on overflow only the flag is compared: what was held
				 * before the cap depends on the pieces */
				snprintf(one, sizeof(one), "%s/%s%s%s%s|", ln.overflow ? "" : ln.text,
				    ln.crlf ? "C" : "", !ln.crlf && !ln.overflow ? "L" : "",
				    ln.overflow ? "O" : "", ln.nul ? "N" : "");
				strncat(got, one, gotcap - strlen(got) - 1);
			}
			pos += used;
			CU_ASSERT_FATAL(used > 0);
		}
		off += n;
	}
	linereader_deinit(&lr);
}

static void
test_linereader(void)
{
	for (size_t i = 0; i < sizeof(lcases) / sizeof(lcases[0]); i++) {
		size_t steps[] = { 0, 1, 2, 3 };

		for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
			char got[1024];

			run_lines(&lcases[i], steps[k], got, sizeof(got));
			if (strcmp(got, lcases[i].want) != 0) {
				fprintf(stderr, "\n  %s (pieces of %zu): \"%s\", want \"%s\"\n",
				    lcases[i].name, steps[k], got, lcases[i].want);
				CU_FAIL("linereader");
			}
		}
	}
}

/* ---- dotstuff ---- */

struct buf {
	char p[4096];
	size_t n;
};

static void
put(void *arg, const char *p, size_t n)
{
	struct buf *b = arg;

	CU_ASSERT_FATAL(n > 0 && b->n + n <= sizeof(b->p));
	memcpy(b->p + b->n, p, n);
	b->n += n;
}

struct dcase {
	const char *name;
	const char *in;		/* DATA as sent */
	int normalise;
	const char *want;	/* message bytes; NULL: no end seen */
	int bare;
	size_t rest;		/* bytes left after the final dot */
};

static const struct dcase dcases[] = {
	{ "plain", "a\r\nb\r\n.\r\n", 0, "a\r\nb\r\n", 0, 0 },
	{ "empty message", ".\r\n", 0, "", 0, 0 },
	{ "dot-stuffing removed", "..x\r\n..\r\n.\r\n", 0, ".x\r\n.\r\n", 0, 0 },
	{ "bytes after the end are left", "x\r\n.\r\nQUIT\r\n", 0, "x\r\n", 0, 6 },
	{ "bare LF noted, kept", "a\nb\r\n.\r\n", 0, "a\nb\r\n", 1, 0 },
	{ "bare LF normalised", "a\nb\r\n.\r\n", 1, "a\r\nb\r\n", 1, 0 },
	{ "bare CR normalised", "a\rb\r\n.\r\n", 1, "a\r\nb\r\n", 1, 0 },
	{ "<LF>.<LF> ends nothing", "a\n.\nb\r\n.\r\n", 0, "a\n.\nb\r\n", 1, 0 },
	{ "<CR><LF>.<LF> ends nothing", "a\r\n.\nb\r\n.\r\n", 0, "a\r\n.\nb\r\n", 1, 0 },
	{ "<CR><LF>.<CR>x ends nothing", "a\r\n.\rx\r\n.\r\n", 1, "a\r\n.\r\nx\r\n", 1, 0 },
	{ "<LF>.. is stuffing too", "a\n..b\r\n.\r\n", 0, "a\n.b\r\n", 1, 0 },
	{ "no end yet", "a\r\n.", 0, NULL, 0, 0 },
	{ "runs across lines stop at a dot, an empty line, the end",
	  "ab\r\ncd\r\n\r\n.e\r\nf\r\ng\r\n.\r\nh", 0, "ab\r\ncd\r\n\r\ne\r\nf\r\ng\r\n", 0, 1 },
};

static void
run_data(const struct dcase *c, size_t step, struct buf *b, struct dotunstuff *u, size_t *used_r)
{
	size_t len = strlen(c->in), off = 0;

	b->n = 0;
	dotunstuff_init(u, c->normalise);
	while (off < len && !u->done) {
		size_t n = step ? (len - off < step ? len - off : step) : len - off;

		off += dotunstuff_feed(u, c->in + off, n, (size_t)-1, put, b);
	}
	*used_r = off;
}

static void
test_dotunstuff(void)
{
	for (size_t i = 0; i < sizeof(dcases) / sizeof(dcases[0]); i++) {
		const struct dcase *c = &dcases[i];

		for (size_t step = 0; step <= 3; step++) {
			struct buf b;
			struct dotunstuff u;
			size_t used;

			run_data(c, step, &b, &u, &used);
			if (c->want == NULL ? u.done : (!u.done || b.n != strlen(c->want) ||
			    memcmp(b.p, c->want, b.n) != 0 || u.bare != c->bare ||
			    strlen(c->in) - used != c->rest)) {
				fprintf(stderr, "\n  %s (pieces of %zu): \"%.*s\" done=%d bare=%d rest=%zu\n",
				    c->name, step, (int)b.n, b.p, u.done, u.bare, strlen(c->in) - used);
				CU_FAIL("dotunstuff");
			}
		}
	}
}

/* a room of r octets: no more than r + 3 go out before the scanner stops */
static void
test_dotunstuff_room(void)
{
	const char *in = "0123456789\r\n0123456789\r\n.\r\n";
	struct dotunstuff u;
	struct buf b = { .n = 0 };
	size_t off = 0, calls = 0;

	dotunstuff_init(&u, 0);
	while (!u.done && calls++ < 100) {
		size_t before = b.n;
		size_t used = dotunstuff_feed(&u, in + off, strlen(in) - off, 4, put, &b);

		CU_ASSERT(b.n - before <= 4 + 3);
		off += used;
	}
	CU_ASSERT(u.done);
	CU_ASSERT(b.n == 24 && memcmp(b.p, "0123456789\r\n0123456789\r\n", 24) == 0);
	/* room 0 at the final dot: it is still taken */
	dotunstuff_init(&u, 0);
	CU_ASSERT(dotunstuff_feed(&u, ".\r\n", 3, 0, put, &b) == 3);
	CU_ASSERT(u.done);
	dotunstuff_init(&u, 0);
	CU_ASSERT(dotunstuff_feed(&u, "x\r\n", 3, 0, put, &b) == 0);
}

/* stuff then unstuff gives the message back, whatever the pieces */
static void
test_dotstuff_round_trip(void)
{
	static const char *msgs[] = {
		"", "a\r\n", ".\r\n", "..\r\n", ".a\r\n.b\r\n", "x\r\n.\r\n.\r\n", "a\r\n\r\n.\r\n",
		"Subject: .\r\n\r\n.hidden\r\n",
	};

	for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++) {
		for (size_t step = 1; step <= 4; step++) {
			struct buf st = { .n = 0 }, back = { .n = 0 };
			struct dotunstuff u;
			size_t len = strlen(msgs[i]);
			int bol = 1;

			for (size_t off = 0; off < len; off += step)
				dotstuff(&bol, msgs[i] + off, len - off < step ? len - off : step, put, &st);
			put(&st, ".\r\n", 3);
			dotunstuff_init(&u, 0);
			CU_ASSERT(dotunstuff_feed(&u, st.p, st.n, (size_t)-1, put, &back) == st.n);
			CU_ASSERT(u.done && !u.bare);
			if (back.n != len || memcmp(back.p, msgs[i], len) != 0) {
				fprintf(stderr, "\n  round trip of \"%s\" (pieces of %zu) gave \"%.*s\"\n",
				    msgs[i], step, (int)back.n, back.p);
				CU_FAIL("dotstuff round trip");
			}
		}
	}
}

/* ---- header names ---- */

static void
name_put(void *arg, const char *name)
{
	struct buf *b = arg;

	put(b, name, strlen(name));
	put(b, ",", 1);
}

static void
test_hdrnames(void)
{
	static const struct { const char *in, *want; } t[] = {
		{ "Subject: x\r\nFrom: y\r\n\r\nTo: body\r\n", "Subject,From," },
		{ "A: 1\r\n folded: no\r\nB:2\r\n\r\n", "A,B," },
		{ "no colon line\r\nC: 3\r\n\r\n", "C," },
		{ "\r\nD: body\r\n", "" },
		{ ": empty name\r\nE: 5\r\n\r\n", "E," },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		for (size_t step = 1; step <= 2; step++) {
			struct hdrnames h;
			struct buf b = { .n = 0 };
			size_t len = strlen(t[i].in);

			hdrnames_init(&h);
			for (size_t off = 0; off < len; off += step)
				hdrnames_feed(&h, t[i].in + off, len - off < step ? len - off : step,
				    name_put, &b);
			if (b.n != strlen(t[i].want) || memcmp(b.p, t[i].want, b.n) != 0) {
				fprintf(stderr, "\n  \"%s\" (pieces of %zu): \"%.*s\"\n", t[i].in, step,
				    (int)b.n, b.p);
				CU_FAIL("hdrnames");
			}
		}
	}
}

static CU_TestInfo tests[] = {
	{ "line reader, whole and byte by byte", test_linereader },
	{ "DATA unstuffing, whole and byte by byte", test_dotunstuff },
	{ "DATA unstuffing stops at its room", test_dotunstuff_room },
	{ "dot-stuffing round trip", test_dotstuff_round_trip },
	{ "header names as they go by", test_hdrnames },
	CU_TEST_INFO_NULL,
};

void
test_dotstuff_register(void)
{
	unit_suite("dotstuff and linereader", tests);
}
