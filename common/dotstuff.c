/*
 * dotstuff - SMTP DATA framing both ways, and the header names of a
 * message as its bytes go by.
 *
 *   dotunstuff_init()   a scanner at the start of DATA
 *   dotunstuff_feed()   DATA bytes in, message bytes out; stops after the
 *                       final <CR><LF>.<CR><LF>, or when the room is used
 *   dotstuff()          message bytes in, dot-stuffed bytes out
 *   hdrnames_feed()     header names of message bytes, as they go by
 *
 * Only <CR><LF>.<CR><LF> ends DATA: <LF>.<LF>, <CR><LF>.<LF> and the like
 * never do, whatever the normalise setting (the SMTP smuggling defence,
 * CVE-2023-51764 class). A bare <CR> or <LF> is noted in bare, for a door
 * that refuses such a message, and passed on as it came or, normalised, as
 * <CR><LF>.
 *
 * Pure: never allocates, never blocks, holds nothing but its state; the
 * caller owns every byte.
 */
#include <string.h>

#include "common/dotstuff.h"

/* line-start (after CRLF / after a bare LF), dot at line start, ... */
enum { DS_LS_CRLF, DS_LS_LF, DS_DOT, DS_DOT_LF, DS_DOT_CR, DS_MID, DS_CR };

void
dotunstuff_init(struct dotunstuff *u, int normalise)
{
	memset(u, 0, sizeof(*u));
	u->state = DS_LS_CRLF;
	u->normalise = normalise;
}

size_t
dotunstuff_feed(struct dotunstuff *u, const char *buf, size_t len, size_t room,
    dotstuff_emit_fn *emit, void *arg)
{
	int norm = u->normalise;
	size_t out = 0;

#define PUT(p, n) do { emit(arg, (p), (n)); out += (n); } while (0)
	if (u->done)
		return 0;
	for (size_t i = 0; i < len; i++) {
		char c = buf[i];

		/* no more room: stop, but the final dot, which stores nothing,
		 * may still come */
		if (out >= room && !(u->state == DS_LS_CRLF && c == '.') &&
		    !(u->state == DS_DOT && c == '\r') && !(u->state == DS_DOT_CR && c == '\n'))
			return i;
		switch (u->state) {
		case DS_LS_CRLF:
		case DS_LS_LF:
			if (c == '.') {
				/* "\n." can never end DATA, but is still dot-stuffing */
				u->state = u->state == DS_LS_CRLF ? DS_DOT : DS_DOT_LF;
			} else if (c == '\r') {
				u->state = DS_CR;
			} else if (c == '\n') {
				u->bare = 1;
				PUT(norm ? "\r\n" : "\n", norm ? 2u : 1u);
				u->state = DS_LS_LF;
			} else {
				PUT(&buf[i], 1);
				u->state = DS_MID;
			}
			break;
		case DS_DOT:
			if (c == '\r') {
				u->state = DS_DOT_CR;
			} else if (c == '\n') {
				u->bare = 1;	/* ".<LF>": not the end */
				PUT(norm ? ".\r\n" : ".\n", norm ? 3u : 2u);
				u->state = DS_LS_LF;
			} else {
				PUT(&buf[i], 1);	/* the leading dot is stuffing */
				u->state = DS_MID;
			}
			break;
		case DS_DOT_LF:
			if (c == '\r' || c == '\n') {
				PUT(".", 1);	/* a lone dot here ends nothing: keep it */
				u->state = DS_MID;
				i--;
			} else {
				PUT(&buf[i], 1);	/* the leading dot was stuffing */
				u->state = DS_MID;
			}
			break;
		case DS_DOT_CR:
			if (c == '\n') {
				u->done = 1;
				return i + 1;
			}
			u->bare = 1;	/* ".<CR>x" */
			PUT(norm ? ".\r\n" : ".\r", norm ? 3u : 2u);
			u->state = DS_MID;
			i--;	/* look at c again */
			break;
		case DS_MID:
			if (c == '\r') {
				u->state = DS_CR;
			} else if (c == '\n') {
				u->bare = 1;
				PUT(norm ? "\r\n" : "\n", norm ? 2u : 1u);
				u->state = DS_LS_LF;
			} else {
				/*
				 * The run at once, within the room: up to the next
				 * CR or LF, and on across every CRLF whose next line
				 * starts with an ordinary byte (no dot, no CR or LF),
				 * which is all of a message but its odd corners.
				 */
				size_t j = i + 1, lim = len;

				if (out < room && lim - i > room - out)
					lim = i + (room - out);
				for (;;) {
					while (j < lim && buf[j] != '\r' && buf[j] != '\n')
						j++;
					if (j + 2 < lim && buf[j] == '\r' && buf[j + 1] == '\n' &&
					    buf[j + 2] != '.' && buf[j + 2] != '\r' && buf[j + 2] != '\n') {
						j += 3;
						continue;
					}
					break;
				}
				PUT(buf + i, j - i);
				i = j - 1;
			}
			break;
		case DS_CR:
			if (c == '\n') {
				PUT("\r\n", 2);
				u->state = DS_LS_CRLF;
			} else {
				u->bare = 1;	/* bare CR */
				PUT(norm ? "\r\n" : "\r", norm ? 2u : 1u);
				u->state = DS_MID;
				i--;
			}
			break;
		}
	}
#undef PUT
	return len;
}

