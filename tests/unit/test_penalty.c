/*
 * service/penalty: one table for every door process of a node. Real
 * processes (fork) count in one table: through its file, through the
 * master's mapping inherited over fork, at the same time without losing a
 * failure, and after one of them died holding a bucket lock.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/cidr.h"
#include "service/penalty.h"
#include "tests/unit/unit.h"

static struct ipaddr
ip(const char *s)
{
	struct ipaddr a;

	memset(&a, 0, sizeof(a));
	CU_ASSERT_EQUAL_FATAL(cidr_addr_parse(s, &a), 0);
	return a;
}

static char dir[64];

static const char *
table_path(const char *name)
{
	static char p[128];

	if (dir[0] == '\0') {
		snprintf(dir, sizeof(dir), "/tmp/pc-penalty.XXXXXX");
		CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
	}
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	unlink(p);
	return p;
}

static void
on_alarm(int sig)
{
	static const char m[] = "penalty: a lock left by a dead process blocks for ever\n";

	(void)sig;
	(void)!write(2, m, sizeof(m) - 1);
	_exit(3);
}

/* ---- a door process driven through pipes: 'f' a failure, 'q' quit ---- */

struct door {
	pid_t pid;
	int cmd, reply;
};

struct outcome {
	unsigned delay;
	int ban;
};

static void
door_main(const struct penalty_conf *c, const char *path, const struct ipaddr *a, int cmd,
    int reply)
{
	struct penalty *p = penalty_new(c, path);
	char op;

	if (!penalty_is_shared(p))
		_exit(2);
	while (read(cmd, &op, 1) == 1 && op == 'f') {
		struct outcome o;

		o.delay = penalty_failure(p, a, 1000000, &o.ban);
		if (write(reply, &o, sizeof(o)) != (ssize_t)sizeof(o))
			_exit(2);
	}
	penalty_free(&p);
	_exit(0);
}

static void
door_start(struct door *d, const struct penalty_conf *c, const char *path,
    const struct ipaddr *a)
{
	int to[2], from[2];

	CU_ASSERT_EQUAL_FATAL(pipe(to), 0);
	CU_ASSERT_EQUAL_FATAL(pipe(from), 0);
	d->pid = fork();
	CU_ASSERT_FATAL(d->pid >= 0);
	if (d->pid == 0) {
		close(to[1]);
		close(from[0]);
		door_main(c, path, a, to[0], from[1]);
	}
	close(to[0]);
	close(from[1]);
	d->cmd = to[1];
	d->reply = from[0];
}

static struct outcome
door_fail(struct door *d)
{
	struct outcome o = { 0, -1 };

	CU_ASSERT_EQUAL(write(d->cmd, "f", 1), 1);
	CU_ASSERT_EQUAL(read(d->reply, &o, sizeof(o)), (ssize_t)sizeof(o));
	return o;
}

