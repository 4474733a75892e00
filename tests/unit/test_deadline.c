/* deadline: per-request time limits and the minimum data rate, table-driven. */
#include <stdio.h>

#include "service/deadline.h"
#include "tests/unit/unit.h"

/* steps: reads at a time (ms) of n bytes, data or not; then the due time */
struct step { long long at; size_t bytes; int data; int new_request; };

static const struct {
	const char *name;
	int per_request;
	unsigned rate;
	struct step steps[8];
	size_t nsteps;
	unsigned timeout;
	long long due;
} cases[] = {
	{ "idle timeout: each read restarts it", 0, 500,
	  { { 1000, 1, 0, 0 }, { 2900, 1, 0, 0 } }, 2, 3, 5900 },
	{ "per request: a byte at a time does not extend it", 1, 500,
	  { { 1000, 1, 0, 0 }, { 2900, 1, 0, 0 } }, 2, 3, 3000 },
	{ "a new request starts the clock again", 1, 500,
	  { { 2500, 6, 0, 1 }, { 4000, 1, 0, 0 } }, 2, 3, 5500 },
	{ "message data at the rate earns its time", 1, 500,
	  { { 1000, 500, 1, 0 }, { 2000, 500, 1, 0 } }, 2, 3, 5000 },
	{ "a burst earns no more than the time spent", 1, 500,
	  { { 100, 1000000, 1, 0 } }, 1, 3, 3100 },
	{ "message data below the rate earns a little", 1, 500,
	  { { 1000, 5, 1, 0 }, { 2000, 5, 1, 0 } }, 2, 3, 3020 },
	{ "commands earn nothing", 1, 500,
	  { { 1000, 500, 0, 0 } }, 1, 3, 3000 },
	{ "rate 0: data earns nothing", 1, 0,
	  { { 1000, 500, 1, 0 } }, 1, 3, 3000 },
	{ "the timeout in force applies (stress)", 1, 500,
	  { { 1000, 500, 1, 0 } }, 1, 1, 2000 },
};

static void
test_deadline_cases(void)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct deadline d;
		long long due;

		deadline_init(&d, cases[i].per_request, cases[i].rate, 0);
		for (size_t k = 0; k < cases[i].nsteps; k++) {
			const struct step *s = &cases[i].steps[k];

			deadline_read(&d, s->bytes, s->data, s->at);
			if (s->new_request)
				deadline_request(&d, s->at);
		}
		due = deadline_due(&d, cases[i].timeout);
		if (due != cases[i].due) {
			fprintf(stderr, "\n  %s: due %lld, want %lld\n", cases[i].name, due, cases[i].due);
			CU_FAIL("deadline");
		}
	}
}

static void
test_deadline_clock(void)
{
	long long a = deadline_now_ms(), b = deadline_now_ms();

	CU_ASSERT(a > 0);
	CU_ASSERT(b >= a);
}

static CU_TestInfo tests[] = {
	{ "cases", test_deadline_cases },
	{ "monotonic clock", test_deadline_clock },
	{ NULL, NULL },
};

void
test_deadline_register(void)
{
	unit_suite("deadline", tests);
}
