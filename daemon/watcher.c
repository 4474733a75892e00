/*
 * watcher - one thread that owns the list store for the daemon.
 *
 *   watcher_new()     first load; publish the first snapshot
 *   watcher_start()   poll the store every WATCH_INTERVAL_MS, rebuild and
 *                     publish on change or when an entry expires
 *   watcher_ban()     queue an auto-ban (from milter threads: a pipe write)
 *
 * All disk I/O for lists happens on this thread, so no milter callback ever
 * waits for it. Requests arrive through a non-blocking pipe whose records
 * are smaller than PIPE_BUF, so writes are atomic.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/xmalloc.h"
#include "daemon/watcher.h"

#define WATCH_INTERVAL_MS 200

struct ban_req {
	struct ipaddr addr;
	unsigned long seconds;
	char why[48];
	int stop;
};

struct watcher {
	struct liststore *store;
	struct snapref *snaps;
	struct entry_vec lists[LIST_KINDS];
	long long next_expiry;
	int pipefd[2];
	pthread_t thread;
	int running;
	void (*tick)(void);
};

void
watcher_set_tick(struct watcher *w, void (*tick)(void))
{
	w->tick = tick;
}

static int
load_all(struct watcher *w, int force, int *changed_r, const char **error_r)
{
	*changed_r = 0;
	for (int k = 0; k < LIST_KINDS; k++) {
		struct entry_vec v = { 0 };

		if (!force && !liststore_changed(w->store, (enum list_kind)k))
			continue;
		if (liststore_load(w->store, (enum list_kind)k, &v, error_r) < 0) {
			entry_vec_clear(&v);
			return -1;
		}
		entry_vec_clear(&w->lists[k]);
		w->lists[k] = v;
		*changed_r = 1;
	}
	return 0;
}

static struct snapshot *
build(struct watcher *w)
{
	long long now = (long long)time(NULL);
	struct listset *kill = listset_build(&w->lists[LIST_KILL], now);
	struct listset *accept = listset_build(&w->lists[LIST_ACCEPT], now);
	long long a = listset_next_expiry(kill), b = listset_next_expiry(accept);

	w->next_expiry = a == 0 ? b : (b == 0 || a < b) ? a : b;
	return snapshot_new(kill, accept);
}

struct watcher *
watcher_new(struct liststore *store, struct snapref *snaps, const char **error_r)
{
	struct watcher *w = xcalloc(1, sizeof(*w));
	struct snapshot *s;
	int changed;

	w->store = store;
	w->snaps = snaps;
	w->pipefd[0] = w->pipefd[1] = -1;
	if (load_all(w, 1, &changed, error_r) < 0) {
		for (int k = 0; k < LIST_KINDS; k++)
			entry_vec_clear(&w->lists[k]);
		free(w);
		return NULL;
	}
	s = build(w);
	log_info("lists loaded: %zu kill, %zu accept entries in force",
	    listset_count(s->list[LIST_KILL]), listset_count(s->list[LIST_ACCEPT]));
	snapref_init(snaps, s);
	return w;
}

static void
do_ban(struct watcher *w, const struct ban_req *r)
{
	struct list_entry e;
	char a[CIDR_TEXT_MAX];
	const char *err;

	memset(&e, 0, sizeof(e));
	cidr_addr_format(&r->addr, a);
	if (listentry_parse_key(a, &e, &err) < 0) {
		log_error("auto-ban of %s: %s", a, err);
		return;
	}
	e.added = (long long)time(NULL);
	e.expires = e.added + (long long)r->seconds;
	e.origin = ORIGIN_AUTOBAN;
	e.reason = xasprintf("%s", r->why);
	if (liststore_add(w->store, LIST_KILL, &e, &err) < 0)
		log_error("auto-ban of %s not saved: %s", a, err);
	else
		log_info("auto-ban: %s on the kill list for %lus (%s)", a, r->seconds, r->why);
	listentry_clear(&e);
}

static void *
watcher_main(void *arg)
{
	struct watcher *w = arg;

	for (;;) {
		struct pollfd pfd = { .fd = w->pipefd[0], .events = POLLIN };
		int n = poll(&pfd, 1, WATCH_INTERVAL_MS);
		int changed = 0, banned = 0;
		const char *err;

		if (w->tick != NULL)
			w->tick();
		if (n > 0) {
			struct ban_req r;
			ssize_t got;

			while ((got = read(w->pipefd[0], &r, sizeof(r))) == (ssize_t)sizeof(r)) {
				if (r.stop)
					return NULL;
				do_ban(w, &r);
				banned = 1;
			}
		}
		if (load_all(w, 0, &changed, &err) < 0) {
			/* keep enforcing the last good snapshot */
			log_warn("lists not reloaded, the previous ones stay in force: %s", err);
			continue;
		}
		if (changed || banned ||
		    (w->next_expiry != 0 && (long long)time(NULL) >= w->next_expiry)) {
			struct snapshot *s = build(w);

			if (changed)
				log_info("lists reloaded: %zu kill, %zu accept entries in force",
				    listset_count(s->list[LIST_KILL]),
				    listset_count(s->list[LIST_ACCEPT]));
			snapref_publish(w->snaps, s);
		}
	}
}

int
watcher_start(struct watcher *w, const char **error_r)
{
	if (pipe2(w->pipefd, O_CLOEXEC) < 0) {
		*error_r = "pipe2 failed";
		return -1;
	}
	fcntl(w->pipefd[0], F_SETFL, O_NONBLOCK);
	fcntl(w->pipefd[1], F_SETFL, O_NONBLOCK);
	if (pthread_create(&w->thread, NULL, watcher_main, w) != 0) {
		*error_r = "cannot start the list watcher thread";
		return -1;
	}
	w->running = 1;
	return 0;
}

void
watcher_ban(void *arg, const struct ipaddr *addr, unsigned long seconds, const char *why)
{
	struct watcher *w = arg;
	struct ban_req r;

	memset(&r, 0, sizeof(r));
	r.addr = *addr;
	r.seconds = seconds;
	snprintf(r.why, sizeof(r.why), "%s", why ? why : "auto-ban");
	if (write(w->pipefd[1], &r, sizeof(r)) != (ssize_t)sizeof(r))
		log_warn("auto-ban queue full; ban not recorded");
}

void
watcher_stop_and_free(struct watcher **wp)
{
	struct watcher *w = *wp;

	if (w == NULL)
		return;
	if (w->running) {
		struct ban_req r;
		int fl = fcntl(w->pipefd[1], F_GETFL);

		memset(&r, 0, sizeof(r));
		r.stop = 1;
		fcntl(w->pipefd[1], F_SETFL, fl & ~O_NONBLOCK);
		if (write(w->pipefd[1], &r, sizeof(r)) != (ssize_t)sizeof(r))
			log_warn("cannot stop the list watcher");
		pthread_join(w->thread, NULL);
	}
	if (w->pipefd[0] >= 0)
		close(w->pipefd[0]);
	if (w->pipefd[1] >= 0)
		close(w->pipefd[1]);
	for (int k = 0; k < LIST_KINDS; k++)
		entry_vec_clear(&w->lists[k]);
	free(w);
	*wp = NULL;
}
