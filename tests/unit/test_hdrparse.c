/*
 * test_hdrparse - the header-section parser, table-driven: each message is
 * fed whole and then byte by byte, and must give the same fields, the same
 * body offset and the same "ended without an empty line" either way.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/hdrparse.h"
#include "common/xmalloc.h"
#include "tests/unit/unit.h"

struct got {
	char text[4096];	/* "name=value|" per field */
	int ntrunc;
	int stop_after;		/* stop with 7 at this field (1-based); 0: never */
	int n;
};

static int
collect(void *arg, const struct hdr_field *f)
{
	struct got *g = arg;
	size_t used = strlen(g->text);

	g->n++;
	if (f->truncated)
		g->ntrunc++;
	if (f->value_len < 200)
		snprintf(g->text + used, sizeof(g->text) - used, "%s=%s|", f->name, f->value);
	else
		snprintf(g->text + used, sizeof(g->text) - used, "%s=<%zu>|", f->name, f->value_len);
	return g->stop_after == g->n ? 7 : 0;
}

static const struct {
	const char *name, *msg, *fields;
	long body_off;		/* -1: not done before finish */
	int no_blank;
} rows[] = {
	{ "two fields, CRLF", "From: a@b\r\nTo: c@d\r\n\r\nbody\r\n", "From=a@b|To=c@d|", 22, 0 },
	{ "bare LF line ends", "From: a@b\nTo: c@d\n\nbody\n", "From=a@b|To=c@d|", 19, 0 },
	{ "a fold keeps its WSP, loses its CRLF", "Subject: one\r\n two\r\n\tthree\r\n\r\n",
	  "Subject=one two\tthree|", 30, 0 },
	{ "no space after the colon", "X-A:b\r\n\r\n", "X-A=b|", 9, 0 },
	{ "empty value", "X-Empty:\r\nX-B: c\r\n\r\n", "X-Empty=|X-B=c|", 20, 0 },
	{ "value that is only a fold", "X-F:\r\n  folded\r\n\r\n", "X-F=folded|", 18, 0 },
	{ "WSP before the colon (obs-syntax)", "Subject : hi\r\n\r\n", "Subject=hi|", 16, 0 },
	{ "a line without a colon opens the body", "From: a\r\nnot a header\r\nTo: x\r\n",
	  "From=a|", 9, 1 },
	{ "a leading fold opens the body", " From: a\r\n\r\n", "", 0, 1 },
	{ "a space inside the name: body", "Fr om: a\r\n\r\n", "", 0, 1 },
	{ "8-bit in a name: body", "Fr\xc3\xb6m: a\r\n\r\n", "", 0, 1 },
	{ "the empty line first: no headers", "\r\nbody", "", 2, 0 },
	{ "colon in the value", "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n",
	  "Date=Mon, 1 Jan 2024 10:00:00 +0000|", 40, 0 },
	{ "all header, no empty line", "From: a\r\nTo: b", "From=a|To=b|", -1, 1 },
	{ "CR alone inside a value stays", "X: a\rb\r\n\r\n", "X=a\rb|", 10, 0 },
};

static void
run_row(size_t r, int piecewise)
{
	struct got g;
	struct hdrparse *hp;
	const char *m = rows[r].msg;
	size_t len = strlen(m);
	int stop;

	memset(&g, 0, sizeof(g));
	hp = hdrparse_new(collect, &g);
	hdrparse_reset(hp);
	if (piecewise) {
		for (size_t i = 0; i < len && !hdrparse_done(hp); i++)
			CU_ASSERT(hdrparse_feed(hp, m + i, 1, &stop) >= 0);
	} else {
		CU_ASSERT(hdrparse_feed(hp, m, len, &stop) >= 0);
	}
	if (rows[r].body_off < 0) {
		CU_ASSERT(!hdrparse_done(hp));
		CU_ASSERT(hdrparse_finish(hp, &stop) == 0);
		CU_ASSERT_EQUAL(hdrparse_body_offset(hp), len);
	} else {
		CU_ASSERT(hdrparse_done(hp));
		if (hdrparse_body_offset(hp) != (unsigned long long)rows[r].body_off) {
			fprintf(stderr, "%s: body at %llu, want %ld\n", rows[r].name,
			    hdrparse_body_offset(hp), rows[r].body_off);
			CU_FAIL(rows[r].name);
		}
	}
	if (strcmp(g.text, rows[r].fields) != 0) {
		fprintf(stderr, "%s (%s): got \"%s\"\n", rows[r].name, piecewise ? "bytewise" : "whole",
		    g.text);
		CU_FAIL(rows[r].name);
	}
	CU_ASSERT_EQUAL(hdrparse_ended_without_blank_line(hp), rows[r].no_blank);
	hdrparse_free(&hp);
}

