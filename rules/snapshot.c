/*
 * snapshot - the current kill/accept lists, swapped atomically.
 *
 *   snapref_acquire()/release()  readers: two atomic adds, no lock, no wait
 *   snapref_publish()            the one writer: swap, wait for old readers, free
 *
 * A reader counts itself in readers[epoch & 1] before loading the pointer.
 * The writer swaps the pointer, then twice flips the epoch and waits for the
 * counter of the previous parity to drain: any reader that could have loaded
 * the old pointer has then finished. Readers hold a snapshot for one milter
 * callback (microseconds), so the writer's wait is short.
 */
#include <stdlib.h>
#include <time.h>

#include "common/xmalloc.h"
#include "rules/snapshot.h"

struct snapshot *
snapshot_new(struct listset *kill, struct listset *accept)
{
	struct snapshot *s = xcalloc(1, sizeof(*s));

	s->list[LIST_KILL] = kill;
	s->list[LIST_ACCEPT] = accept;
	return s;
}

struct snapshot *
snapshot_new_overlay(struct listset *kill, struct listset *accept, struct listset *over_kill,
    struct listset *over_accept)
{
	struct snapshot *s = snapshot_new(kill, accept);

	s->over[LIST_KILL] = over_kill;
	s->over[LIST_ACCEPT] = over_accept;
	return s;
}

void
snapshot_free(struct snapshot **sp)
{
	struct snapshot *s = *sp;

	if (s == NULL)
		return;
	for (int k = 0; k < LIST_KINDS; k++) {
		listset_free(&s->list[k]);
		listset_free(&s->over[k]);
	}
	free(s);
	*sp = NULL;
}

int
snapshot_match_client(const struct snapshot *s, enum list_kind k, const struct ipaddr *addr,
    const char *hostname, long long now, struct listset_match *m_r)
{
	if (s->over[k] != NULL && listset_match_client(s->over[k], addr, hostname, now, m_r))
		return 1;
	return listset_match_client(s->list[k], addr, hostname, now, m_r);
}

int
snapshot_match_sender(const struct snapshot *s, enum list_kind k,
    const struct mailaddr *sender, long long now, struct listset_match *m_r)
{
	if (s->over[k] != NULL && listset_match_sender(s->over[k], sender, now, m_r))
		return 1;
	return listset_match_sender(s->list[k], sender, now, m_r);
}

int
snapshot_match_country(const struct snapshot *s, enum list_kind k, const char *country,
    long long now, struct listset_match *m_r)
{
	if (s->over[k] != NULL && listset_match_country(s->over[k], country, now, m_r))
		return 1;
	return listset_match_country(s->list[k], country, now, m_r);
}

size_t
snapshot_count(const struct snapshot *s, enum list_kind k)
{
	return listset_count(s->list[k]) + (s->over[k] ? listset_count(s->over[k]) : 0);
}

void
snapref_init(struct snapref *r, struct snapshot *first)
{
	atomic_init(&r->cur, first);
	atomic_init(&r->epoch, 0);
	atomic_init(&r->readers[0], 0);
	atomic_init(&r->readers[1], 0);
}

void
snapref_deinit(struct snapref *r)
{
	struct snapshot *s = atomic_exchange(&r->cur, NULL);

	snapshot_free(&s);
}

const struct snapshot *
snapref_acquire(struct snapref *r, unsigned *ticket_r)
{
	unsigned e = atomic_load(&r->epoch) & 1;

	atomic_fetch_add(&r->readers[e], 1);
	*ticket_r = e;
	return atomic_load(&r->cur);
}

void
snapref_release(struct snapref *r, unsigned ticket)
{
	atomic_fetch_sub(&r->readers[ticket], 1);
}

static void
wait_drain(atomic_long *counter)
{
	const struct timespec ts = { 0, 50 * 1000 };

	while (atomic_load(counter) != 0)
		nanosleep(&ts, NULL);
}

void
snapref_publish(struct snapref *r, struct snapshot *s)
{
	struct snapshot *old = atomic_exchange(&r->cur, s);

	for (int phase = 0; phase < 2; phase++) {
		unsigned e = atomic_fetch_add(&r->epoch, 1);

		wait_drain(&r->readers[e & 1]);
	}
	snapshot_free(&old);
}
