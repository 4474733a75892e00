/* sieve parser and compile step: every class of compile error with its
 * FILE:LINE:COLUMN and Pigeonhole-style wording, the error count (each failed
 * compile ends with one summary error, as Pigeonhole counts), valid scripts,
 * and the size limit. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules/sieve.h"
#include "tests/unit/unit.h"

static const struct { const char *name, *src, *first; size_t nerr; } cases[] = {
	{ "unknown command", "frop;",
	  "t:1:1: unknown command 'frop' (only reported once at first occurrence)", 2 },
	{ "unknown test", "if frop { }",
	  "t:1:4: unknown test 'frop' (only reported once at first occurrence)", 2 },
	{ "command used as test", "if keep { }",
	  "t:1:4: attempted to use command 'keep' as test", 2 },
	{ "test used as command", "true;",
	  "t:1:1: attempted to use test 'true' as command", 2 },
	{ "unknown capability", "require \"frop\";",
	  "t:1:9: require command: unknown Sieve capability 'frop'", 2 },
	{ "require not first", "keep;\nrequire \"fileinto\";",
	  "t:2:1: the require command can only be placed at top level at the beginning of the file", 2 },
	{ "require in a block", "if true { require \"fileinto\"; }",
	  "t:1:11: the require command can only be placed at top level at the beginning of the file", 2 },
	{ "extension not required", "fileinto \"x\";",
	  "t:1:1: unknown command 'fileinto' (only reported once at first occurrence)", 2 },
	{ "unknown tag", "if header :frop \"a\" \"b\" { }",
	  "t:1:11: unknown tagged argument ':frop' for the header test (reported only once at first occurrence)", 2 },
	{ "duplicate match type", "if header :is :is \"a\" \"b\" { }",
	  "t:1:15: unexpected tagged argument ':is' for the header test (match type already specified)", 2 },
	{ "tag after positional", "if header \"a\" :is \"b\" { }",
	  "t:1:15: unexpected tagged argument ':is' for the header test (tagged arguments come before positional ones)", 2 },
	{ "tag parameter missing", "if header :comparator { }",
	  "t:1:11: the :comparator tag for the header test requires one string argument, but none was found", 2 },
	{ "tag parameter type", "if header :comparator 3 \"a\" \"b\" { }",
	  "t:1:11: the :comparator tag for the header test requires one string argument, but number was found", 2 },
	{ "too few positional", "if header \"a\" { }",
	  "t:1:4: the header test requires 2 positional argument(s), but 1 was specified", 2 },
	{ "too many positional", "redirect \"a@b.c\" \"d\";",
	  "t:1:18: the redirect command requires 1 positional argument(s), but 2 were specified", 2 },
	{ "positional type", "require \"fileinto\";\nfileinto 3;",
	  "t:2:10: the fileinto command expects a string as argument 1, but a number was found", 2 },
	{ "no sub-tests accepted", "stop true;",
	  "t:1:1: the stop command accepts no sub-tests, but tests are specified", 2 },
	{ "missing semicolon", "keep\nstop;",
	  "t:1:1: missing semicolon ';' after keep command", 2 },
	{ "missing colon", "if address is \"from\" \"x\" { }",
	  "t:1:4: the address test requires 2 positional argument(s), but 0 were specified", 3 },
	{ "one test required", "if (true, false) { }",
	  "t:1:1: the if command requires one sub-test, but a list of tests is specified", 2 },
	{ "test list required", "if anyof true { }",
	  "t:1:4: the anyof test requires a list of sub-tests, but a single test is specified", 2 },
	{ "block required", "if true;",
	  "t:1:1: the if command requires a command block, but it is missing", 2 },
	{ "block not allowed", "stop { }",
	  "t:1:1: the stop command does not accept a command block, but one is specified anyway", 2 },
	{ "elsif without if", "elsif true { }",
	  "t:1:1: the elsif command must follow an if or elseif command", 2 },
	{ "else without if", "else { }",
	  "t:1:1: the else command must follow an if or elseif command", 2 },
	{ "unknown comparator", "if header :comparator \"i;frop\" \"a\" \"b\" { }",
	  "t:1:23: unknown comparator 'i;frop'", 2 },
	{ "numeric comparator not required", "if header :comparator \"i;ascii-numeric\" \"a\" \"b\" { }",
	  "t:1:23: unknown comparator 'i;ascii-numeric'", 2 },
	{ "numeric comparator with contains", "require \"comparator-i;ascii-numeric\";\nif header :contains :comparator \"i;ascii-numeric\" \"a\" \"1\" { }",
	  "t:2:4: the specified :contains match type cannot be used with the i;ascii-numeric comparator", 2 },
	{ "relational bad operator", "require \"relational\";\nif header :value \"gr\" \"a\" \"b\" { }",
	  "t:2:18: invalid relational match type 'gr' specified for :value", 2 },
	{ "size needs over or under", "if size 10 { }",
	  "t:1:4: the size test requires either the :under or the :over tag to be specified", 2 },
	{ "invalid redirect address", "redirect \"not an address\";",
	  "t:1:10: specified redirect address 'not an address' is invalid", 2 },
	{ "address test header", "if address \"subject\" \"x\" { }",
	  "t:1:12: specified header 'subject' is not allowed for the address test", 2 },
	{ "invalid variable name", "require \"variables\";\nset \"a-b\" \"c\";",
	  "t:2:5: invalid variable name 'a-b'", 2 },
	{ "unknown namespace", "require \"variables\";\nset \"x.y\" \"c\";",
	  "t:2:5: variable name 'x.y' refers to unknown namespace 'x'", 2 },
	{ "invalid regex", "require \"regex\";\nif header :regex \"a\" \"[\" { }",
	  "t:2:22: invalid regular expression '[' for regex match: missing terminating ] for character class", 2 },
	{ "invalid unicode", "require [\"encoded-character\", \"fileinto\"];\nfileinto \"${unicode:D800}\";",
	  "t:2:10: invalid unicode character 0xd800 in encoded character substitution", 2 },
	{ "missing semicolon at end", "keep",
	  "t:1:5: expected end of command ';' or the beginning of a compound block '{', but found end of script", 2 },
	{ "unexpected close brace", "}",
	  "t:1:1: unexpected '}'", 2 },
	{ "unterminated block", "if true {",
	  "t:1:10: end of file before end of command block '}'", 2 },
	{ "nesting too deep", "if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true {if true { stop; }}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}",
	  "t:1:297: cannot nest command blocks deeper than 32 levels", 2 },
	{ "bad string list", "if header [\"a\" \"b\"] \"c\" { }",
	  "t:1:16: expecting ',' or end of string list ']', but found string", 2 },
	{ "missing include", "require \"include\";\ninclude \"nonexistent\";",
	  "t:2:9: included personal script 'nonexistent' does not exist", 2 },
	{ "global without variables", "require \"include\";\nglobal \"x\";",
	  "t:2:1: the global command requires the variables extension to be active", 2 },
	{ "index zero", "require \"index\";\nif header :index 0 \"a\" \"b\" { }",
	  "t:2:18: the :index tag for the header test requires a non-zero argument", 2 },
	{ "last without index", "require \"index\";\nif header :last \"a\" \"b\" { }",
	  "t:2:4: the :last tag for the header test requires the :index tag to be specified as well", 2 },
	{ "body transforms", "require \"body\";\nif body :raw :text \"a\" { }",
	  "t:2:4: the body test accepts only one body transform (:raw, :content or :text)", 2 },
	{ "duplicate with header and uniqueid", "require \"duplicate\";\nif duplicate :header \"a\" :uniqueid \"b\" { }",
	  "t:2:4: the duplicate test cannot have both :header and :uniqueid", 2 },
	{ "editheader field name", "require \"editheader\";\naddheader \"a:b\" \"c\";",
	  "t:2:11: addheader command: specified field name 'a:b' is invalid", 2 },
	{ "valid core script", "require [\"fileinto\", \"envelope\"];\nif anyof (header :contains \"subject\" \"x\", envelope :domain \"from\" \"a.b\") { fileinto \"A\"; stop; } elsif not exists \"to\" { discard; } else { keep; }",
	  "OK", 0 },
	{ "case-insensitive identifiers", "IF TRUE { Keep; }",
	  "OK", 0 },
};

static void test_sieve_compile_table(void)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sieve_errors err = { 0 };
		struct sieve_script *s = NULL;
		int r = sieve_compile("t", cases[i].src, strlen(cases[i].src), NULL, &s, &err);
		int want_ok = strcmp(cases[i].first, "OK") == 0;
		if (want_ok != (r == 0)) {
			fprintf(stderr, "\n  case \"%s\": rc %d (%s)\n", cases[i].name, r,
			    err.n ? err.msg[0] : "");
			CU_FAIL("compile result differs");
		} else if (!want_ok && strcmp(err.msg[0], cases[i].first) != 0) {
			fprintf(stderr, "\n  case \"%s\": got %s\n", cases[i].name, err.msg[0]);
			CU_FAIL("first error differs");
		}
		if (err.n != cases[i].nerr) {
			fprintf(stderr, "\n  case \"%s\": %zu errors\n", cases[i].name, err.n);
			CU_FAIL("error count differs");
		}
		sieve_script_free(&s);
		sieve_errors_clear(&err);
	}
}

static void test_sieve_compile_limits(void)
{
	struct sieve_limits l;
	sieve_limits_default(&l);
	l.max_script_size = 10;
	struct sieve_compile_opts o = { .limits = &l };
	struct sieve_errors err = { 0 };
	struct sieve_script *s = NULL;
	const char *src = "keep; keep; keep;";
	CU_ASSERT_EQUAL(sieve_compile("t", src, strlen(src), &o, &s, &err), -1);
	CU_ASSERT_PTR_NULL(s);
	CU_ASSERT(err.n == 1 && strstr(err.msg[0], "too large") != NULL);
	sieve_errors_clear(&err);

	/* a smaller nesting limit is honoured */
	sieve_limits_default(&l);
	l.max_nesting = 2;
	src = "if true { if true { if true { stop; } } }";
	CU_ASSERT_EQUAL(sieve_compile("t", src, strlen(src), &o, &s, &err), -1);
	CU_ASSERT(err.n >= 1 && strstr(err.msg[0], "cannot nest") != NULL);
	sieve_errors_clear(&err);

	/* too many arguments */
	char big[1024] = "redirect";
	for (int i = 0; i < SIEVE_MAX_ARGS + 1; i++)
		strcat(big, " \"a\"");
	strcat(big, ";");
	CU_ASSERT_EQUAL(sieve_compile("t", big, strlen(big), NULL, &s, &err), -1);
	CU_ASSERT(err.n >= 1 && strstr(err.msg[0], "too many arguments") != NULL);
	sieve_errors_clear(&err);
}

static CU_TestInfo tests[] = {
	{ "compile error table", test_sieve_compile_table },
	{ "limits", test_sieve_compile_limits },
	CU_TEST_INFO_NULL,
};

void test_sieve_parse_register(void)
{
	unit_suite("sieve_parse", tests);
}