static void
test_rows(void)
{
	for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
		run_row(r, 0);
		run_row(r, 1);
	}
}

/* 1 MiB of folds in one field: cut at HDR_FIELD_MAX, flagged, the next field intact */
static void
test_huge_field_is_cut_not_grown(void)
{
	size_t n = 1 << 20;
	char *m = xmalloc(n + 64);
	struct got g;
	struct hdrparse *hp;
	int stop;
	size_t k = 0;

	k += (size_t)sprintf(m, "X-Big: ");
	while (k < n) {
		memcpy(m + k, "aaaaaaa\r\n ", 10);
		k += 10;
	}
	k += (size_t)sprintf(m + k, "\r\nTo: b\r\n\r\n");
	memset(&g, 0, sizeof(g));
	hp = hdrparse_new(collect, &g);
	hdrparse_reset(hp);
	CU_ASSERT(hdrparse_feed(hp, m, k, &stop) >= 0);
	CU_ASSERT(hdrparse_done(hp));
	CU_ASSERT_EQUAL(g.ntrunc, 1);
	CU_ASSERT(strstr(g.text, "|To=b|") != NULL);
	hdrparse_free(&hp);
	free(m);
}

/* a long unfolded value is copied a line at a time: fed whole or in pieces
 * of 1,000 bytes it is cut at the same byte, and a CR at the cut is kept
 * the way the byte-by-byte parse kept it */
static void
test_long_line_cut_same_in_pieces(void)
{
	size_t n = HDR_FIELD_MAX + 5000;
	char *m = xmalloc(n + 64);
	struct got g[2];
	size_t k = (size_t)sprintf(m, "X-Long: ");

	memset(m + k, 'v', n - k);
	k = n;
	k += (size_t)sprintf(m + k, "\r\nTo: b\r\n\r\n");
	for (int piecewise = 0; piecewise < 2; piecewise++) {
		struct hdrparse *hp = hdrparse_new(collect, &g[piecewise]);
		int stop;
		size_t step = piecewise ? 1000 : k;

		memset(&g[piecewise], 0, sizeof(g[piecewise]));
		hdrparse_reset(hp);
		for (size_t o = 0; o < k && !hdrparse_done(hp); o += step)
			CU_ASSERT(hdrparse_feed(hp, m + o, k - o < step ? k - o : step, &stop) >= 0);
		CU_ASSERT(hdrparse_done(hp));
		CU_ASSERT_EQUAL(hdrparse_body_offset(hp), (unsigned long long)k);
		CU_ASSERT_EQUAL(g[piecewise].ntrunc, 1);
		hdrparse_free(&hp);
	}
	CU_ASSERT_STRING_EQUAL(g[0].text, g[1].text);
	/* name, NUL, value: the value is what is left of HDR_FIELD_MAX */
	CU_ASSERT(strstr(g[0].text, "X-Long=<65529>|To=b|") != NULL);
	free(m);
}

static void
test_callback_stops_the_parse(void)
{
	struct got g;
	struct hdrparse *hp;
	int stop;
	const char *m = "A: 1\r\nB: 2\r\nC: 3\r\n\r\n";

	memset(&g, 0, sizeof(g));
	g.stop_after = 2;
	hp = hdrparse_new(collect, &g);
	hdrparse_reset(hp);
	CU_ASSERT_EQUAL(hdrparse_feed(hp, m, strlen(m), &stop), -1);
	CU_ASSERT_EQUAL(stop, 7);
	CU_ASSERT_STRING_EQUAL(g.text, "A=1|B=2|");
	hdrparse_free(&hp);
}

static CU_TestInfo tests[] = {
	{ "fields, folds, body offsets: whole and byte by byte", test_rows },
	{ "an over-long field is cut and flagged, memory stays bounded", test_huge_field_is_cut_not_grown },
	{ "a long line is cut at the same byte whole or in pieces", test_long_line_cut_same_in_pieces },
	{ "a callback can stop the parse", test_callback_stops_the_parse },
	{ NULL, NULL },
};

void
test_hdrparse_register(void)
{
	unit_suite("hdrparse", tests);
}
