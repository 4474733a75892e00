#ifndef PC_LISTSET_H
#define PC_LISTSET_H
#include <stddef.h>
#include "common/cidr.h"
#include "common/mailaddr.h"
#include "storage-adapter/listentry.h"

/*
 * One list (kill or accept), compiled for lookups: an LPM table for
 * addresses and hash sets for host names, senders and countries. Immutable once built,
 * so any number of threads may read it without locks.
 */
struct listset;

struct listset_match {
	enum entry_kind kind;
	const char *key;	/* canonical entry text */
	const char *reason;	/* NULL: none */
	enum entry_origin origin;
	long long expires;
};

/* expired entries (at now) are left out */
struct listset *listset_build(const struct entry_vec *v, long long now);
/* one more owner (snapshots sharing a base list); the owners' thread only */
struct listset *listset_ref(struct listset *l);
/* drops one owner; the last one frees */
void listset_free(struct listset **l);

/* addr may be NULL; hostname NULL or "" when not verified */
int listset_match_client(const struct listset *l, const struct ipaddr *addr,
    const char *hostname, long long now, struct listset_match *m_r);
int listset_match_sender(const struct listset *l, const struct mailaddr *sender,
    long long now, struct listset_match *m_r);
/* country: two upper-case letters (GeoIP); NULL or "" when unknown */
int listset_match_country(const struct listset *l, const char *country, long long now,
    struct listset_match *m_r);

size_t listset_count(const struct listset *l);
size_t listset_memory(const struct listset *l);		/* bytes, all of it */
long long listset_next_expiry(const struct listset *l);	/* 0: none */

#endif
