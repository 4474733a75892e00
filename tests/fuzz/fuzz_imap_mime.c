/*
 * libFuzzer target: arbitrary bytes as a message file into imap_mime, then
 * everything a FETCH or SEARCH can ask of it: ENVELOPE, BODYSTRUCTURE, BODY,
 * a set of sections (chosen by the input's first bytes) with partials, read
 * whole and piecewise (the two must agree, and a plain section must be its
 * file range), the header and text walks SEARCH uses, and a few SEARCH
 * programs through imap_search. Must never crash, hang, leak or read
 * outside the message.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pop-imap-proxy/imap_mime.h"
#include "pop-imap-proxy/imap_parser.h"
#include "pop-imap-proxy/imap_search.h"
#include "storage-adapter/mailstore.h"

static int
hdr_cb(void *ctx, const char *name, const char *value)
{
	size_t *n = ctx;

	*n += strlen(name) + strlen(value);
	return 0;
}

static int
text_cb(void *ctx, int start, const char *d, size_t len)
{
	size_t *n = ctx;

	*n += len + (size_t)start + (len > 0 ? (unsigned char)d[len - 1] : 0);
	return 0;
}

static void
check_section(struct imap_mime *m, const uint8_t *data, size_t size, const uint32_t *part,
    size_t nparts, int text, int partial, uint32_t off, uint32_t len)
{
	static const char *const fields[] = { "From", "Subject", "content-type" };
	struct imap_mime_section sec;

	if (imap_mime_section_by_name(m, part, nparts, text, fields, 3, partial, off, len, &sec) < 0)
		abort();
	if (sec.size > (uint64_t)size * 2 + 16)
		abort();
	char *whole = malloc(sec.size + 1), *piece = malloc(sec.size + 1);
	if (imap_mime_section_read(m, &sec, 0, whole, sec.size) != sec.size)
		abort();
	for (uint64_t pos = 0; pos < sec.size; pos += 5)
		(void)imap_mime_section_read(m, &sec, pos, piece + pos,
		    sec.size - pos < 5 ? sec.size - pos : 5);
	if (sec.size > 0 && memcmp(whole, piece, sec.size) != 0)
		abort();
	if (sec.crlf == 0 && sec.built == NULL) {
		if (sec.offset + sec.length > size || sec.length != sec.size)
			abort();
		if (sec.size > 0 && memcmp(data + sec.offset, whole, sec.size) != 0)
			abort();
	}
	free(whole);
	free(piece);
	imap_mime_section_deinit(&sec);
}

static int
s_open(void *ctx, struct imap_mime **m_r)
{
	*m_r = ctx;
	return 0;
}

static int
s_date(void *ctx, time_t *t)
{
	(void)ctx;
	*t = 1796000000;
	return 0;
}

static void
search(struct imap_mime *m, const char *prog)
{
	struct imap_parser_limits lim;
	struct imap_event ev;
	char line[256];
	struct mailstore_msg msg = { .uid = 1, .size = 10, .vsize = imap_mime_vsize(m) };

	snprintf(line, sizeof(line), "t SEARCH %s\r\n", prog);
	imap_parser_limits_default(&lim, 1);
	struct imap_parser *p = imap_parser_new(&lim);
	size_t n = strlen(line), off = 0;
	while (off < n) {
		off += imap_parser_feed(p, line + off, n - off, &ev);
		if (ev.type == IMAP_EV_COMMAND) {
			struct imap_search_input in = {
				.msg = &msg, .seq = 1, .max_seq = 1, .max_uid = 1,
				.date = s_date, .open = s_open, .ctx = m,
			};
			int match;
			const char *err;
			(void)imap_search_match(ev.cmd->search, &in, &match, &err);
			break;
		}
	}
	imap_parser_free(&p);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* the message in its own allocation, so ASan sees any read past it */
	uint8_t *copy = malloc(size ? size : 1);
	memcpy(copy, data, size);
	struct imap_mime *m = imap_mime_open_mem(copy, size);
	size_t len, acc = 0;
	free(imap_mime_envelope(m, &len));
	free(imap_mime_bodystructure(m, 1, &len));
	free(imap_mime_bodystructure(m, 0, &len));
	(void)imap_mime_vsize(m);

	uint32_t part[4];
	for (int i = 0; i < 4; i++)
		part[i] = size > (size_t)i ? (uint32_t)(data[i] % 4) + 1 : 1;
	uint32_t off = size > 4 ? data[4] : 0, plen = size > 5 ? data[5] : 7;
	for (size_t np = 0; np <= 3; np++) {
		for (int text = IMAP_SECTION_ALL; text <= IMAP_SECTION_MIME; text++) {
			check_section(m, copy, size, part, np, text, 0, 0, 0);
			check_section(m, copy, size, part, np, text, 1, off, plen);
		}
	}
	time_t t;
	int tz;
	(void)imap_mime_sent_date(m, &t, &tz);
	(void)imap_mime_header_foreach(m, NULL, 0, hdr_cb, &acc);
	(void)imap_mime_header_foreach(m, "From", IMAP_MIME_HDR_ADDRESS, hdr_cb, &acc);
	(void)imap_mime_header_foreach(m, "Subject", IMAP_MIME_HDR_COMPRESS, hdr_cb, &acc);
	(void)imap_mime_text_foreach(m, 1, 1u << 20, text_cb, &acc);
	search(m, "OR BODY x TEXT \"a b\"");
	search(m, "FROM a SUBJECT b SENTBEFORE 1-Jan-2020 HEADER X-Y z");
	imap_mime_free(&m);
	free(copy);
	return 0;
}
