#ifndef PC_DOWNSTREAM_H
#define PC_DOWNSTREAM_H
#include <stddef.h>

/*
 * The gateway's SMTP client session to the downstream MTA, for pass-through.
 * Driven by the event loop (non-blocking, no thread): each step takes a
 * callback that gets the downstream's reply line ("CODE TEXT" of the last
 * line, made printable) or a 4xx of our own when the network fails. A
 * callback runs at most once per step, always later from the loop (never
 * inside the call that asked for it), and never after downstream_close().
 * Owner: the event loop's thread.
 */
struct event_base;
struct downstream;
struct downstream_set;

#define DOWN_REPLY_MAX 512

typedef void (*downstream_cb)(void *arg, const char *reply);

/* every session of one loop; freeing the set closes what is left.
 * cache_time: seconds a session whose message is done waits for the next
 * one (relay_connection_cache_time); 0: one session per message */
struct downstream_set *downstream_set_new(struct event_base *base, unsigned cache_time);
void downstream_set_free(struct downstream_set **set);
/* sessions open (also cached ones and those saying QUIT) */
size_t downstream_set_count(const struct downstream_set *set);
/* sessions waiting in the cache */
size_t downstream_set_cached(const struct downstream_set *set);

/*
 * Connect to "[HOST]:PORT" (numeric), greeting, EHLO (HELO when EHLO is
 * refused), MAIL FROM:<sender>, on its own: the owner may open the session
 * as soon as it knows the sender and ask for the first RCPT later. A
 * failure is kept and answers that RCPT. timeout: seconds for each reply
 * and each stalled write. conn_id: the client session's (common/connid),
 * carried on the session's log lines while it serves that one.
 */
struct downstream *downstream_open(struct downstream_set *set, const char *target,
    const char *helo, unsigned timeout, const char *sender, const char *conn_id);
/* a RCPT, the first one possibly while the session is still opening (then
 * with MAIL in one write when the downstream offers PIPELINING); cb gets
 * its reply, or why the session failed (then it is of no further use) */
void downstream_rcpt(struct downstream *d, const char *rcpt, downstream_cb cb, void *arg);
/*
 * Message bytes (dot-stuffing removed), passed on as they come with the
 * stuffing added back. The first call sends DATA; head (our Received:
 * line) and the bytes follow once the downstream said 354. Never waits.
 */
void downstream_send(struct downstream *d, const char *head, const char *p, size_t n);
/* bytes given to downstream_send() and not yet on the wire (0 once the
 * session is dead: nothing more will be sent) */
size_t downstream_queued(const struct downstream *d);
/* once, later from the loop: cb(arg) when fewer than below bytes are queued
 * (at once if that is so now), or when the session died; never after
 * downstream_close(). The owner stops reading its client meanwhile. */
void downstream_wait_room(struct downstream *d, size_t below, void (*cb)(void *arg), void *arg);
/* the end of the message (DATA first if nothing was sent): the final dot;
 * cb gets the downstream's verdict, or why the message did not get there */
void downstream_finish(struct downstream *d, const char *head, downstream_cb cb, void *arg);
/* give the session up: into the cache when its message is done, QUIT when
 * it is between steps, else just close (a message cut short without its
 * final dot is discarded downstream) */
void downstream_close(struct downstream **d);
/* "[HOST]:PORT" well formed */
int downstream_target_is_valid(const char *target);

#endif
