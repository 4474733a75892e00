#ifndef PC_ANVIL_H
#define PC_ANVIL_H
/*
 * anvil - connection counts and connection rates per client address, for
 * every network door (named after Postfix's anvil(8)). IPv4 addresses count
 * one by one, IPv6 addresses per /64: one host holds a whole /64 as easily
 * as one address.
 *
 * Not thread-safe: one table per event loop. Pure C, no libevent.
 */
#include <stddef.h>
#include <time.h>

#include "common/cidr.h"

struct anvil;

/* rate_window: seconds over which anvil_rate() counts connections; 0 keeps
 * no rates (an address is forgotten as soon as its count drops to 0) */
struct anvil *anvil_new(unsigned rate_window);
void anvil_free(struct anvil **a);

/* a connection from addr opened; returns the address's count including it */
unsigned anvil_connect(struct anvil *a, const struct ipaddr *addr, time_t now);
/* one connection from addr closed; -1 if none was open (a caller's bug) */
int anvil_disconnect(struct anvil *a, const struct ipaddr *addr, time_t now);
/* open connections from addr (its /64 for IPv6) */
unsigned anvil_count(const struct anvil *a, const struct ipaddr *addr);
/* connections opened from addr in the current rate window */
unsigned anvil_rate(const struct anvil *a, const struct ipaddr *addr, time_t now);
/* forget the addresses with no connection and no rate left; call now and then */
void anvil_expire(struct anvil *a, time_t now);
/* addresses remembered */
size_t anvil_size(const struct anvil *a);

#endif
