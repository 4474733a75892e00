/*
 * libFuzzer target: the Sieve lexer, parser and compile step, and the
 * evaluator on what compiles. Input: SCRIPT, or SCRIPT NUL MESSAGE (then the
 * evaluator runs on that random message instead of a fixed one).
 * Property: nothing crashes or leaks; a failed compile always says why (at
 * least one "t..." error); runs stay within their CPU budget.
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
	const uint8_t *nul = memchr(data, 0, size);
	size_t slen = nul ? (size_t)(nul - data) : size;
	if (sieve_compile("t", (const char *)data, slen, &o, &s, &err) < 0) {
		if (err.n == 0 || err.msg[0][0] != 't')
			abort();
	} else {
		static struct sieve_msg *fixed;
		struct sieve_msg *m;
		if (nul) {
			/* a message with NULs in it is cut there: the doors pass text */
			char *t = strndup((const char *)nul + 1, size - slen - 1);
			m = sieve_msg_parse(t, strlen(t));
			free(t);
		} else {
			if (fixed == NULL)
				fixed = sieve_msg_parse(MSG, strlen(MSG));
			m = fixed;
		}
		sieve_msg_set_env(m, "from", "a@example.org");
		sieve_msg_set_env(m, "to", "b+c@example.com");
		struct sieve_result *r = NULL;
		struct sieve_run_opts ro = { .limits = &l };
		(void)sieve_run(s, m, &ro, &r, &err);
		sieve_result_free(&r);
		if (m != fixed)
			sieve_msg_free(&m);
	}
	sieve_script_free(&s);
	sieve_errors_clear(&err);
	return 0;
}
