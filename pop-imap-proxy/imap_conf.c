/*
 * imap_conf - the IMAP door's settings from the configuration (see
 * imap_conf.h).
 *
 *   imap_conf_new()    the settings, or the error naming FILE:LINE
 *   imap_conf_free()   drops them (and the TLS context)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ssl.h>

#include "common/authmech.h"
#include "common/conf.h"
#include "common/tls.h"
#include "common/xmalloc.h"
#include "pop-imap-proxy/imap_conf.h"
#include "service/penalty.h"

const char *const imap_conf_listen_keys[IMAP_CONF_KINDS] = { "imap_listen", "imaps_listen" };

static char errbuf[1024];

struct imap_conf *
imap_conf_new(const struct conf *c, const char **error_r)
{
	struct imap_conf *ic = xcalloc(1, sizeof(*ic));
	struct imap_server_conf *s = &ic->srv;
	const char *delivery = conf_get(c, "delivery"), *e;

	s->tls = tls_server_ctx_new(c, &e);
	if (s->tls == NULL && e[0] != '\0') {
		const char *key = strncmp(e, "tls_cert_file =", 15) == 0 ? "tls_cert_file" :
		    strncmp(e, "tls_key_file =", 14) == 0 ? "tls_key_file" : NULL;

		if (key != NULL)
			snprintf(errbuf, sizeof(errbuf), "%s: %s", conf_where(c, key), e);
		else
			snprintf(errbuf, sizeof(errbuf), "%s", e);
		goto fail;
	}
	for (int k = 0; k < IMAP_CONF_KINDS; k++)
		ic->listen[k] = conf_get_list(c, imap_conf_listen_keys[k], &ic->nlisten[k]);
	if (ic->nlisten[IMAP_LISTEN_IMAP] == 0 && ic->nlisten[IMAP_LISTEN_IMAPS] == 0) {
		snprintf(errbuf, sizeof(errbuf), "%s: the imap service needs imap_listen or "
		    "imaps_listen", conf_where(c, "imap_listen"));
		goto fail;
	}
	if (ic->nlisten[IMAP_LISTEN_IMAPS] > 0 && s->tls == NULL) {
		snprintf(errbuf, sizeof(errbuf), "%s: imaps_listen needs tls_cert_file and tls_key_file",
		    conf_where(c, "imaps_listen"));
		goto fail;
	}
	/* the door serves the store the SMTP door delivers into */
	if (strncmp(delivery, "maildir:", 8) != 0) {
		snprintf(errbuf, sizeof(errbuf), "%s: delivery: the imap service reads the Maildir store: "
		    "it needs delivery = maildir:DIR", conf_where(c, "delivery"));
		goto fail;
	}
	s->mail_root = delivery + 8;
	if (authmech_parse_key(c, "imap_auth_mechanisms", &s->params.auth_mechs, &e) < 0 ||
	    penalty_conf_parse(c, &s->penalty, &e) < 0 || proxy_conf_parse(c, PROXY_IMAP, &s->proxy, &e) < 0) {
		snprintf(errbuf, sizeof(errbuf), "%s", e);
		goto fail;
	}
	s->users_url = conf_get(c, "users");
	if (s->users_url[0] == '\0')
		s->params.auth_mechs = 0;
	s->params.myhostname = conf_get(c, "myhostname");
	s->params.banner = conf_get(c, "imap_banner");
	s->params.tls_available = s->tls != NULL;
	s->params.auth_allow_plaintext = conf_get_bool(c, "auth_allow_plaintext");
	/* LOGIN is PLAIN by another name: offered when PLAIN is */
	s->params.login = (s->params.auth_mechs & AUTH_MECH_PLAIN) != 0;
	s->max_connections = (unsigned)conf_get_int(c, "imap_max_connections");
	s->max_per_client = (unsigned)conf_get_int(c, "imap_max_per_client");
	s->login_timeout = (unsigned)conf_get_int(c, "imap_login_timeout");
	s->idle_timeout = (unsigned)conf_get_int(c, "imap_idle_timeout");
	s->max_userip = (unsigned)conf_get_int(c, "mail_max_userip_connections");
	*error_r = NULL;
	return ic;
fail:
	*error_r = errbuf;
	imap_conf_free(&ic);
	return NULL;
}

void
imap_conf_free(struct imap_conf **icp)
{
	struct imap_conf *ic = *icp;

	if (ic == NULL)
		return;
	for (int k = 0; k < IMAP_CONF_KINDS; k++)
		if (ic->listen[k] != NULL)
			conf_list_free(ic->listen[k]);
	if (ic->srv.tls != NULL)
		SSL_CTX_free(ic->srv.tls);
	proxy_conf_deinit(&ic->srv.proxy);
	free(ic);
	*icp = NULL;
}
