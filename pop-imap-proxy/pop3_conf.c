/*
 * pop3_conf - the POP3 door's settings from the configuration (see
 * pop3_conf.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/ssl.h>

#include "common/authmech.h"
#include "common/conf.h"
#include "common/tls.h"
#include "common/xmalloc.h"
#include "pop-imap-proxy/pop3_conf.h"
#include "service/penalty.h"

#define POP3_STRESS_TIMEOUT 30	/* seconds, above 80 % of pop3_max_connections */

const char *const pop3_conf_listen_keys[POP3_CONF_KINDS] = { "pop3_listen", "pop3s_listen" };

static char errbuf[1024];

/*
 * pop3_auth_mechanisms -> AUTH_MECH_* bits (PLAIN also offers USER/PASS,
 * which is PLAIN in another form). "APOP" may be listed as well: it needs
 * pop3_apop = yes, which alone decides whether APOP is offered.
 */
static int
pop3_mechs(const struct conf *c, unsigned *mechs_r, int *apop_listed_r)
{
	size_t n;
	char **m = conf_get_list(c, "pop3_auth_mechanisms", &n);
	unsigned bits = 0;
	int rc = 0;

	*apop_listed_r = 0;
	for (size_t k = 0; k < n; k++) {
		unsigned b = authmech_from_name(m[k]);

		if (strcasecmp(m[k], "APOP") == 0) {
			*apop_listed_r = 1;
			continue;
		}
		if (b == 0) {
			snprintf(errbuf, sizeof(errbuf), "%s: pop3_auth_mechanisms: \"%.40s\" is not "
			    "PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256, EXTERNAL or APOP",
			    conf_where(c, "pop3_auth_mechanisms"), m[k]);
			rc = -1;
			break;
		}
		bits |= b;
	}
	conf_list_free(m);
	*mechs_r = bits;
	return rc;
}

struct pop3_conf *
pop3_conf_new(const struct conf *c, const char **error_r)
{
	struct pop3_conf *pc = xcalloc(1, sizeof(*pc));
	struct pop3_server_conf *s = &pc->srv;
	const char *delivery = conf_get(c, "delivery"), *e;
	int apop_listed;

	if (strncmp(delivery, "maildir:", 8) != 0) {
		snprintf(errbuf, sizeof(errbuf), "%s: the pop3 service reads the Maildir store: "
		    "delivery must be maildir:DIR", conf_where(c, "delivery"));
		goto fail;
	}
	s->maildir_root = delivery + 8;
	s->conn.tls = tls_server_ctx_new(c, &e);
	if (s->conn.tls == NULL && e[0] != '\0') {
		const char *key = strncmp(e, "tls_cert_file =", 15) == 0 ? "tls_cert_file" :
		    strncmp(e, "tls_key_file =", 14) == 0 ? "tls_key_file" : NULL;

		if (key != NULL)
			snprintf(errbuf, sizeof(errbuf), "%s: %s", conf_where(c, key), e);
		else
			snprintf(errbuf, sizeof(errbuf), "%s", e);
		goto fail;
	}
	for (int k = 0; k < POP3_CONF_KINDS; k++)
		pc->listen[k] = conf_get_list(c, pop3_conf_listen_keys[k], &pc->nlisten[k]);
	if (pc->nlisten[POP3_LISTEN_POP3S] > 0 && s->conn.tls == NULL) {
		snprintf(errbuf, sizeof(errbuf), "%s: pop3s_listen needs tls_cert_file and tls_key_file",
		    conf_where(c, "pop3s_listen"));
		goto fail;
	}
	if (pc->nlisten[POP3_LISTEN_POP3] + pc->nlisten[POP3_LISTEN_POP3S] == 0) {
		snprintf(errbuf, sizeof(errbuf), "%s: the pop3 service needs pop3_listen or pop3s_listen",
		    conf_where(c, "pop3_listen"));
		goto fail;
	}
	if (pop3_mechs(c, &s->params.auth_mechs, &apop_listed) < 0)
		goto fail;
	if (penalty_conf_parse(c, &s->penalty, &e) < 0 || proxy_conf_parse(c, PROXY_POP3, &s->proxy, &e) < 0) {
		snprintf(errbuf, sizeof(errbuf), "%s", e);
		goto fail;
	}
	s->params.apop = conf_get_bool(c, "pop3_apop");
	if (apop_listed && !s->params.apop) {
		snprintf(errbuf, sizeof(errbuf), "%s: pop3_auth_mechanisms lists APOP, but pop3_apop = no",
		    conf_where(c, "pop3_auth_mechanisms"));
		goto fail;
	}
	s->params.myhostname = conf_get(c, "myhostname");
	s->params.banner = conf_get(c, "pop3_banner");
	s->params.tls_available = s->conn.tls != NULL;
	s->params.user_pass = (s->params.auth_mechs & AUTH_MECH_PLAIN) != 0;
	s->params.auth_allow_plaintext = conf_get_bool(c, "auth_allow_plaintext");
	s->users_url = conf_get(c, "users");
	if (s->users_url[0] == '\0') {	/* nobody can log in */
		s->params.auth_mechs = 0;
		s->params.user_pass = 0;
		s->params.apop = 0;
	}
	s->max_userip = (unsigned)conf_get_int(c, "mail_max_userip_connections");
	s->conn.door = "pop3";
	s->conn.max_connections = (unsigned)conf_get_int(c, "pop3_max_connections");
	s->conn.max_per_client = (unsigned)conf_get_int(c, "pop3_max_per_client");
	s->conn.timeout = (unsigned)conf_get_int(c, "pop3_timeout");
	s->conn.stress_timeout = POP3_STRESS_TIMEOUT;
	s->conn.request_deadline = 0;	/* RFC 1939 §3: an inactivity timer */
	s->conn.min_data_rate = 0;
	/* Dovecot's words */
	snprintf(pc->words_timeout, sizeof(pc->words_timeout), "-ERR Disconnected for inactivity.\r\n");
	s->conn.words_timeout = pc->words_timeout;
	s->conn.words_too_many = "-ERR [SYS/TEMP] Too many connections, try again later.\r\n";
	s->conn.words_too_many_client = "-ERR [SYS/TEMP] Too many connections from your address.\r\n";
	return pc;
fail:
	*error_r = errbuf;
	pop3_conf_free(&pc);
	return NULL;
}

void
pop3_conf_free(struct pop3_conf **pcp)
{
	struct pop3_conf *pc = *pcp;

	if (pc == NULL)
		return;
	for (int k = 0; k < POP3_CONF_KINDS; k++)
		if (pc->listen[k] != NULL)
			conf_list_free(pc->listen[k]);
	if (pc->srv.conn.tls != NULL)
		SSL_CTX_free(pc->srv.conn.tls);
	proxy_conf_deinit(&pc->srv.proxy);
	free(pc);
	*pcp = NULL;
}
