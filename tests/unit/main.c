/*
 * Unit test runner: every tests/unit/test_<module>.c registers a suite.
 * Exit status is non-zero when any assertion failed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "common/conf.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "tests/unit/unit.h"

void
unit_suite(const char *name, CU_TestInfo *tests)
{
	CU_pSuite s = CU_add_suite(name, NULL, NULL);

	if (s == NULL) {
		fprintf(stderr, "CU_add_suite: %s\n", CU_get_error_msg());
		exit(2);
	}
	for (CU_TestInfo *t = tests; t->pName != NULL; t++)
		if (CU_add_test(s, t->pName, t->pTestFunc) == NULL) {
			fprintf(stderr, "CU_add_test: %s\n", CU_get_error_msg());
			exit(2);
		}
}

char *
unit_tmpdir(void)
{
	char *d = xstrdup("/tmp/portcullis-unit-XXXXXX");

	if (mkdtemp(d) == NULL) {
		perror("mkdtemp");
		exit(2);
	}
	return d;
}

struct conf *
unit_conf(const char *text)
{
	struct conf *c = conf_new();
	const char *err = NULL;

	CU_ASSERT_EQUAL_FATAL(conf_load_string(c, "t.cf", text, &err), 0);
	CU_ASSERT_EQUAL_FATAL(conf_finish(c, &err), 0);
	return c;
}

void
unit_error_has(const char *name, const char *err, const char *want)
{
	if (err == NULL || strstr(err, want) == NULL) {
		fprintf(stderr, "%s: got \"%s\"\n", name, err ? err : "(none)");
		CU_FAIL("the error");
	}
}

int
main(void)
{
	unsigned failed;

	log_open("unit", 1);
	log_set_level(LOG_LVL_ERROR);	/* bad-input tests log on purpose */
	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	test_conf_register();
	test_cidr_register();
	test_mailaddr_register();
	test_listentry_register();
	test_liststore_file_register();
	test_listset_register();
	test_engine_register();
	test_redis_schema_register();
	test_ratelimit_register();
	test_smtp_proto_register();
	test_auth_register();
	test_sasl_register();
	test_stats_register();
	test_hdrparse_register();
	test_common_hash_register();
	test_common_base64_register();
	test_common_fsutil_register();
	test_anvil_register();
	test_deadline_register();
	test_listener_register();
	test_policy_door_register();
	test_service_register();
	test_penalty_register();
	test_apop_register();
	test_userdb_proxy_register();
	test_proxy_reply_register();
	test_sieve_lex_register();
	test_sieve_parse_register();
	test_sieve_eval_register();
	test_sieve_rules_register();
	test_mailstore_register();
	test_sieve_deliver_register();
	test_relay_send_register();
	test_smtp_sieve_register();
	test_geoip_register();
	test_imap_parser_register();
	test_pop3_proto_register();
	test_conn_register();
	test_userip_register();
	test_imap_mime_register();
	test_imap_search_register();
	test_pop3_conf_register();
	test_imap_conf_register();
	test_imap_proto_register();
	test_dotstuff_register();
	CU_basic_set_mode(CU_BRM_NORMAL);
	CU_basic_run_tests();
	failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
	CU_cleanup_registry();
	return failed ? 1 : 0;
}
