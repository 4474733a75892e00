/*
 * service/: job pools (bounded queue, a shutdown that cannot hang on its
 * completions), and the penalty math.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "service/jobs.h"
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

static CU_TestInfo tests[] = {
	{ "jobs: shutdown with 20,000 uncollected completions", test_jobs_free_many_completions },
	{ "jobs: bounded pool", test_jobs_bound },
	{ NULL, NULL },
};

void
test_service_register(void)
{
	unit_suite("service", tests);
}
