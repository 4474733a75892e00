/*
 * test_stats - the shared counters: names that are counted and names that
 * are refused, and many processes counting into one file without a loss.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/stats.h"
#include "common/xmalloc.h"
#include "tests/unit/unit.h"

static const struct {
	const char *name;
	const char *series;
	int counted;
} name_rows[] = {
	{ "plain counter", "connections_total", 1 },
	{ "labels", "verdicts_total{door=\"smtp\",reason=\"relay\"}", 1 },
	{ "upper case metric name", "Verdicts_total", 0 },
	{ "empty", "", 0 },
	{ "unclosed labels", "x_total{door=\"smtp\"", 0 },
	{ "backslash in a label value", "x_total{door=\"a\\\"\"}", 0 },
	{ "newline in a label value", "x_total{door=\"a\nb\"}", 0 },
	{ "labels without a name", "{door=\"x\"}", 0 },
};

static void
test_names(void)
{
	char *dir = unit_tmpdir(), *path = xasprintf("%s/stats", dir);
	const char *err;

	CU_ASSERT_FATAL(stats_open(path, &err) == 0);
	for (size_t i = 0; i < sizeof(name_rows) / sizeof(name_rows[0]); i++) {
		stats_add(name_rows[i].series, 5);
		if (stats_get(name_rows[i].series) != (name_rows[i].counted ? 5u : 0u))
			CU_FAIL(name_rows[i].name);
	}
	stats_close();
	free(path);
	free(dir);
}

/* 4 processes x 20,000 adds over 50 series: every add lands */
static void
test_processes_share_one_file(void)
{
	char *dir = unit_tmpdir(), *path = xasprintf("%s/stats", dir);
	const char *err;
	pid_t kids[4];
	char name[64];
	uint64_t total = 0;

	CU_ASSERT_FATAL(stats_open(path, &err) == 0);
	for (int k = 0; k < 4; k++) {
		kids[k] = fork();
		CU_ASSERT_FATAL(kids[k] >= 0);
		if (kids[k] == 0) {
			for (int i = 0; i < 20000; i++) {
				snprintf(name, sizeof(name), "t_total{n=\"%d\"}", i % 50);
				stats_add(name, 1);
			}
			_exit(0);
		}
	}
	for (int k = 0; k < 4; k++)
		waitpid(kids[k], NULL, 0);
	for (int i = 0; i < 50; i++) {
		snprintf(name, sizeof(name), "t_total{n=\"%d\"}", i);
		CU_ASSERT_EQUAL(stats_get(name), 4 * 400);
		total += stats_get(name);
	}
	CU_ASSERT_EQUAL(total, 80000);
	stats_close();
	/* the admin command's read-only view sees the same */
	CU_ASSERT_FATAL(stats_open_readonly(path, &err) == 0);
	CU_ASSERT_EQUAL(stats_get("t_total{n=\"7\"}"), 1600);
	stats_close();
	free(path);
	free(dir);
}

struct seen {
	int n, dropped;
	uint64_t sum;
};

static void
each_cb(void *arg, const char *name, uint64_t value)
{
	struct seen *s = arg;

	if (strcmp(name, "dropped_series_total") == 0) {
		s->dropped++;
		return;
	}
	s->n++;
	s->sum += value;
}

/* stats_each (what daemon/statspub.c shares): every counted series once */
static void
test_each(void)
{
	char *dir = unit_tmpdir(), *path = xasprintf("%s/stats", dir);
	struct seen s = { 0, 0, 0 };
	const char *err;

	CU_ASSERT(stats_each(each_cb, &s) == -1);	/* before stats_open() */
	CU_ASSERT_FATAL(stats_open(path, &err) == 0);
	stats_add("a_total", 2);
	stats_add("b_total{door=\"smtp\"}", 3);
	stats_add("a_total", 4);
	CU_ASSERT(stats_each(each_cb, &s) == 0);
	CU_ASSERT_EQUAL(s.n, 2);
	CU_ASSERT_EQUAL(s.dropped, 1);
	CU_ASSERT_EQUAL(s.sum, 9);
	stats_close();
	free(path);
	free(dir);
}

static CU_TestInfo tests[] = {
	{ "series names: counted or refused", test_names },
	{ "processes counting into one file lose nothing", test_processes_share_one_file },
	{ "stats_each visits every series once", test_each },
	{ NULL, NULL },
};

void
test_stats_register(void)
{
	unit_suite("stats", tests);
}
