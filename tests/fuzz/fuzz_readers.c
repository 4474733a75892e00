/*
 * libFuzzer target: the pure readers of common/ that every door frames its
 * input with. Properties:
 *   linereader  fed whole and in pieces (sizes from the input) it gives the
 *               same lines, flags and totals; totals add up to the bytes
 *               taken; a held line never exceeds the cap.
 *   dotstuff    unstuff(stuff(x) + end) == x, whatever the pieces and the
 *               room; a message without bare CR/LF is never flagged bare;
 *               the end is found exactly at the end.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/dotstuff.h"
#include "common/linereader.h"

struct buf {
	char *p;
	size_t n, cap;
};

static void
put(void *arg, const char *p, size_t n)
{
	struct buf *b = arg;

	if (n == 0)
		abort();	/* the contract: never empty */
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2;
		b->p = realloc(b->p, b->cap);
		if (b->p == NULL)
			abort();
	}
	memcpy(b->p + b->n, p, n);
	b->n += n;
}

/* lines as a hash of (text, flags, total); count */
static unsigned long long
lines(const uint8_t *d, size_t n, size_t max, size_t step, size_t *count_r)
{
	struct linereader lr;
	unsigned long long h = 1469598103934665603ULL;
	size_t off = 0, taken = 0, totals = 0;

	*count_r = 0;
	linereader_init(&lr, max);
	while (off < n) {
		size_t k = step && n - off > step ? step : n - off, pos = 0;

		while (pos < k) {
			struct linereader_line ln;
			size_t used;

			if (linereader_feed(&lr, (const char *)d + off + pos, k - pos, &used, &ln)) {
				if (!ln.overflow) {
					if (ln.len + (size_t)ln.crlf > max || ln.text[ln.len] != '\0')
						abort();
					for (size_t i = 0; i < ln.len; i++)
						h = (h ^ (unsigned char)ln.text[i]) * 1099511628211ULL;
				}
				h = (h ^ (unsigned)(ln.overflow | ln.crlf << 1 | ln.nul << 2)) *
				    1099511628211ULL;
				h = (h ^ ln.total) * 1099511628211ULL;
				totals += ln.total;
				(*count_r)++;
			}
			if (used == 0 || used > k - pos)
				abort();
			pos += used;
			taken += used;
		}
		off += k;
	}
	if (taken != n || totals + linereader_pending(&lr) != n)
		abort();
	linereader_deinit(&lr);
	return h;
}

static void
round_trip(const uint8_t *d, size_t n, size_t step, size_t room)
{
	struct buf st = { 0 }, back = { 0 };
	struct dotunstuff u;
	int bol = 1, clean = 1;
	size_t off, extra = 0;

	for (size_t i = 0; i < n && clean; i++)
		if ((d[i] == '\r' && (i + 1 == n || d[i + 1] != '\n')) ||
		    (d[i] == '\n' && (i == 0 || d[i - 1] != '\r')))
			clean = 0;
	for (off = 0; off < n; off += step)
		dotstuff(&bol, (const char *)d + off, n - off < step ? n - off : step, put, &st);
	/* the end: a CRLF first unless the message ended with one */
	if (n > 0 && !(n >= 2 && d[n - 2] == '\r' && d[n - 1] == '\n')) {
		put(&st, "\r\n", 2);
		extra = 2;
	}
	put(&st, ".\r\n", 3);
	dotunstuff_init(&u, 0);
	off = 0;
	for (int stuck = 0; off < st.n && !u.done;) {
		size_t k = st.n - off < step ? st.n - off : step;
		size_t used = dotunstuff_feed(&u, st.p + off, k, room, put, &back);

		/* a call may stop at once (its room spent finishing a line
		 * ending); with fresh room the next one moves on */
		stuck = used == 0 ? stuck + 1 : 0;
		if (stuck > 1)
			abort();
		off += used;
	}
	if (!u.done || off != st.n || back.n != n + extra || (n > 0 && memcmp(back.p, d, n) != 0))
		abort();
	if (clean && u.bare)
		abort();
	free(st.p);
	free(back.p);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t max, step, c1, c2;

	if (size < 2)
		return 0;
	max = 1 + data[0] % 64;
	step = 1 + data[1] % 17;
	if (lines(data + 2, size - 2, max, 0, &c1) != lines(data + 2, size - 2, max, step, &c2) ||
	    c1 != c2)
		abort();
	round_trip(data + 2, size - 2, step, (size_t)-1);
	round_trip(data + 2, size - 2, step, 1 + data[0] % 8);
	return 0;
}
