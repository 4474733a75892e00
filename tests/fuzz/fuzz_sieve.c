/*
 * libFuzzer target: the Sieve lexer, parser and compile step, and the
 * evaluator on what compiles. Property: nothing crashes or leaks; a failed
 * compile always says why (at least one "t..." error); a run never exceeds
 * its CPU budget by more than one step's work.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rules/sieve.h"

#define MSG "From: a@example.org\r\nTo: b+c@example.com\r\nSubject: fuzz\r\n\r\nbody\r\n"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sieve_limits l;
	sieve_limits_default(&l);
	l.max_cpu_steps = 20000;
	l.max_include_depth = 0;	/* no file access from fuzz input */
	struct sieve_compile_opts o = { .limits = &l, .dir = "/nonexistent" };
	struct sieve_errors err = { 0 };
	struct sieve_script *s = NULL;
	if (sieve_compile("t", (const char *)data, size, &o, &s, &err) < 0) {
		if (err.n == 0 || err.msg[0][0] != 't')
			abort();
	} else {
		static struct sieve_msg *m;
		if (m == NULL) {
			m = sieve_msg_parse(MSG, strlen(MSG));
			sieve_msg_set_env(m, "from", "a@example.org");
			sieve_msg_set_env(m, "to", "b+c@example.com");
		}
		struct sieve_result *r = NULL;
		struct sieve_run_opts ro = { .limits = &l };
		(void)sieve_run(s, m, &ro, &r, &err);
		sieve_result_free(&r);
	}
	sieve_script_free(&s);
	sieve_errors_clear(&err);
	return 0;
}
