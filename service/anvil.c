/*
 * anvil - connection counts and rates per client address (IPv6: per /64).
 *
 *   anvil_connect()     count one more connection, and one more in the rate
 *   anvil_disconnect()  count one less; the address goes when nothing is left
 *   anvil_count(), anvil_rate(), anvil_expire(), anvil_size()
 *
 * An open-addressing hash table with linear probing and backward-shift
 * deletion: no tombstones, so a delete never leaves a hole a later lookup
 * stops at (the old per-client table counted a freed slot as "not there"
 * and handed out a fresh count of 1), and no probe limit (it gave up after
 * 32 slots and then applied no limit at all). The whole address is hashed,
 * with SipHash under a key drawn at start (common/hash), so clients cannot
 * choose colliding addresses.
 * The table grows at 70 % load and shrinks below 12.5 %.
 *
 * Never blocks; not thread-safe.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/xmalloc.h"
#include "service/anvil.h"

#define ANVIL_MIN_CAP 64

struct slot {
	uint64_t key;		/* IPv4 address, or the IPv6 /64 */
	uint8_t family;		/* 0: empty */
	unsigned count;		/* open connections */
	unsigned win_n;		/* connections opened since win_start */
	time_t win_start;
};

struct anvil {
	struct slot *t;
	size_t cap;		/* a power of two */
	size_t n;
	struct hash_key key;	/* this table's own, random */
	unsigned window;
};

static void
key_of(const struct ipaddr *addr, uint8_t *family_r, uint64_t *key_r)
{
	*family_r = addr->family == 6 ? 6 : 4;
	*key_r = addr->family == 6 ? addr->hi : addr->v4;
}

static size_t
home(const struct anvil *a, uint8_t family, uint64_t key)
{
	uint64_t w[2] = { family, key };

	return (size_t)hash_siphash13(&a->key, w, sizeof(w)) & (a->cap - 1);
}

static struct slot *
find(const struct anvil *a, const struct ipaddr *addr)
{
	uint8_t fam;
	uint64_t key;

	key_of(addr, &fam, &key);
	for (size_t i = home(a, fam, key);; i = (i + 1) & (a->cap - 1)) {
		struct slot *s = &a->t[i];

		if (s->family == 0)
			return NULL;
		if (s->family == fam && s->key == key)
			return s;
	}
}

static void
resize(struct anvil *a, size_t cap)
{
	struct slot *old = a->t;
	size_t oldcap = a->cap;

	a->t = xcalloc(cap, sizeof(*a->t));
	a->cap = cap;
	for (size_t i = 0; i < oldcap; i++) {
		size_t j;

		if (old[i].family == 0)
			continue;
		for (j = home(a, old[i].family, old[i].key); a->t[j].family != 0; j = (j + 1) & (cap - 1))
			;
		a->t[j] = old[i];
	}
	free(old);
}

/* empty slot i and pull back the entries of its cluster that may move */
static void
delete_at(struct anvil *a, size_t i)
{
	size_t mask = a->cap - 1, j = i;

	for (;;) {
		size_t h;

		j = (j + 1) & mask;
		if (a->t[j].family == 0)
			break;
		h = home(a, a->t[j].family, a->t[j].key);
		/* the entry at j stays if its home lies cyclically in (i, j] */
		if (i <= j ? (i < h && h <= j) : (i < h || h <= j))
			continue;
		a->t[i] = a->t[j];
		i = j;
	}
	memset(&a->t[i], 0, sizeof(a->t[i]));
	a->n--;
}

static int
is_live(const struct anvil *a, const struct slot *s, time_t now)
{
	return s->count > 0 || (a->window > 0 && s->win_n > 0 && now - s->win_start < (time_t)a->window);
}

static void
maybe_shrink(struct anvil *a)
{
	if (a->cap > ANVIL_MIN_CAP && a->n * 8 < a->cap)
		resize(a, a->cap / 2);
}

struct anvil *
anvil_new(unsigned rate_window)
{
	struct anvil *a = xcalloc(1, sizeof(*a));

	a->cap = ANVIL_MIN_CAP;
	a->t = xcalloc(a->cap, sizeof(*a->t));
	a->window = rate_window;
	hash_key_random(&a->key);
	return a;
}

void
anvil_free(struct anvil **ap)
{
	if (*ap == NULL)
		return;
	free((*ap)->t);
	free(*ap);
	*ap = NULL;
}

unsigned
anvil_connect(struct anvil *a, const struct ipaddr *addr, time_t now)
{
	struct slot *s = find(a, addr);

	if (s == NULL) {
		uint8_t fam;
		uint64_t key;
		size_t i;

		if ((a->n + 1) * 10 > a->cap * 7)
			resize(a, a->cap * 2);
		key_of(addr, &fam, &key);
		for (i = home(a, fam, key); a->t[i].family != 0; i = (i + 1) & (a->cap - 1))
			;
		s = &a->t[i];
		s->family = fam;
		s->key = key;
		s->win_start = now;
		a->n++;
	}
	if (a->window > 0) {
		if (now - s->win_start >= (time_t)a->window || now < s->win_start) {
			s->win_start = now;
			s->win_n = 0;
		}
		s->win_n++;
	}
	return ++s->count;
}

int
anvil_disconnect(struct anvil *a, const struct ipaddr *addr, time_t now)
{
	struct slot *s = find(a, addr);

	if (s == NULL || s->count == 0)
		return -1;
	s->count--;
	if (!is_live(a, s, now)) {
		delete_at(a, (size_t)(s - a->t));
		maybe_shrink(a);
	}
	return 0;
}

unsigned
anvil_count(const struct anvil *a, const struct ipaddr *addr)
{
	const struct slot *s = find(a, addr);

	return s != NULL ? s->count : 0;
}

unsigned
anvil_rate(const struct anvil *a, const struct ipaddr *addr, time_t now)
{
	const struct slot *s = find(a, addr);

	if (s == NULL || a->window == 0 || now - s->win_start >= (time_t)a->window)
		return 0;
	return s->win_n;
}

void
anvil_expire(struct anvil *a, time_t now)
{
	/* a delete pulls later entries back into slot i: look at i again */
	for (size_t i = 0; i < a->cap;) {
		if (a->t[i].family != 0 && !is_live(a, &a->t[i], now))
			delete_at(a, i);
		else
			i++;
	}
	maybe_shrink(a);
}

size_t
anvil_size(const struct anvil *a)
{
	return a->n;
}
