/* pop3_conf_new: the POP3 door's settings from configuration text, one row
 * a case: what it compiles to, or the FILE:LINE error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/authmech.h"
#include "common/conf.h"
#include "pop-imap-proxy/pop3_conf.h"
#include "tests/unit/unit.h"

static void
test_pop3_conf_table(void)
{
	static const struct {
		const char *name;
		const char *text;
		const char *err;	/* a substring of the error; NULL: compiles */
		unsigned mechs;
		int user_pass, apop;
		unsigned userip, timeout;
		const char *banner;
	} t[] = {
		{ "defaults: auth_mechanisms, USER/PASS with PLAIN, no APOP",
		  "myhostname = mx.example.com\n", NULL,
		  AUTH_MECH_PLAIN | AUTH_MECH_LOGIN | AUTH_MECH_CRAM | AUTH_MECH_SCRAM, 1, 0, 10, 600,
		  "mx.example.com ready." },
		{ "a per-door list: CRAM-MD5 only, so no USER/PASS",
		  "pop3_auth_mechanisms = cram-md5\n", NULL, AUTH_MECH_CRAM, 0, 0, 10, 600, NULL },
		{ "APOP alone: no SASL, no USER",
		  "pop3_apop = yes\npop3_auth_mechanisms = APOP\n", NULL, 0, 0, 1, 10, 600, NULL },
		{ "APOP listed while pop3_apop = no",
		  "pop3_auth_mechanisms = PLAIN APOP\n", "t.cf:1: pop3_auth_mechanisms lists APOP",
		  0, 0, 0, 0, 0, NULL },
		{ "an unknown mechanism",
		  "pop3_auth_mechanisms = DIGEST-MD5\n", "t.cf:1: pop3_auth_mechanisms: \"DIGEST-MD5\"",
		  0, 0, 0, 0, 0, NULL },
		{ "no users file: nobody can log in",
		  "users =\npop3_apop = yes\n", NULL, 0, 0, 0, 10, 600, NULL },
		{ "relay delivery: no store to read",
		  "delivery = relay:[127.0.0.1]:25\n", "t.cf:1: the pop3 service reads the Maildir",
		  0, 0, 0, 0, 0, NULL },
		{ "pop3s without keys",
		  "pop3s_listen = 127.0.0.1:995\n", "t.cf:1: pop3s_listen needs tls_cert_file",
		  0, 0, 0, 0, 0, NULL },
		{ "no listener at all",
		  "pop3_listen =\n", "t.cf:1: the pop3 service needs pop3_listen",
		  0, 0, 0, 0, 0, NULL },
		{ "limits and banner",
		  "mail_max_userip_connections = 3\npop3_timeout = 15m\npop3_banner = hello there\n",
		  NULL, AUTH_MECH_PLAIN | AUTH_MECH_LOGIN | AUTH_MECH_CRAM | AUTH_MECH_SCRAM, 1, 0,
		  3, 900, "hello there" },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct conf *c = unit_conf(t[i].text);
		const char *err = NULL;
		struct pop3_conf *pc = pop3_conf_new(c, &err);

		if (t[i].err != NULL) {
			CU_ASSERT_PTR_NULL(pc);
			unit_error_has(t[i].name, err, t[i].err);
		} else {
			CU_ASSERT_PTR_NOT_NULL_FATAL(pc);
			CU_ASSERT_EQUAL(pc->srv.params.auth_mechs, t[i].mechs);
			CU_ASSERT_EQUAL(pc->srv.params.user_pass, t[i].user_pass);
			CU_ASSERT_EQUAL(pc->srv.params.apop, t[i].apop);
			CU_ASSERT_EQUAL(pc->srv.max_userip, t[i].userip);
			CU_ASSERT_EQUAL(pc->srv.conn.timeout, t[i].timeout);
			CU_ASSERT_STRING_EQUAL(pc->srv.conn.door, "pop3");
			if (t[i].banner != NULL)
				CU_ASSERT_STRING_EQUAL(pc->srv.params.banner, t[i].banner);
			pop3_conf_free(&pc);
		}
		conf_free(&c);
	}
}

void
test_pop3_conf_register(void)
{
	CU_pSuite s = CU_add_suite("pop3_conf", NULL, NULL);

	CU_add_test(s, "pop3_conf_new: keys compiled, errors name FILE:LINE", test_pop3_conf_table);
}
