/*
 * ratelimit - fixed-window counters, per node, with cluster-wide totals
 * folded in from a shared store.
 *
 *   ratelimit_take()      count one event if the limit allows (milter threads)
 *   ratelimit_collect()   unsynced counts, for the store to add up (watcher)
 *   ratelimit_apply()     cluster-wide totals back from the store (watcher)
 *
 * A counter is (who, window length, window index). Its total as this node
 * sees it is the last cluster-wide total plus the events counted here since.
 * Between syncs (a fraction of a second) nodes can overshoot a limit by what
 * they admit in that time; the README says so. Old windows are dropped as
 * the table fills. Never does I/O; striped mutexes guard the table.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/conf.h"
#include "common/hash.h"
#include "common/xmalloc.h"
#include "storage-adapter/ratelimit.h"

#define RL_STRIPES 64
#define RL_SLOTS 4096		/* per stripe */
#define RL_WHO_MAX 256

struct counter {
	char who[RL_WHO_MAX];
	unsigned window;
	long long index;	/* now / window */
	long long base;		/* cluster-wide total at the last sync */
	long long local;	/* counted here since */
	long long pushing;	/* handed to a sync in flight */
	int used;
};

struct stripe {
	pthread_mutex_t lock;
	struct counter *slot;	/* RL_SLOTS, open addressing */
};

struct ratelimit {
	struct stripe stripe[RL_STRIPES];
};

static uint32_t
hash(const char *s, unsigned window)
{
	/* keyed: who is a peer's address or sender */
	return (uint32_t)(hash_str(s) ^ hash_u64(window));
}

struct ratelimit *
ratelimit_new(void)
{
	struct ratelimit *rl = xcalloc(1, sizeof(*rl));

	for (int i = 0; i < RL_STRIPES; i++) {
		pthread_mutex_init(&rl->stripe[i].lock, NULL);
		rl->stripe[i].slot = xcalloc(RL_SLOTS, sizeof(struct counter));
	}
	return rl;
}

void
ratelimit_free(struct ratelimit **rlp)
{
	struct ratelimit *rl = *rlp;

	if (rl == NULL)
		return;
	for (int i = 0; i < RL_STRIPES; i++) {
		pthread_mutex_destroy(&rl->stripe[i].lock);
		free(rl->stripe[i].slot);
	}
	free(rl);
	*rlp = NULL;
}

/* find or make the counter; caller holds the stripe lock */
static struct counter *
find(struct stripe *st, uint32_t h, const char *who, unsigned window, long long index)
{
	struct counter *victim = NULL;

	for (unsigned probe = 0; probe < 16; probe++) {
		struct counter *c = &st->slot[(h + probe) % RL_SLOTS];

		if (c->used && c->window == window && strcmp(c->who, who) == 0) {
			if (c->index != index) {	/* a new window */
				c->index = index;
				c->base = c->local = c->pushing = 0;
			}
			return c;
		}
		if (!c->used || c->index < index - 1) {	/* free, or stale */
			if (victim == NULL || !c->used)
				victim = c;
			if (!c->used)
				break;
		}
	}
	if (victim == NULL)	/* all 16 busy with current windows: evict the first */
		victim = &st->slot[h % RL_SLOTS];
	memset(victim, 0, sizeof(*victim));
	snprintf(victim->who, sizeof(victim->who), "%s", who);
	victim->window = window;
	victim->index = index;
	victim->used = 1;
	return victim;
}

int
ratelimit_take(struct ratelimit *rl, const char *who, unsigned limit, unsigned window,
    long long now, unsigned long *total_r)
{
	uint32_t h;
	struct stripe *st;
	struct counter *c;
	long long total;
	int ok;

	if (window == 0)
		window = 1;
	h = hash(who, window);
	st = &rl->stripe[h % RL_STRIPES];
	pthread_mutex_lock(&st->lock);
	c = find(st, h / RL_STRIPES, who, window, now / window);
	total = c->base + c->local + c->pushing;
	ok = total + 1 <= (long long)limit;
	if (ok) {
		c->local++;
		total++;
	}
	pthread_mutex_unlock(&st->lock);
	*total_r = (unsigned long)total;
	return ok;
}

size_t
ratelimit_collect(struct ratelimit *rl, struct rate_delta **d_r, long long now)
{
	size_t n = 0, cap = 0;
	struct rate_delta *d = NULL;

	for (int i = 0; i < RL_STRIPES; i++) {
		struct stripe *st = &rl->stripe[i];

		pthread_mutex_lock(&st->lock);
		for (unsigned j = 0; j < RL_SLOTS; j++) {
			struct counter *c = &st->slot[j];

			if (!c->used || c->index < now / c->window)
				continue;	/* a past window needs no sync */
			if (n == cap) {
				cap = cap ? cap * 2 : 64;
				d = xreallocarray(d, cap, sizeof(*d));
			}
			d[n].name = xasprintf("%u:%lld:%s", c->window, c->index, c->who);
			d[n].delta = c->local;
			d[n].expire_at = (c->index + 1) * (long long)c->window + 60;
			d[n].total = -1;
			c->pushing += c->local;
			c->local = 0;
			n++;
		}
		pthread_mutex_unlock(&st->lock);
	}
	*d_r = d;
	return n;
}

void
ratelimit_apply(struct ratelimit *rl, const struct rate_delta *d, size_t n)
{
	for (size_t k = 0; k < n; k++) {
		unsigned window;
		long long index;
		int off = 0;
		const char *who;

		if (sscanf(d[k].name, "%u:%lld:%n", &window, &index, &off) != 2 || off == 0)
			continue;
		who = d[k].name + off;
		{
			uint32_t h = hash(who, window);
			struct stripe *st = &rl->stripe[h % RL_STRIPES];
			struct counter *c;

			pthread_mutex_lock(&st->lock);
			c = NULL;
			for (unsigned probe = 0; probe < 16; probe++) {
				struct counter *x = &st->slot[(h / RL_STRIPES + probe) % RL_SLOTS];

				if (!x->used)
					break;
				if (x->window == window && x->index == index && strcmp(x->who, who) == 0) {
					c = x;
					break;
				}
			}
			if (c != NULL) {
				if (d[k].total >= 0)
					c->base = d[k].total;	/* includes what we pushed */
				else
					c->local += d[k].delta;	/* push failed: keep it local */
				c->pushing = 0;
			}
			pthread_mutex_unlock(&st->lock);
		}
	}
}

void
ratelimit_deltas_free(struct rate_delta *d, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(d[i].name);
	free(d);
}

int
ratelimit_parse(const char *s, unsigned *limit_r, unsigned *window_r)
{
	char *end;
	unsigned long n = strtoul(s, &end, 10);
	long secs;

	if (end == s || *end != '/' || n == 0 || n > 100000000UL || s[0] == '-')
		return -1;
	if (conf_parse_time(end + 1, &secs) < 0 || secs <= 0 || secs > 31 * 86400)
		return -1;
	*limit_r = (unsigned)n;
	*window_r = (unsigned)secs;
	return 0;
}