void
dotstuff(int *bol, const char *s, size_t len, dotstuff_emit_fn *emit, void *arg)
{
	const char *e = s + len;

	if (len == 0)
		return;
	if (*bol && *s == '.')
		emit(arg, ".", 1);
	for (;;) {
		const char *p = memmem(s, (size_t)(e - s), "\n.", 2);

		if (p == NULL)
			break;
		emit(arg, s, (size_t)(p + 1 - s));
		emit(arg, ".", 1);
		s = p + 1;
	}
	if (e > s)
		emit(arg, s, (size_t)(e - s));
	*bol = e[-1] == '\n';
}

/* header-name scanner states */
enum { HS_BOL, HS_NAME, HS_SKIP, HS_CR, HS_DONE };

void
hdrnames_init(struct hdrnames *h)
{
	h->state = HS_BOL;
	h->len = 0;
}

int
hdrnames_is_done(const struct hdrnames *h)
{
	return h->state == HS_DONE;
}

void
hdrnames_feed(struct hdrnames *h, const char *s, size_t n, hdrnames_fn *fn, void *arg)
{
	for (size_t i = 0; i < n && h->state != HS_DONE; i++) {
		char c = s[i];

		switch (h->state) {
		case HS_BOL:
			if (c == '\r') {
				h->state = HS_CR;
			} else if (c == '\n') {
				h->state = HS_DONE;
			} else if (c == ' ' || c == '\t' || c == ':') {
				h->state = HS_SKIP;
			} else {
				h->name[0] = c;
				h->len = 1;
				h->state = (unsigned char)c > ' ' ? HS_NAME : HS_SKIP;
			}
			break;
		case HS_CR:
			h->state = c == '\n' ? HS_DONE : HS_SKIP;
			break;
		case HS_NAME:
			if (c == ':') {
				h->name[h->len] = '\0';
				fn(arg, h->name);
				h->state = HS_SKIP;
			} else if ((unsigned char)c <= ' ' || h->len + 1 >= sizeof(h->name)) {
				h->state = c == '\n' ? HS_BOL : HS_SKIP;
			} else {
				h->name[h->len++] = c;
			}
			break;
		case HS_SKIP: {
			const char *nl = memchr(s + i, '\n', n - i);

			if (nl == NULL)
				return;
			i = (size_t)(nl - s);
			h->state = HS_BOL;
			break;
		}
		}
	}
}
