#ifndef PC_SNAPSHOT_H
#define PC_SNAPSHOT_H
#include <stdatomic.h>
#include "rules/listset.h"

/* The lists the engine enforces right now. Immutable once published. */
struct snapshot {
	struct listset *list[LIST_KINDS];	/* indexed by enum list_kind */
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

struct snapshot *snapshot_new(struct listset *kill, struct listset *accept);
void snapshot_free(struct snapshot **s);

#endif
