#ifndef PC_SVC_DOOR_LOOP_H
#define PC_SVC_DOOR_LOOP_H
/*
 * door_loop - the event loop's scaffolding every door's *_server_run()
 * shares (SMTP, POP3, IMAP), around its struct conn_server:
 *
 *   door_loop_new()   after conn_server_listen(): SIGTERM and SIGINT stop
 *                     the loop ("DOOR: signal N, stopping" in the log);
 *                     SIGUSR2 drains for a live reload (the door's drain(),
 *                     or conn_server_drain() for drain_seconds), and the
 *                     loop ends once drained; once a second
 *                     conn_server_tick(), users_tick() (service/users: the
 *                     users file reopened when it changed), then the door's
 *                     tick(). Unblocks
 *                     SIGUSR2 (the master spawns a worker with it blocked:
 *                     one sent early waits for us).
 *   door_loop_run()   dispatch until stopped or drained
 *   door_loop_exit()  the drained callback for a door's own drain(): its
 *                     arg is the event base; ends the loop
 *   door_loop_free()  after the door's teardown, just before
 *                     event_base_free(): until then a SIGTERM or SIGINT
 *                     (the master stopping) is only noted by the loop, so
 *                     the work the teardown waits for (deliveries, checks in
 *                     flight) is not cut short
 *
 * Owner: the event loop's thread; nothing here blocks.
 */
#include <time.h>

struct conn_server;
struct door_loop;
struct users;

/* users: the door's, or NULL; drain NULL: conn_server_drain(cs,
 * drain_seconds, door_loop_exit, base); tick may be NULL; both get arg */
struct door_loop *door_loop_new(struct conn_server *cs, const char *door, unsigned drain_seconds,
    struct users *users, void (*drain)(void *arg), void (*tick)(void *arg, time_t now),
    void *arg);
void door_loop_run(struct door_loop *dl);
void door_loop_exit(void *base);
void door_loop_free(struct door_loop **dl);

#endif
