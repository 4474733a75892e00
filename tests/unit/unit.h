#ifndef PC_UNIT_H
#define PC_UNIT_H
#include <CUnit/CUnit.h>

struct conf;

void test_conf_register(void);
void test_cidr_register(void);
void test_mailaddr_register(void);
void test_listentry_register(void);
void test_liststore_file_register(void);
void test_listset_register(void);
void test_engine_register(void);
void test_redis_schema_register(void);
void test_ratelimit_register(void);
void test_smtp_proto_register(void);
void test_auth_register(void);
void test_sasl_register(void);
void test_stats_register(void);
void test_hdrparse_register(void);
void test_common_hash_register(void);
void test_common_base64_register(void);
void test_common_fsutil_register(void);
void test_anvil_register(void);
void test_deadline_register(void);
void test_listener_register(void);
void test_policy_door_register(void);
void test_service_register(void);
void test_penalty_register(void);
void test_apop_register(void);
void test_userdb_proxy_register(void);
void test_proxy_reply_register(void);
void test_sieve_lex_register(void);
void test_sieve_parse_register(void);
void test_sieve_eval_register(void);
void test_sieve_rules_register(void);
void test_mailstore_register(void);
void test_geoip_register(void);
void test_imap_parser_register(void);
void test_pop3_proto_register(void);
void test_conn_register(void);
void test_userip_register(void);
void test_pop3_conf_register(void);
void test_imap_conf_register(void);
void test_imap_proto_register(void);
void test_dotstuff_register(void);
void test_sieve_deliver_register(void);
void test_relay_send_register(void);
void test_smtp_sieve_register(void);
void test_imap_mime_register(void);
void test_imap_search_register(void);

/* add a suite with its tests; tests end with { NULL, NULL } */
void unit_suite(const char *name, CU_TestInfo *tests);
/* a fresh empty directory under /tmp; caller frees the string */
char *unit_tmpdir(void);
/* a finished configuration from text, read as file "t.cf" (its errors say
 * "t.cf:LINE"); a text that does not load fails the test at once */
struct conf *unit_conf(const char *text);
/* the test fails (said with name) unless err holds want */
void unit_error_has(const char *name, const char *err, const char *want);

#endif
