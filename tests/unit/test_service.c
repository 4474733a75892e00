/*
 * service/: job pools (bounded queue, a shutdown that cannot hang on its
 * completions), and the penalty math.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/conf.h"
#include "service/jobs.h"
#include "service/penalty.h"
#include "tests/unit/unit.h"

static void job_run(void *arg) { (void)arg; }
static void job_done(void *arg) { (*(unsigned *)arg)++; }

static void
on_alarm(int sig)
{
	(void)sig;
	static const char m[] = "jobs_free hung: the completions filled the pipe\n";
	(void)!write(2, m, sizeof(m) - 1);
	_exit(3);
}

/* 20,000 completions and no loop turn to read them: jobs_free() must
 * return anyway, with every done() called (one pointer per completion in a
 * 64 KiB pipe used to block the workers and the join for ever) */
static void
test_jobs_free_many_completions(void)
{
	struct event_base *base = event_base_new();
	struct jobs *j = jobs_new(base, "test", 4, 0);
	unsigned done = 0;

	signal(SIGALRM, on_alarm);
	alarm(20);
	for (int i = 0; i < 20000; i++)
		jobs_submit(j, job_run, job_done, &done);
	CU_ASSERT_EQUAL(jobs_pending(j), 20000);
	usleep(200000);		/* the workers finish; the loop never runs */
	jobs_free(&j);
	alarm(0);
	CU_ASSERT_PTR_NULL(j);
	CU_ASSERT_EQUAL(done, 20000);
	event_base_free(base);
}

/* a bounded pool refuses past its bound, and takes work again once the
 * loop has collected the completions */
static void
test_jobs_bound(void)
{
	struct event_base *base = event_base_new();
	struct jobs *j = jobs_new(base, "test", 1, 3);
	unsigned done = 0;

	CU_ASSERT_EQUAL(jobs_try_submit(j, job_run, job_done, &done), 0);
	CU_ASSERT_EQUAL(jobs_try_submit(j, job_run, job_done, &done), 0);
	CU_ASSERT_EQUAL(jobs_try_submit(j, job_run, job_done, &done), 0);
	CU_ASSERT_EQUAL(jobs_try_submit(j, job_run, job_done, &done), -1);
	CU_ASSERT_EQUAL(jobs_pending(j), 3);
	for (int i = 0; i < 100 && done < 3; i++)
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(10000);
	CU_ASSERT_EQUAL(done, 3);
	CU_ASSERT_EQUAL(jobs_pending(j), 0);
	CU_ASSERT_EQUAL(jobs_try_submit(j, job_run, job_done, &done), 0);
	jobs_free(&j);
	CU_ASSERT_EQUAL(done, 4);
	event_base_free(base);
}

/* ---- penalty: the pure math ---- */

static void
test_penalty_delay(void)
{
	static const struct {
		unsigned delay, max, n, want;
		const char *name;
	} t[] = {
		{ 2000, 15000, 1, 2000, "first failure: the base delay" },
		{ 2000, 15000, 2, 4000, "doubles" },
		{ 2000, 15000, 3, 8000, "doubles again" },
		{ 2000, 15000, 4, 15000, "capped at the max" },
		{ 2000, 15000, 1000, 15000, "no overflow after many" },
		{ 2000, 15000, 0, 0, "no failure, no delay" },
		{ 0, 15000, 5, 0, "auth_failure_delay = 0 disables" },
		{ 1000, 1000, 3, 1000, "max = delay: flat" },
		{ 3600000, 3600000, 40, 3600000, "an hour, no overflow" },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct penalty_conf c = { t[i].delay, t[i].max, 0, 0, 0 };
		unsigned got = penalty_delay_for(&c, t[i].n);

		if (got != t[i].want)
			fprintf(stderr, "\n  %s: got %u want %u\n", t[i].name, got, t[i].want);
		CU_ASSERT_EQUAL(got, t[i].want);
	}
}

static void
test_penalty_window(void)
{
	static const struct {
		unsigned prev, cur, elapsed, window, want;
		const char *name;
	} t[] = {
		{ 10, 5, 0, 600, 15, "window just turned: all of the previous counts" },
		{ 10, 5, 300, 600, 10, "half way: half of the previous" },
		{ 10, 5, 599, 600, 5, "almost through: next to nothing of the previous" },
		{ 10, 5, 600, 600, 5, "a whole window later: the previous is gone" },
		{ 0, 20, 10, 600, 20, "the current window alone" },
		{ 4000000000u, 1, 0, 600, 4000000001u, "no overflow" },
		{ 10, 5, 0, 0, 5, "no window" },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		unsigned got = penalty_window_count(t[i].prev, t[i].cur, t[i].elapsed, t[i].window);

		if (got != t[i].want)
			fprintf(stderr, "\n  %s: got %u want %u\n", t[i].name, got, t[i].want);
		CU_ASSERT_EQUAL(got, t[i].want);
	}
}

static struct ipaddr
ip(const char *s)
{
	struct ipaddr a;

	CU_ASSERT_EQUAL_FATAL(cidr_addr_parse(s, &a), 0);
	return a;
}

static void
test_penalty_key(void)
{
	struct ipaddr k1, k2, k3;
	struct ipaddr a = ip("2001:db8:1:2:aaaa::1"), b = ip("2001:db8:1:2:bbbb::9"),
	    d = ip("2001:db8:1:3::1"), v4 = ip("192.0.2.7");

	penalty_key(&a, &k1);
	penalty_key(&b, &k2);
	penalty_key(&d, &k3);
	CU_ASSERT_EQUAL(memcmp(&k1, &k2, sizeof(k1)), 0);	/* one /64 */
	CU_ASSERT_NOT_EQUAL(memcmp(&k1, &k3, sizeof(k1)), 0);	/* the next /64 */
	CU_ASSERT_EQUAL(k1.lo, 0);
	penalty_key(&v4, &k1);
	CU_ASSERT_EQUAL(k1.family, 4);
	CU_ASSERT_EQUAL(k1.v4, v4.v4);
}