static int
door_stop(struct door *d)
{
	int st = -1;

	(void)!write(d->cmd, "q", 1);
	close(d->cmd);
	close(d->reply);
	waitpid(d->pid, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* two processes, one guesser alternating between them: the delay doubles
 * and the ban comes at the count, as if one process saw every failure */
static void
test_penalty_two_processes_one_guesser(void)
{
	static const struct {
		int door;
		unsigned delay;
		int ban;
	} t[] = {
		{ 0, 1000, 0 },		/* the first failure anywhere */
		{ 1, 2000, 0 },		/* the other door knows of it */
		{ 0, 4000, 0 },
		{ 1, 4000, 1 },		/* the 4th: banned, by whichever door saw it */
		{ 0, 4000, 0 },		/* once */
	};
	struct penalty_conf c = { .delay_ms = 1000, .max_delay_ms = 4000, .ban_count = 4,
	    .ban_window = 600, .ban_time = 3600 };
	struct ipaddr a = ip("192.0.2.7");
	const char *path = table_path("two");
	struct door d[2];

	door_start(&d[0], &c, path, &a);	/* both may make the file: one wins */
	door_start(&d[1], &c, path, &a);
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct outcome o = door_fail(&d[t[i].door]);

		CU_ASSERT_EQUAL(o.delay, t[i].delay);
		CU_ASSERT_EQUAL(o.ban, t[i].ban);
	}
	CU_ASSERT_EQUAL(door_stop(&d[0]), 0);
	CU_ASSERT_EQUAL(door_stop(&d[1]), 0);
}

/* two processes failing at once, 3,000 times each: not one failure lost
 * (the 6,001st, counted here, is the one that bans) */
static void
test_penalty_concurrent_no_lost_failure(void)
{
	struct penalty_conf c = { .delay_ms = 1000, .max_delay_ms = 4000, .ban_count = 6001,
	    .ban_window = 600, .ban_time = 3600 };
	struct ipaddr a = ip("2001:db8:1:2::9"), b = ip("2001:db8:1:2::10");	/* one /64 */
	const char *path = table_path("concurrent");
	struct penalty *p = penalty_new(&c, path);
	pid_t pid[2];
	int ban;

	CU_ASSERT_TRUE_FATAL(penalty_is_shared(p));
	for (int k = 0; k < 2; k++) {
		pid[k] = fork();
		CU_ASSERT_FATAL(pid[k] >= 0);
		if (pid[k] == 0) {
			struct penalty *q = penalty_new(&c, path);
			int bans = 0;

			for (int i = 0; i < 3000; i++) {
				penalty_failure(q, k ? &a : &b, 1000000 + i, &ban);
				bans += ban;
			}
			penalty_free(&q);
			_exit(bans == 0 ? 0 : 1);
		}
	}
	for (int k = 0; k < 2; k++) {
		int st = -1;

		waitpid(pid[k], &st, 0);
		CU_ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	CU_ASSERT_EQUAL(penalty_failure(p, &a, 1003000, &ban), 4000);
	CU_ASSERT_EQUAL(ban, 1);
	penalty_free(&p);
}

/* a worker killed while it held a bucket lock: the next one goes on */
static void
test_penalty_dead_holder(void)
{
	struct penalty_conf c = { .delay_ms = 1000, .max_delay_ms = 8000 };
	struct ipaddr a = ip("198.51.100.3");
	const char *path = table_path("dead");
	struct penalty *p = penalty_new(&c, path);
	pid_t pid;
	int st = -1, ban;

	CU_ASSERT_EQUAL(penalty_failure(p, &a, 1000000, &ban), 1000);
	pid = fork();
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0) {
		struct penalty *q = penalty_new(&c, path);

		penalty_lock_for_test(q, &a);
		_exit(0);	/* dies holding it */
	}
	waitpid(pid, &st, 0);
	signal(SIGALRM, on_alarm);
	alarm(10);
	CU_ASSERT_EQUAL(penalty_failure(p, &a, 1000001, &ban), 2000);	/* its count kept */
	penalty_success(p, &a);
	CU_ASSERT_EQUAL(penalty_failure(p, &a, 1000002, &ban), 1000);
	alarm(0);
	signal(SIGALRM, SIG_DFL);
	penalty_free(&p);
}

/* the master's table (penalty_table_open) reaches the processes it forks
 * without a path; a new start makes it fresh */
static void
test_penalty_node_table_inherited(void)
{
	struct penalty_conf c = { .delay_ms = 1000, .max_delay_ms = 8000 };
	struct ipaddr a = ip("203.0.113.5");
	const char *path = table_path("node");
	const char *err = NULL;
	struct penalty *p;
	pid_t pid;
	int st = -1, ban;

	CU_ASSERT_EQUAL_FATAL(penalty_table_open(path, &err), 0);
	pid = fork();
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0) {
		struct penalty *q = penalty_new(&c, NULL);
		unsigned d1 = penalty_failure(q, &a, 1000000, &ban);
		unsigned d2 = penalty_failure(q, &a, 1000001, &ban);

		_exit(penalty_is_shared(q) && d1 == 1000 && d2 == 2000 ? 0 : 1);
	}
	waitpid(pid, &st, 0);
	CU_ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	p = penalty_new(&c, NULL);	/* e.g. the worker after a reload */
	CU_ASSERT_TRUE(penalty_is_shared(p));
	CU_ASSERT_EQUAL(penalty_failure(p, &a, 1000002, &ban), 4000);
	penalty_free(&p);
	/* a restart of the daemon: a fresh table */
	CU_ASSERT_EQUAL_FATAL(penalty_table_open(path, &err), 0);
	p = penalty_new(&c, NULL);
	CU_ASSERT_EQUAL(penalty_failure(p, &a, 1000003, &ban), 1000);
	penalty_free(&p);
	penalty_table_close();
	p = penalty_new(&c, NULL);	/* no node table: one of its own */
	CU_ASSERT_FALSE(penalty_is_shared(p));
	penalty_free(&p);
}

/* a file that is not a table of this layout is never used: the process
 * counts on its own (and says so in the log) */
static void
test_penalty_foreign_file(void)
{
	static const char *const content[] = { "", "short", NULL };
	struct penalty_conf c = { .delay_ms = 1000, .max_delay_ms = 8000 };

	for (size_t i = 0; content[i] != NULL; i++) {
		const char *path = table_path("foreign");
		FILE *f = fopen(path, "w");
		struct penalty *p;

		CU_ASSERT_PTR_NOT_NULL_FATAL(f);
		fputs(content[i], f);
		fclose(f);
		p = penalty_new(&c, path);
		CU_ASSERT_FALSE(penalty_is_shared(p));
		penalty_free(&p);
	}
	{	/* the right size, wrong content */
		const char *path = table_path("foreign2");
		const char *shared = table_path("model");
		struct penalty *m = penalty_new(&c, shared), *p;
		FILE *in = fopen(shared, "rb"), *out = fopen(path, "wb");
		int ch;
		long n = 0;

		CU_ASSERT_PTR_NOT_NULL_FATAL(in);
		CU_ASSERT_PTR_NOT_NULL_FATAL(out);
		while ((ch = fgetc(in)) != EOF)
			fputc(n++ < 8 ? 'X' : ch, out);	/* another magic */
		fclose(in);
		fclose(out);
		p = penalty_new(&c, path);
		CU_ASSERT_FALSE(penalty_is_shared(p));
		penalty_free(&p);
		penalty_free(&m);
	}
}

static void
cleanup_dir(void)
{
	static const char *const names[] = { "two", "concurrent", "dead", "node", "foreign",
	    "foreign2", "model" };
	char p[128];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
		unlink(p);
	}
	rmdir(dir);
	dir[0] = '\0';
}

static void
test_penalty_cleanup(void)
{
	cleanup_dir();
	CU_PASS("removed");
}

static CU_TestInfo tests[] = {
	{ "penalty: two processes, one guesser", test_penalty_two_processes_one_guesser },
	{ "penalty: concurrent processes lose no failure", test_penalty_concurrent_no_lost_failure },
	{ "penalty: a dead lock holder blocks nobody", test_penalty_dead_holder },
	{ "penalty: the master's table reaches forked workers", test_penalty_node_table_inherited },
	{ "penalty: a foreign file is never used", test_penalty_foreign_file },
	{ "penalty: (clean up)", test_penalty_cleanup },
	{ NULL, NULL },
};

void
test_penalty_register(void)
{
	unit_suite("penalty (shared)", tests);
}
