#ifndef PC_SNAPSHOT_H
#define PC_SNAPSHOT_H
#include <stdatomic.h>
#include "rules/listset.h"

/*
 * The lists the engine enforces right now. Immutable once published.
 * list[] is the full compiled list; over[] (NULL: none) holds entries added
 * since it was built, so a push does not rebuild a million-entry list: a
 * later snapshot shares list[] and carries a new over[]. Only new keys go
 * into over[] (a changed or removed key means a full build), so looking in
 * over[] first and then in list[] is the same as looking in one list.
 */
struct snapshot {
	struct listset *list[LIST_KINDS];	/* indexed by enum list_kind */
	struct listset *over[LIST_KINDS];
	unsigned long generation;
};

/*
 * Publication point: readers (milter threads) acquire and release without
 * locks or waits; one writer thread publishes a new snapshot and frees the
 * old one once no reader can still hold it (two-phase epoch wait, as in
 * userspace RCU). Owner: the daemon.
 */
struct snapref {
	_Atomic(struct snapshot *) cur;
	atomic_uint epoch;
	atomic_long readers[2];
};

void snapref_init(struct snapref *r, struct snapshot *first);
void snapref_deinit(struct snapref *r);	/* no readers left */
/* never blocks; *ticket_r goes back to snapref_release() */
const struct snapshot *snapref_acquire(struct snapref *r, unsigned *ticket_r);
void snapref_release(struct snapref *r, unsigned ticket);
/* single writer: swap in s, wait out readers of the old one, free it */
void snapref_publish(struct snapref *r, struct snapshot *s);

/* takes the lists (and their references) */
struct snapshot *snapshot_new(struct listset *kill, struct listset *accept);
/* with added entries on top; takes over_kill/over_accept (either may be NULL) */
struct snapshot *snapshot_new_overlay(struct listset *kill, struct listset *accept,
    struct listset *over_kill, struct listset *over_accept);
void snapshot_free(struct snapshot **s);
/* listset_match_client()/_sender()/_country() over both layers of list k */
int snapshot_match_client(const struct snapshot *s, enum list_kind k,
    const struct ipaddr *addr, const char *hostname, long long now, struct listset_match *m_r);
int snapshot_match_sender(const struct snapshot *s, enum list_kind k,
    const struct mailaddr *sender, long long now, struct listset_match *m_r);
int snapshot_match_country(const struct snapshot *s, enum list_kind k, const char *country,
    long long now, struct listset_match *m_r);
/* entries in force in list k (both layers) */
size_t snapshot_count(const struct snapshot *s, enum list_kind k);

#endif
