/*
 * penalty - failed-login delays and bans per client address (IPv6 per /64).
 *
 *   penalty_conf_parse()    the auth_failure_* keys
 *   penalty_failure()       a failed login: its reply's delay, maybe a ban
 *   penalty_success()       a success forgets the address
 *   penalty_delay_for(), penalty_window_count(), penalty_key()  the pure math
 *
 * A fixed open-addressing table (PENALTY_SLOTS, PENALTY_PROBE slots a run):
 * a lookup scans its whole probe run, so a slot given to another address
 * never hides an entry; a new address takes a free or expired slot of its
 * run, else the stalest one. Memory stays bounded whatever the churn; an
 * address pushed out merely starts again from its first delay.
 * The ban window is a sliding estimate over two fixed windows (this one and
 * the previous one, weighted by their overlap), so a burst that straddles a
 * window boundary is still counted. Never blocks; one thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/conf.h"
#include "common/xmalloc.h"
#include "service/penalty.h"
#include "storage-adapter/ratelimit.h"

#define PENALTY_SLOTS 4096
#define PENALTY_PROBE 16
#define PENALTY_FORGET_MS (3600LL * 1000)	/* an hour without failure: forgotten */

struct pentry {
	struct ipaddr key;
	int used;
	unsigned fails;			/* consecutive, for the delay */
	long long last_ms;		/* last failure */
	long long win_start_ms;		/* this ban window */
	unsigned win_cur, win_prev;
	struct ipaddr banned;		/* the last address banned from this key */
	long long banned_until_ms;
};

struct penalty {
	struct penalty_conf c;
	struct pentry *t;
};

int
penalty_conf_parse(const struct conf *c, struct penalty_conf *r, const char **error_r)
{
	static char err[300];
	const char *ban = conf_get(c, "auth_failure_ban");
	struct penalty_conf pc;

	memset(&pc, 0, sizeof(pc));
	pc.delay_ms = (unsigned)conf_get_int(c, "auth_failure_delay") * 1000u;
	pc.max_delay_ms = (unsigned)conf_get_int(c, "auth_failure_delay_max") * 1000u;
	if (pc.max_delay_ms < pc.delay_ms)
		pc.max_delay_ms = pc.delay_ms;
	if (strcmp(ban, "0") != 0 && ban[0] != '\0' &&
	    ratelimit_parse(ban, &pc.ban_count, &pc.ban_window) < 0) {
		snprintf(err, sizeof(err), "%s: auth_failure_ban: \"%.40s\" is not N/TIME "
		    "(e.g. 20/10m) or 0", conf_where(c, "auth_failure_ban"), ban);
		*error_r = err;
		return -1;
	}
	pc.ban_time = (unsigned long)conf_get_int(c, "auth_failure_ban_time");
	if (pc.ban_time == 0)
		pc.ban_count = 0;
	*r = pc;
	return 0;
}

unsigned
penalty_delay_for(const struct penalty_conf *c, unsigned n)
{
	unsigned long long d = c->delay_ms;

	if (d == 0 || n == 0)
		return 0;
	for (unsigned i = 1; i < n && d < c->max_delay_ms; i++)
		d *= 2;
	return d > c->max_delay_ms ? c->max_delay_ms : (unsigned)d;
}

unsigned
penalty_window_count(unsigned prev, unsigned cur, unsigned elapsed_in_cur, unsigned window)
{
	unsigned long long overlap;

	if (window == 0 || elapsed_in_cur >= window)
		return cur;
	overlap = (unsigned long long)prev * (window - elapsed_in_cur);
	return cur + (unsigned)(overlap / window);
}

void
penalty_key(const struct ipaddr *a, struct ipaddr *key_r)
{
	memset(key_r, 0, sizeof(*key_r));
	key_r->family = a->family;
	if (a->family == 4)
		key_r->v4 = a->v4;
	else
		key_r->hi = a->hi;
}

struct penalty *
penalty_new(const struct penalty_conf *c)
{
	struct penalty *p = xcalloc(1, sizeof(*p));

	p->c = *c;
	p->t = xcalloc(PENALTY_SLOTS, sizeof(*p->t));
	return p;
}

void
penalty_free(struct penalty **pp)
{
	if (*pp == NULL)
		return;
	free((*pp)->t);
	free(*pp);
	*pp = NULL;
}

const struct penalty_conf *
penalty_conf(const struct penalty *p)
{
	return &p->c;
}

static unsigned
slot_of(const struct ipaddr *k)
{
	uint64_t h = k->family == 4 ? k->v4 : k->hi;

	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return (unsigned)(h % PENALTY_SLOTS);
}

static int
same_key(const struct ipaddr *a, const struct ipaddr *b)
{
	return a->family == b->family && a->v4 == b->v4 && a->hi == b->hi && a->lo == b->lo;
}

static struct pentry *
lookup(struct penalty *p, const struct ipaddr *k, long long now_ms, int make)
{
	unsigned s = slot_of(k);
	struct pentry *take = NULL;
	int take_free = 0;

	for (unsigned i = 0; i < PENALTY_PROBE; i++) {
		struct pentry *e = &p->t[(s + i) % PENALTY_SLOTS];

		if (e->used && same_key(&e->key, k))
			return e;
		if (!make || take_free)
			continue;
		if (!e->used || (now_ms - e->last_ms > PENALTY_FORGET_MS &&
		    now_ms >= e->banned_until_ms)) {
			take = e;	/* free or forgotten */
			take_free = 1;
		} else if (take == NULL || e->last_ms < take->last_ms) {
			take = e;	/* the stalest so far */
		}
	}
	if (!make)
		return NULL;
	memset(take, 0, sizeof(*take));
	take->used = 1;
	take->key = *k;
	take->win_start_ms = now_ms;
	return take;
}

unsigned
penalty_failure(struct penalty *p, const struct ipaddr *a, long long now_ms, int *ban_r)
{
	struct ipaddr k;
	struct pentry *e;
	long long win_ms = (long long)p->c.ban_window * 1000;

	*ban_r = 0;
	penalty_key(a, &k);
	e = lookup(p, &k, now_ms, 1);
	if (now_ms - e->last_ms > PENALTY_FORGET_MS)
		e->fails = 0;
	e->fails++;
	e->last_ms = now_ms;
	if (p->c.ban_count > 0 && win_ms > 0) {
		unsigned n;

		if (now_ms - e->win_start_ms >= 2 * win_ms) {
			e->win_prev = 0;
			e->win_cur = 0;
			e->win_start_ms = now_ms;
		} else if (now_ms - e->win_start_ms >= win_ms) {
			e->win_prev = e->win_cur;
			e->win_cur = 0;
			e->win_start_ms += win_ms;
		}
		e->win_cur++;
		n = penalty_window_count(e->win_prev, e->win_cur,
		    (unsigned)((now_ms - e->win_start_ms) / 1000), p->c.ban_window);
		if (n >= p->c.ban_count &&
		    (now_ms >= e->banned_until_ms || !same_key(&e->banned, a))) {
			*ban_r = 1;
			e->banned = *a;
			e->banned_until_ms = now_ms + (long long)p->c.ban_time * 1000;
		}
	}
	return penalty_delay_for(&p->c, e->fails);
}

void
penalty_success(struct penalty *p, const struct ipaddr *a)
{
	struct ipaddr k;
	struct pentry *e;

	penalty_key(a, &k);
	e = lookup(p, &k, 0, 0);
	if (e != NULL)
		e->fails = 0;	/* the delay goes; the ban count stays (a guesser's one hit) */
}
