/*
 * door_loop - the stop and drain signals and the one-second tick every
 * door's loop takes (contract in door_loop.h).
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

#include <event2/event.h>

#include "common/log.h"
#include "common/xmalloc.h"
#include "service/conn.h"
#include "service/door_loop.h"
#include "service/users.h"

struct door_loop {
	struct conn_server *cs;
	struct event_base *base;
	const char *door;
	unsigned drain_seconds;
	struct users *users;
	void (*drain)(void *arg);
	void (*tick)(void *arg, time_t now);
	void *arg;
	struct event *sig_term, *sig_int, *sig_drain, *every_second;
};

static void
stop_cb(evutil_socket_t sig, short what, void *arg)
{
	struct door_loop *dl = arg;

	(void)what;
	log_info("%s: signal %d, stopping", dl->door, (int)sig);
	event_base_loopexit(dl->base, NULL);
}

void
door_loop_exit(void *base)
{
	event_base_loopexit(base, NULL);
}

/* live reload: the new worker takes the listeners */
static void
drain_cb(evutil_socket_t sig, short what, void *arg)
{
	struct door_loop *dl = arg;

	(void)sig;
	(void)what;
	if (dl->drain != NULL)
		dl->drain(dl->arg);
	else
		conn_server_drain(dl->cs, dl->drain_seconds, door_loop_exit, dl->base);
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct door_loop *dl = arg;
	time_t now = time(NULL);

	(void)fd;
	(void)what;
	conn_server_tick(dl->cs, now);
	if (dl->users != NULL)
		users_tick(dl->users, now);
	if (dl->tick != NULL)
		dl->tick(dl->arg, now);
}

struct door_loop *
door_loop_new(struct conn_server *cs, const char *door, unsigned drain_seconds,
    struct users *users, void (*drain)(void *arg), void (*tick)(void *arg, time_t now),
    void *arg)
{
	struct door_loop *dl = xcalloc(1, sizeof(*dl));
	struct timeval one = { 1, 0 };
	sigset_t usr2;

	dl->cs = cs;
	dl->base = conn_server_base(cs);
	dl->door = door;
	dl->drain_seconds = drain_seconds;
	dl->users = users;
	dl->drain = drain;
	dl->tick = tick;
	dl->arg = arg;
	dl->sig_term = evsignal_new(dl->base, SIGTERM, stop_cb, dl);
	dl->sig_int = evsignal_new(dl->base, SIGINT, stop_cb, dl);
	dl->sig_drain = evsignal_new(dl->base, SIGUSR2, drain_cb, dl);
	dl->every_second = event_new(dl->base, -1, EV_PERSIST, tick_cb, dl);
	evsignal_add(dl->sig_term, NULL);
	evsignal_add(dl->sig_int, NULL);
	evsignal_add(dl->sig_drain, NULL);
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	pthread_sigmask(SIG_UNBLOCK, &usr2, NULL);
	event_add(dl->every_second, &one);
	return dl;
}

void
door_loop_run(struct door_loop *dl)
{
	event_base_dispatch(dl->base);
}

void
door_loop_free(struct door_loop **dlp)
{
	struct door_loop *dl = *dlp;

	if (dl == NULL)
		return;
	event_free(dl->sig_term);
	event_free(dl->sig_int);
	event_free(dl->sig_drain);
	event_free(dl->every_second);
	free(dl);
	*dlp = NULL;
}
