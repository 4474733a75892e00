/*
 * smtp_conf - the SMTP door's settings from the configuration (see
 * smtp_conf.h): everything the daemon used to assemble field by field.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ssl.h>

#include "common/authmech.h"
#include "common/cidr.h"
#include "common/conf.h"
#include "common/tls.h"
#include "common/xmalloc.h"
#include "service/penalty.h"
#include "smtp-gateway/smtp_conf.h"

const char *const smtp_conf_listen_keys[SMTP_CONF_KINDS] = {
	"smtp_listen", "submission_listen", "smtps_listen"
};

static char errbuf[1024];

/* smtp_bare_newline_exceptions compiled (NULL when empty); -1 on a bad entry */
static int
bare_exceptions(const struct conf *c, struct cidrtab **t_r)
{
	size_t n;
	char **l = conf_get_list(c, "smtp_bare_newline_exceptions", &n);
	struct cidrtab_builder *b = cidrtab_builder_new();
	const char *e;
	int rc = 0;

	for (size_t j = 0; j < n; j++) {
		struct cidr cd;

		if (cidr_parse(l[j], &cd, &e) < 0) {
			snprintf(errbuf, sizeof(errbuf), "%s: smtp_bare_newline_exceptions: \"%.60s\": %s",
			    conf_where(c, "smtp_bare_newline_exceptions"), l[j], e);
			rc = -1;
			break;
		}
		cidrtab_builder_add(b, &cd, 1);
	}
	*t_r = cidrtab_build(&b);
	if (n == 0 || rc < 0)
		cidrtab_free(t_r);
	conf_list_free(l);
	return rc;
}

struct smtp_conf *
smtp_conf_new(const struct conf *c, const char **error_r)
{
	struct smtp_conf *sc = xcalloc(1, sizeof(*sc));
	struct smtp_server_conf *s = &sc->srv;
	const char *delivery = conf_get(c, "delivery"), *e;

	if (bare_exceptions(c, &s->params.bare_newline_exceptions) < 0)
		goto fail;
	s->tls = tls_server_ctx_new(c, &e);
	if (s->tls == NULL && e[0] != '\0') {
		/* "tls_x_file = PATH: why" does not say where it was set */
		const char *key = strncmp(e, "tls_cert_file =", 15) == 0 ? "tls_cert_file" :
		    strncmp(e, "tls_key_file =", 14) == 0 ? "tls_key_file" : NULL;

		if (key != NULL)
			snprintf(errbuf, sizeof(errbuf), "%s: %s", conf_where(c, key), e);
		else
			snprintf(errbuf, sizeof(errbuf), "%s", e);
		goto fail;
	}
	for (int k = 0; k < SMTP_CONF_KINDS; k++)
		sc->listen[k] = conf_get_list(c, smtp_conf_listen_keys[k], &sc->nlisten[k]);
	if (sc->nlisten[LISTEN_SMTPS] > 0 && s->tls == NULL) {
		snprintf(errbuf, sizeof(errbuf), "%s: smtps_listen needs tls_cert_file and tls_key_file",
		    conf_where(c, "smtps_listen"));
		goto fail;
	}
	if (authmech_parse(c, &s->params.auth_mechs, &e) < 0 ||
	    penalty_conf_parse(c, &s->penalty, &e) < 0) {
		snprintf(errbuf, sizeof(errbuf), "%s", e);
		goto fail;
	}
	s->params.myhostname = conf_get(c, "myhostname");
	s->params.banner = conf_get(c, "smtp_banner");
	s->params.message_size_limit = (size_t)conf_get_int(c, "message_size_limit");
	s->params.vrfy = conf_get_bool(c, "vrfy");
	s->params.bare_newline_reject = strcmp(conf_get(c, "smtp_bare_newline"), "reject") == 0;
	s->params.passthrough = strncmp(delivery, "relay:", 6) == 0;
	s->params.have_relayhost = conf_get(c, "relayhost")[0] != '\0';
	s->params.tls_available = s->tls != NULL;
	s->downstream = s->params.passthrough ? delivery + 6 :
	    s->params.have_relayhost ? conf_get(c, "relayhost") : NULL;
	s->downstream_cache_time = (unsigned)conf_get_int(c, "relay_connection_cache_time");
	s->users_url = conf_get(c, "users");
	if (s->users_url[0] == '\0')
		s->params.auth_mechs = 0;
	s->smtp_auth = conf_get_bool(c, "smtp_auth");
	s->params.auth_allow_plaintext = conf_get_bool(c, "auth_allow_plaintext");
	/* maildir:DIR otherwise (checked by conf) */
	s->maildir_root = s->params.passthrough ? NULL :
	    strncmp(delivery, "maildir:", 8) == 0 ? delivery + 8 : NULL;
	s->max_connections = (unsigned)conf_get_int(c, "smtp_max_connections");
	s->max_per_client = (unsigned)conf_get_int(c, "smtp_max_per_client");
	s->timeout = (unsigned)conf_get_int(c, "smtp_timeout");
	s->request_deadline = conf_get_bool(c, "smtp_request_deadline");
	s->min_data_rate = (unsigned)conf_get_int(c, "smtp_min_data_rate");
	s->stress_timeout = (unsigned)conf_get_int(c, "smtp_stress_timeout");
	s->resolver = conf_get_bool(c, "client_hostname_lookups") ? conf_get(c, "resolver") : NULL;
	s->quarantine_dir = conf_get(c, "quarantine_dir");
	return sc;
fail:
	*error_r = errbuf;
	smtp_conf_free(&sc);
	return NULL;
}

void
smtp_conf_free(struct smtp_conf **scp)
{
	struct smtp_conf *sc = *scp;

	if (sc == NULL)
		return;
	for (int k = 0; k < SMTP_CONF_KINDS; k++)
		if (sc->listen[k] != NULL)
			conf_list_free(sc->listen[k]);
	if (sc->srv.tls != NULL)
		SSL_CTX_free(sc->srv.tls);
	cidrtab_free(&sc->srv.params.bare_newline_exceptions);
	free(sc);
	*scp = NULL;
}
