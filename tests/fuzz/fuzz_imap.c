/*
 * libFuzzer target: arbitrary client bytes into the IMAP command parser,
 * once whole and once cut into pieces at points chosen by the input; the
 * two runs must give the same events (the parser's output may not depend on
 * how TCP cut the stream). Every field of every command is read so the
 * sanitizers see any bad pointer. Must never crash, hang or leak.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pop-imap-proxy/imap_parser.h"

static uint64_t
mix(uint64_t h, const void *p, size_t n)
{
	const unsigned char *s = p;

	for (size_t i = 0; i < n; i++)
		h = (h ^ s[i]) * 1099511628211ull;
	return h;
}

static uint64_t
walk_args(uint64_t h, const struct imap_arg *a, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		h = mix(h, &a[i].type, sizeof(a[i].type));
		if (a[i].type == IMAP_ARG_LIST)
			h = walk_args(h, a[i].list, a[i].count);
		else
			h = mix(h, a[i].str, a[i].len + 1);
	}
	return h;
}

static uint64_t
walk_search(uint64_t h, const struct imap_search *s)
{
	h = mix(h, &s->key, sizeof(s->key));
	if (s->str != NULL)
		h = mix(h, s->str, strlen(s->str));
	if (s->str2 != NULL)
		h = mix(h, s->str2, strlen(s->str2));
	for (size_t i = 0; i < s->set.n; i++)
		h = mix(h, &s->set.r[i], sizeof(s->set.r[i]));
	for (size_t i = 0; i < s->nchild; i++)
		h = walk_search(h, &s->child[i]);
	return h;
}

static uint64_t
walk_cmd(uint64_t h, const struct imap_cmd *c)
{
	h = mix(h, c->tag, strlen(c->tag));
	h = mix(h, c->name, strlen(c->name));
	h = walk_args(h, c->args, c->nargs);
	for (size_t i = 0; i < c->seq.n; i++)
		h = mix(h, &c->seq.r[i], sizeof(c->seq.r[i]));
	for (size_t i = 0; i < c->nfetch; i++) {
		const struct imap_fetch_att *f = &c->fetch[i];

		h = mix(h, f->part, f->nparts * sizeof(f->part[0]));
		for (size_t k = 0; k < f->nfields; k++)
			h = mix(h, f->fields[k], strlen(f->fields[k]));
		h = mix(h, &f->offset, sizeof(f->offset));
	}
	if (c->search != NULL)
		h = walk_search(h, c->search);
	for (size_t i = 0; i < c->nflags; i++)
		h = mix(h, c->flags[i], strlen(c->flags[i]));
	if (c->charset != NULL)
		h = mix(h, c->charset, strlen(c->charset));
	if (c->append_date != NULL)
		h = mix(h, c->append_date, strlen(c->append_date));
	return h;
}

/* cut: 0 whole; else piece sizes from the input's first bytes */
static uint64_t
run(const uint8_t *data, size_t size, const uint8_t *cuts, size_t ncuts, int cut, int stream)
{
	struct imap_parser_limits lim = {
		.line_max = 128, .literal_max = 64, .depth_max = 5, .list_max = 16, .bad_max = 8,
	};
	struct imap_parser *p = imap_parser_new(&lim);
	uint64_t h = 14695981039346656037ull;
	size_t off = 0, k = 0;
	int dead = 0;

	/* APPEND streaming: accepted when the mailbox name has an even length;
	 * the data is hashed byte-wise, so however it is cut the hash is one */
	imap_parser_set_append_stream(p, stream);

	while (off < size && !dead) {
		size_t piece = size - off;

		if (cut && ncuts > 0) {
			piece = 1 + cuts[k++ % ncuts] % 13;
			if (piece > size - off)
				piece = size - off;
		}
		size_t end = off + piece;

		while (off < end && !dead) {
			struct imap_event ev;
			size_t used = imap_parser_feed(p, data + off, end - off, &ev);

			if (used > end - off)
				abort();
			off += used;
			if (ev.type != IMAP_EV_NONE && ev.type != IMAP_EV_APPEND_DATA)
				h = mix(h, &ev.type, sizeof(ev.type));
			switch (ev.type) {
			case IMAP_EV_APPEND:
				h = walk_cmd(h, ev.cmd);
				h = mix(h, &ev.append_size, sizeof(ev.append_size));
				imap_parser_append_continue(p, ev.cmd->nargs > 0 &&
				    ev.cmd->args[0].len % 2 == 0);
				break;
			case IMAP_EV_APPEND_DATA:
				if (ev.datalen == 0 || ev.data == NULL)
					abort();
				h = mix(h, ev.data, ev.datalen);
				break;
			case IMAP_EV_COMMAND:
				h = walk_cmd(h, ev.cmd);
				if (strcmp(ev.cmd->name, "IDLE") == 0)
					imap_parser_set_idle(p);
				if (strcmp(ev.cmd->name, "LOGIN") == 0) {
					lim.line_max = 512;
					lim.literal_max = 256;
					imap_parser_set_limits(p, &lim);
				}
				break;
			case IMAP_EV_REPLY:
			case IMAP_EV_CONTINUE:
				h = mix(h, ev.reply, strlen(ev.reply));
				break;
			case IMAP_EV_DISCONNECT:
				h = mix(h, ev.reply, strlen(ev.reply));
				dead = 1;
				break;
			default:
				break;
			}
			if (used == 0 && ev.type == IMAP_EV_NONE)
				abort();	/* no progress without an event */
		}
	}
	imap_parser_free(&p);
	return h;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t ncuts = size > 0 ? data[0] % 8 : 0;
	int stream = size > 0 && (data[0] & 0x80) != 0;	/* APPEND streaming on */

	if (size < 1 + ncuts)
		return 0;
	const uint8_t *cuts = data + 1;

	data += 1 + ncuts;
	size -= 1 + ncuts;
	if (run(data, size, NULL, 0, 0, stream) != run(data, size, cuts, ncuts, 1, stream))
		abort();
	return 0;
}
