/* imap_conf_new: the IMAP door's settings from configuration text, one row
 * a case: what it compiles to, or the FILE:LINE error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/authmech.h"
#include "common/conf.h"
#include "pop-imap-proxy/imap_conf.h"
#include "tests/unit/unit.h"

#define ALL_DEFAULT (AUTH_MECH_PLAIN | AUTH_MECH_LOGIN | AUTH_MECH_CRAM | AUTH_MECH_SCRAM)

static void
test_imap_conf_table(void)
{
	static const struct {
		const char *name;
		const char *text;
		const char *err;	/* a substring of the error; NULL: compiles */
		unsigned mechs;
		int login;
		unsigned userip, login_timeout, idle_timeout;
		const char *banner;
	} t[] = {
		{ "defaults: auth_mechanisms, LOGIN with PLAIN, 60 s before login, 30 min after",
		  "myhostname = mx.example.com\n", NULL, ALL_DEFAULT, 1, 10, 60, 1800,
		  "mx.example.com ready." },
		{ "a per-door list: CRAM-MD5 and SCRAM only, so no LOGIN command",
		  "imap_auth_mechanisms = cram-md5 SCRAM-SHA-256\n", NULL,
		  AUTH_MECH_CRAM | AUTH_MECH_SCRAM, 0, 10, 60, 1800, NULL },
		{ "the door's list follows auth_mechanisms by default",
		  "auth_mechanisms = PLAIN EXTERNAL\n", NULL, AUTH_MECH_PLAIN | AUTH_MECH_EXTERNAL, 1,
		  10, 60, 1800, NULL },
		{ "an unknown mechanism",
		  "imap_auth_mechanisms = DIGEST-MD5\n", "t.cf:1: imap_auth_mechanisms: \"DIGEST-MD5\"",
		  0, 0, 0, 0, 0, NULL },
		{ "no users file: nobody can log in",
		  "users =\n", NULL, 0, 0, 10, 60, 1800, NULL },
		{ "relay delivery: no store to read",
		  "delivery = relay:[127.0.0.1]:25\n", "t.cf:1: delivery: the imap service reads",
		  0, 0, 0, 0, 0, NULL },
		{ "imaps without keys",
		  "imaps_listen = 127.0.0.1:993\n", "t.cf:1: imaps_listen needs tls_cert_file",
		  0, 0, 0, 0, 0, NULL },
		{ "no listener at all",
		  "imap_listen =\n", "t.cf:1: the imap service needs imap_listen or imaps_listen",
		  0, 0, 0, 0, 0, NULL },
		{ "a bad failure ban",
		  "auth_failure_ban = often\n", "t.cf:1: auth_failure_ban", 0, 0, 0, 0, 0, NULL },
		{ "limits, timeouts and banner",
		  "mail_max_userip_connections = 3\nimap_login_timeout = 20\nimap_idle_timeout = 2h\n"
		  "imap_banner = IMAP here\n", NULL, ALL_DEFAULT, 1, 3, 20, 7200, "IMAP here" },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct conf *c = unit_conf(t[i].text);
		const char *err = NULL;
		struct imap_conf *ic = imap_conf_new(c, &err);

		if (t[i].err != NULL) {
			CU_ASSERT_PTR_NULL(ic);
			unit_error_has(t[i].name, err, t[i].err);
		} else {
			if (ic == NULL)
				fprintf(stderr, "%s: %s\n", t[i].name, err);
			CU_ASSERT_PTR_NOT_NULL_FATAL(ic);
			CU_ASSERT_EQUAL(ic->srv.params.auth_mechs, t[i].mechs);
			CU_ASSERT_EQUAL(ic->srv.params.login, t[i].login);
			CU_ASSERT_EQUAL(ic->srv.max_userip, t[i].userip);
			CU_ASSERT_EQUAL(ic->srv.login_timeout, t[i].login_timeout);
			CU_ASSERT_EQUAL(ic->srv.idle_timeout, t[i].idle_timeout);
			CU_ASSERT_EQUAL(ic->nlisten[IMAP_LISTEN_IMAP], 1);
			if (t[i].banner != NULL)
				CU_ASSERT_STRING_EQUAL(ic->srv.params.banner, t[i].banner);
			imap_conf_free(&ic);
		}
		conf_free(&c);
	}
}

void
test_imap_conf_register(void)
{
	CU_pSuite s = CU_add_suite("imap_conf", NULL, NULL);

	CU_add_test(s, "imap_conf_new: keys compiled, errors name FILE:LINE", test_imap_conf_table);
}
