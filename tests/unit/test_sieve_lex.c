/* sieve lexer: tokens, strings (escapes, text: with dot-stuffing, CRLF),
 * numbers with K/M/G and their limits, comments, errors with LINE:COLUMN. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules/sieve_ast.h"
#include "tests/unit/unit.h"

/* the token stream as text: one letter a token, strings and numbers shown */
static char *tokens(const char *src, struct sieve_errors *err)
{
	static char out[1024];
	struct sv_lexer lx;
	size_t n = 0;
	sv_lex_init(&lx, "t", src, strlen(src), err);
	for (int i = 0; i < 64; i++) {
		sv_lex_next(&lx);
		char tmp[256];
		switch (lx.tok) {
		case TK_EOF: snprintf(tmp, sizeof(tmp), "$"); break;
		case TK_ERR: snprintf(tmp, sizeof(tmp), "E "); break;
		case TK_ID: snprintf(tmp, sizeof(tmp), "I(%s) ", lx.text); break;
		case TK_TAG: snprintf(tmp, sizeof(tmp), "T(%s) ", lx.text); break;
		case TK_NUM: snprintf(tmp, sizeof(tmp), "N(%llu) ", (unsigned long long)lx.num); break;
		case TK_STR: snprintf(tmp, sizeof(tmp), "S(%s) ", lx.text); break;
		default: snprintf(tmp, sizeof(tmp), "%s ", sv_tok_name(lx.tok)); break;
		}
		n += (size_t)snprintf(out + n, sizeof(out) - n, "%s", tmp);
		if (lx.tok == TK_EOF || n >= sizeof(out) - 1)
			break;
	}
	sv_lex_deinit(&lx);
	return out;
}

static const struct { const char *name, *src, *want, *err; } cases[] = {
	{ "identifier and semicolon", "keep;", "I(keep) ';' $", NULL },
	{ "tag", ":is", "T(is) $", NULL },
	{ "number", "100", "N(100) $", NULL },
	{ "number K", "2K", "N(2048) $", NULL },
	{ "number M", "1m", "N(1048576) $", NULL },
	{ "number G", "3G", "N(3221225472) $", NULL },
	{ "largest number", "18446744073709551615", "N(18446744073709551615) $", NULL },
	{ "number too large", "18446744073709551616", "N(18446744073709551615) $",
	  "t:1:1: number exceeds integer limits" },
	{ "number K overflow", "34359738368G", "N(18446744073709551615) $",
	  "t:1:1: number exceeds integer limits" },
	{ "quoted string", "\"a b\"", "S(a b) $", NULL },
	{ "escapes", "\"\\\"q\\\\ \\a\"", "S(\"q\\ a) $", NULL },
	{ "string list", "[\"a\",\"b\"]", "'[' S(a) ',' S(b) ']' $", NULL },
	{ "hash comment", "# c\nstop;", "I(stop) ';' $", NULL },
	{ "bracket comment", "/* c\n */stop;", "I(stop) ';' $", NULL },
	{ "unterminated comment", "/* c", "E ", "t:1:1: end of file before end of bracket "
	  "comment ('/* ... */') started at this position" },
	{ "text: dot-stuffing and CRLF", "text:\n..a\n.b\n.\n", "S(.a\r\n.b\r\n) $", NULL },
	{ "text: with comment", "text: # x\nline\n.\n", "S(line\r\n) $", NULL },
	{ "text: garbage after", "text: x\nl\n.\n", "E ", "t:1:1: invalid character after "
	  "text: in multi-line string" },
	{ "unterminated text:", "text:\nline\n", "E ", "t:1:1: end of file before end of "
	  "multi-line string" },
	{ "unterminated string", "\"abc", "E ", "t:1:1: end of file before end of quoted string" },
	{ "garbage is one error", "$$$ stop", "E I(stop) $", "t:1:1: unexpected character '$'" },
	{ "identifier too long", "this_is_a_rediculously_long_test_name",
	  "I(this_is_a_rediculously_long_test_name) $", "t:1:1: identifier is too long" },
	{ "column counts", "stop;\n  $", "I(stop) ';' E $", "t:2:3: unexpected character '$'" },
	{ "lone colon", ": x", "E I(x) $", "t:1:1: missing identifier after ':' of tagged argument" },
	{ "punctuation", "(){},", "'(' ')' '{' '}' ',' $", NULL },
};

static void test_sieve_lex_table(void)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sieve_errors err = { 0 };
		const char *got = tokens(cases[i].src, &err);
		size_t wl = strlen(cases[i].want);
		if (strncmp(got, cases[i].want, wl) != 0) {
			fprintf(stderr, "\n  case \"%s\": got %s\n", cases[i].name, got);
			CU_FAIL("tokens differ");
		}
		if (cases[i].err) {
			if (err.n == 0 || strcmp(err.msg[0], cases[i].err) != 0) {
				fprintf(stderr, "\n  case \"%s\": error %s\n", cases[i].name,
				    err.n ? err.msg[0] : "(none)");
				CU_FAIL("error differs");
			}
		} else if (err.n) {
			fprintf(stderr, "\n  case \"%s\": unexpected %s\n", cases[i].name, err.msg[0]);
			CU_FAIL("unexpected error");
		}
		sieve_errors_clear(&err);
	}
}

static void test_sieve_lex_string_cap(void)
{
	/* a string longer than SIEVE_MAX_STRING is an error, never a cut */
	size_t n = SIEVE_MAX_STRING + 10;
	char *src = malloc(n + 3);
	src[0] = '"';
	memset(src + 1, 'a', n);
	src[n + 1] = '"';
	src[n + 2] = '\0';
	struct sieve_errors err = { 0 };
	struct sv_lexer lx;
	sv_lex_init(&lx, "t", src, strlen(src), &err);
	sv_lex_next(&lx);
	CU_ASSERT_EQUAL(lx.tok, TK_ERR);
	CU_ASSERT_EQUAL(err.n, 1);
	sv_lex_deinit(&lx);
	sieve_errors_clear(&err);
	free(src);
}

static void test_sieve_lex_nul(void)
{
	/* a NUL byte is garbage the lexer steps over (the fuzzer found it looping) */
	static const char src[] = "keep\0\0;";
	struct sieve_errors err = { 0 };
	struct sv_lexer lx;
	int n = 0;
	sv_lex_init(&lx, "t", src, sizeof(src) - 1, &err);
	do {
		sv_lex_next(&lx);
	} while (lx.tok != TK_EOF && ++n < 10);
	CU_ASSERT_EQUAL(lx.tok, TK_EOF);
	CU_ASSERT_EQUAL(err.n, 1);
	sv_lex_deinit(&lx);
	sieve_errors_clear(&err);
}

static CU_TestInfo tests[] = {
	{ "lexer table", test_sieve_lex_table },
	{ "NUL bytes", test_sieve_lex_nul },
	{ "string length cap", test_sieve_lex_string_cap },
	CU_TEST_INFO_NULL,
};

void test_sieve_lex_register(void)
{
	unit_suite("sieve_lex", tests);
}
