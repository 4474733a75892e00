/*
 * statspub - this node's counters into the shared Redis store.
 *
 *   statspub_start(conf)  redis:// lists: open a store of its own (connects
 *                         lazily) and start the thread; file: nothing
 *   statspub_stop()       wake the thread, join it, close the store
 *
 * Each round copies the counters (stats_each) and stores them in one
 * pipelined MULTI (liststore_stats_publish), then sleeps on a stop pipe.
 * Failures are logged once a minute at most; the next round retries.
 */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/conf.h"
#include "common/log.h"
#include "common/stats.h"
#include "common/xmalloc.h"
#include "daemon/statspub.h"
#include "storage-adapter/liststore.h"

static struct liststore *pstore;
static char *pnode;
static int pinterval;
static pthread_t pthread;
static int prunning;
static int pstop[2] = { -1, -1 };

struct series_vec {
	struct stats_series *v;
	size_t n, cap;
};

static void
collect(void *arg, const char *name, uint64_t value)
{
	struct series_vec *sv = arg;

	if (sv->n == sv->cap) {
		sv->cap = sv->cap ? 2 * sv->cap : 64;
		sv->v = xrealloc(sv->v, sv->cap * sizeof(*sv->v));
	}
	sv->v[sv->n].name = (char *)name;	/* stable: the mapped file */
	sv->v[sv->n++].value = (unsigned long long)value;
}

static void *
statspub_main(void *arg)
{
	time_t last_log = 0;
	int failing = 0;

	(void)arg;
	for (;;) {
		struct series_vec sv = { NULL, 0, 0 };
		struct pollfd pfd = { .fd = pstop[0], .events = POLLIN };
		const char *err;

		if (stats_each(collect, &sv) == 0) {
			if (liststore_stats_publish(pstore, pnode, sv.v, sv.n, 3 * pinterval,
			    &err) < 0) {
				time_t now = time(NULL);

				if (now - last_log >= 60) {
					log_warn("counters not shared: %s (retrying every %d s)", err,
					    pinterval);
					last_log = now;
				}
				failing = 1;
			} else if (failing) {
				log_info("counters shared again (node %s)", pnode);
				failing = 0;
				last_log = 0;
			}
		}
		free(sv.v);
		if (poll(&pfd, 1, pinterval * 1000) != 0)
			break;	/* stop byte (or the pipe failed: stop too) */
	}
	return NULL;
}

int
statspub_node_ok(const char *node)
{
	size_t n = strlen(node);

	if (n == 0 || n > 64)
		return 0;
	for (const char *p = node; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		    (*p >= '0' && *p <= '9') || *p == '.' || *p == '-' || *p == '_'))
			return 0;
	return 1;
}

int
statspub_start(const struct conf *c, const char **error_r)
{
	static char err[600];
	const char *node = conf_get(c, "node_name"), *e;

	if (strncmp(conf_get(c, "lists"), "redis://", 8) != 0 &&
	    strncmp(conf_get(c, "lists"), "redis+unix://", 13) != 0)
		return 0;
	if (!statspub_node_ok(node)) {
		snprintf(err, sizeof(err), "%s: node_name \"%.64s\": 1 to 64 of A-Z a-z 0-9 . - _",
		    conf_where(c, "node_name"), node);
		*error_r = err;
		return -1;
	}
	pstore = liststore_open_conf(c, &e);
	if (pstore == NULL) {
		snprintf(err, sizeof(err), "counters not shared: %.500s", e);
		*error_r = err;
		return -1;
	}
	if (!liststore_has_stats(pstore)) {
		liststore_free(&pstore);
		return 0;
	}
	pnode = xstrdup(node);
	pinterval = (int)conf_get_int(c, "stats_publish_interval");
	if (pipe2(pstop, O_CLOEXEC) < 0 || pthread_create(&pthread, NULL, statspub_main, NULL) != 0) {
		*error_r = "counters not shared: cannot start the publishing thread";
		statspub_stop();
		return -1;
	}
	prunning = 1;
	return 0;
}

void
statspub_stop(void)
{
	if (prunning) {
		if (write(pstop[1], "x", 1) < 0)
			return;	/* cannot wake it: the process is on its way out anyway */
		pthread_join(pthread, NULL);
		prunning = 0;
	}
	for (int i = 0; i < 2; i++)
		if (pstop[i] >= 0) {
			close(pstop[i]);
			pstop[i] = -1;
		}
	if (pstore != NULL)
		liststore_free(&pstore);
	free(pnode);
	pnode = NULL;
}