/* delays per address, a success forgets, the ban at exactly N, once */
static void
test_penalty_sequence(void)
{
	struct penalty_conf c = { 2000, 15000, 20, 600, 3600 };
	struct penalty *p = penalty_new(&c, NULL);
	struct ipaddr a = ip("192.0.2.1"), other = ip("192.0.2.2");
	struct ipaddr v6a = ip("2001:db8::1"), v6b = ip("2001:db8::2");
	long long t = 1000000;
	int ban, bans = 0;

	CU_ASSERT_EQUAL(penalty_failure(p, &a, t, &ban), 2000);
	CU_ASSERT_EQUAL(penalty_failure(p, &a, t, &ban), 4000);
	CU_ASSERT_EQUAL(penalty_failure(p, &other, t, &ban), 2000);	/* its own count */
	penalty_success(p, &a);
	CU_ASSERT_EQUAL(penalty_failure(p, &a, t, &ban), 2000);	/* forgotten */
	/* a has 3 in the window: 17 more ban it, at the 20th and only then */
	for (int i = 0; i < 30; i++) {
		penalty_failure(p, &a, t + i * 1000, &ban);
		if (ban) {
			bans++;
			CU_ASSERT_EQUAL(i, 16);
		}
	}
	CU_ASSERT_EQUAL(bans, 1);
	/* IPv6: one /64 is one guesser; the ban names the address that failed */
	for (int i = 0; i < 19; i++) {
		penalty_failure(p, i % 2 ? &v6a : &v6b, t, &ban);
		CU_ASSERT_FALSE(ban);
	}
	penalty_failure(p, &v6a, t, &ban);
	CU_ASSERT_TRUE(ban);
	penalty_failure(p, &v6a, t, &ban);
	CU_ASSERT_FALSE(ban);		/* banned already */
	penalty_failure(p, &v6b, t, &ban);
	CU_ASSERT_TRUE(ban);		/* its neighbour goes too */
	/* a window and more later the old failures no longer count */
	penalty_failure(p, &other, t + 1300 * 1000, &ban);
	CU_ASSERT_FALSE(ban);
	penalty_free(&p);
	CU_ASSERT_PTR_NULL(p);
}

/* 200,000 addresses through a bounded table: no growth, and a busy
 * guesser is still remembered among them */
static void
test_penalty_churn(void)
{
	struct penalty_conf c = { 1000, 15000, 0, 0, 0 };
	struct penalty *p = penalty_new(&c, NULL);
	struct ipaddr g = ip("198.51.100.9");
	int ban;
	unsigned d = 0;

	for (unsigned i = 0; i < 200000; i++) {
		struct ipaddr x = { .family = 4, .v4 = 0x0a000000u + i };

		penalty_failure(p, &x, 5000000 + i, &ban);
		if (i % 1000 == 0)
			d = penalty_failure(p, &g, 5000000 + i, &ban);
		CU_ASSERT_FALSE(ban);	/* bans off */
	}
	CU_ASSERT_EQUAL(d, 15000);
	penalty_free(&p);
}

static void
test_penalty_conf(void)
{
	static const struct {
		const char *text;
		int rc;
		unsigned delay, max, count, window;
		unsigned long ban_time;
	} t[] = {
		{ "", 0, 2000, 15000, 20, 600, 3600 },
		{ "auth_failure_ban = 0\n", 0, 2000, 15000, 0, 0, 3600 },
		{ "auth_failure_ban_time = 0\n", 0, 2000, 15000, 0, 600, 0 },
		{ "auth_failure_delay = 0\n", 0, 0, 15000, 20, 600, 3600 },
		{ "auth_failure_delay = 20s\n", 0, 20000, 20000, 20, 600, 3600 },
		{ "auth_failure_ban = 5/1m\n", 0, 2000, 15000, 5, 60, 3600 },
		{ "auth_failure_ban = lots\n", -1, 0, 0, 0, 0, 0 },
		{ "auth_failure_ban = 5\n", -1, 0, 0, 0, 0, 0 },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct conf *c = unit_conf(t[i].text);
		struct penalty_conf pc;
		const char *err = NULL;

		CU_ASSERT_EQUAL(penalty_conf_parse(c, &pc, &err), t[i].rc);
		if (t[i].rc == 0) {
			CU_ASSERT_EQUAL(pc.delay_ms, t[i].delay);
			CU_ASSERT_EQUAL(pc.max_delay_ms, t[i].max);
			CU_ASSERT_EQUAL(pc.ban_count, t[i].count);
			CU_ASSERT_EQUAL(pc.ban_window, t[i].window);
			CU_ASSERT_EQUAL(pc.ban_time, t[i].ban_time);
		} else {
			CU_ASSERT_PTR_NOT_NULL(strstr(err, "t.cf:1: auth_failure_ban"));
		}
		conf_free(&c);
	}
}

static CU_TestInfo tests[] = {
	{ "penalty: delay doubles to the max", test_penalty_delay },
	{ "penalty: sliding window estimate", test_penalty_window },
	{ "penalty: IPv6 per /64", test_penalty_key },
	{ "penalty: delays, success, ban at N", test_penalty_sequence },
	{ "penalty: bounded under churn", test_penalty_churn },
	{ "penalty: config keys", test_penalty_conf },
	{ "jobs: shutdown with 20,000 uncollected completions", test_jobs_free_many_completions },
	{ "jobs: bounded pool", test_jobs_bound },
	{ NULL, NULL },
};

void
test_service_register(void)
{
	unit_suite("service", tests);
}
