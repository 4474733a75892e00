/*
 * authcheck - password checks off the loop and the failed-login penalty
 * (see authcheck.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "common/cidr.h"
#include "common/connid.h"
#include "common/log.h"
#include "common/sasl.h"
#include "common/stats.h"
#include "common/xmalloc.h"
#include "service/authcheck.h"
#include "service/jobs.h"

struct pending {
	struct pending *prev, *next;	/* waiting out a penalty */
	struct authcheck *ac;
	const struct authcheck_hooks *hooks;
	void *arg;
	struct sasl_server *sasl;
	struct ipaddr addr;
	int has_addr;
	char conn[CONNID_MAX];
	struct event *timer;
};

struct authcheck {
	struct event_base *base;
	struct jobs *jobs;		/* password hashing, bounded */
	struct penalty *penalty;	/* failed logins per client address */
	char door[32];
	char busy_what[64];
	void (*ban)(void *arg, const struct ipaddr *addr, unsigned long seconds, const char *why);
	void *ban_arg;
	unsigned busy;			/* logins answered "busy" since the last log line */
	time_t busy_logged;
	struct pending *waiting;	/* penalty timers under way */
};

struct authcheck *
authcheck_new(struct event_base *base, const char *door, const char *busy_what, unsigned threads,
    size_t max_pending, const struct penalty_conf *pc,
    void (*ban)(void *arg, const struct ipaddr *addr, unsigned long seconds, const char *why),
    void *ban_arg)
{
	struct authcheck *ac = xcalloc(1, sizeof(*ac));

	ac->base = base;
	ac->jobs = jobs_new(base, "auth", threads, max_pending);
	ac->penalty = penalty_new(pc, NULL);	/* the node's table, shared by every door */
	snprintf(ac->door, sizeof(ac->door), "%s", door);
	snprintf(ac->busy_what, sizeof(ac->busy_what), "%s", busy_what);
	ac->ban = ban;
	ac->ban_arg = ban_arg;
	return ac;
}

void
authcheck_free(struct authcheck **acp)
{
	struct authcheck *ac = *acp;

	if (ac == NULL)
		return;
	jobs_free(&ac->jobs);	/* checks in flight call back first */
	while (ac->waiting != NULL) {
		struct pending *p = ac->waiting;

		ac->waiting = p->next;
		event_free(p->timer);
		free(p);
	}
	penalty_free(&ac->penalty);
	free(ac);
	*acp = NULL;
}

static long long
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
count(struct authcheck *ac, int ok)
{
	char name[96];

	snprintf(name, sizeof(name), "auth_total{door=\"%s\",result=\"%s\"}", ac->door,
	    ok ? "success" : "failure");
	stats_add(name, 1);
}

/*
 * A failed login counts against the client's address: the reply waits the
 * penalty, and enough failures put the address on the kill list, shared by
 * every node. The delay in ms.
 */
static unsigned
failed(struct authcheck *ac, const struct ipaddr *addr, const char *conn,
    const struct authcheck_hooks *hooks, void *arg)
{
	int ban = 0;
	unsigned delay;
	char who[CIDR_TEXT_MAX];

	if (addr == NULL)
		return 0;
	delay = penalty_failure(ac->penalty, addr, now_ms(), &ban);
	if (ban && ac->ban != NULL && hooks->may_ban(arg)) {
		const struct penalty_conf *pc = penalty_conf(ac->penalty);

		log_warn("conn=%s auth: %u failed logins from [%s] within %us; on the kill list for "
		    "%lus; reason=auth-ban", conn, pc->ban_count, cidr_addr_format(addr, who),
		    pc->ban_window, pc->ban_time);
		ac->ban(ac->ban_arg, addr, pc->ban_time, "auth-ban");
	}
	return delay;
}

/* a failed login's penalty is over: its refusal goes out now */
static void
penalty_over(evutil_socket_t fd, short what, void *arg)
{
	struct pending *p = arg;
	struct authcheck *ac = p->ac;

	(void)fd;
	(void)what;
	if (p->prev)
		p->prev->next = p->next;
	else
		ac->waiting = p->next;
	if (p->next)
		p->next->prev = p->prev;
	event_free(p->timer);
	p->hooks->done(p->arg, 0);
	free(p);
}

/* the outcome known: counters and penalty; 1 when p now waits a penalty
 * (p is the timer's), else 0 (the outcome may go out) */
static int
outcome(struct authcheck *ac, struct pending *p, int ok)
{
	unsigned delay = 0;

	count(ac, ok);
	if (p->has_addr && ok)
		penalty_success(ac->penalty, &p->addr);
	else if (!ok)
		delay = failed(ac, p->has_addr ? &p->addr : NULL, p->conn, p->hooks, p->arg);
	if (delay == 0 || p->hooks->gone(p->arg))
		return 0;
	p->timer = evtimer_new(ac->base, penalty_over, p);
	if (p->timer == NULL)
		return 0;
	{
		struct timeval tv = { delay / 1000, (delay % 1000) * 1000 };

		p->next = ac->waiting;
		if (ac->waiting)
			ac->waiting->prev = p;
		ac->waiting = p;
		evtimer_add(p->timer, &tv);
	}
	return 1;
}

/* on a job thread: hashing takes milliseconds, not for the event loop */
static void
check_run(void *arg)
{
	struct pending *p = arg;

	sasl_server_check(p->sasl);
}

static void
check_done(void *arg)
{
	struct pending *p = arg;
	const char *out;
	int ok = sasl_server_checked(p->sasl, &out) == SASL_OK;

	if (outcome(p->ac, p, ok))
		return;
	p->hooks->done(p->arg, ok);
	free(p);
}

int
authcheck_finish(struct authcheck *ac, const struct authcheck_req *r,
    const struct authcheck_hooks *hooks, void *arg)
{
	struct pending *p = xcalloc(1, sizeof(*p));

	p->ac = ac;
	p->hooks = hooks;
	p->arg = arg;
	p->sasl = r->sasl;
	if (r->addr != NULL) {
		p->addr = *r->addr;
		p->has_addr = 1;
	}
	snprintf(p->conn, sizeof(p->conn), "%s", r->conn_id ? r->conn_id : "-");
	if (r->sasl == NULL) {	/* decided already (SCRAM, CRAM-MD5, EXTERNAL, malformed) */
		if (outcome(ac, p, r->ok))
			return AUTHCHECK_PENDING;
		free(p);
		return r->ok ? 1 : 0;
	}
	if (jobs_try_submit(ac->jobs, check_run, check_done, p) < 0) {
		/* the hashing pool is full (a guessing storm): no unbounded queue;
		 * said at most once a second, with the count since */
		char who[CIDR_TEXT_MAX];
		time_t now = time(NULL);

		ac->busy++;
		if (now != ac->busy_logged) {
			log_warn("conn=%s auth: %zu password checks pending, %u %s (last from [%s])",
			    p->conn, jobs_pending(ac->jobs), ac->busy, ac->busy_what,
			    p->has_addr ? cidr_addr_format(&p->addr, who) : "unknown");
			ac->busy_logged = now;
			ac->busy = 0;
		}
		free(p);
		return AUTHCHECK_BUSY;
	}
	return AUTHCHECK_PENDING;
}
