#ifndef PC_SMTP_CONF_H
#define PC_SMTP_CONF_H
/*
 * smtp_conf - the SMTP door's settings, compiled from the configuration in
 * one call, as policy_new() compiles the engine's: the daemon's master
 * (start-up, reload, `portcullisd -t`), the unit tests and the fuzzer all
 * build them with smtp_conf_new(). Checks what the door needs (TLS keys,
 * smtp_bare_newline_exceptions, auth_mechanisms, the penalty keys, smtps
 * without keys) and names FILE:LINE in the error. Strings point into the
 * conf: it must outlive the result. The run-time pointers of params (pol,
 * snaps, rl, user_resolve, sasl_cb) and ban are left NULL for the caller.
 * No libevent: the fuzzer links it.
 */
#include <stddef.h>
#include "smtp-gateway/smtp_server.h"

struct conf;

#define SMTP_CONF_KINDS 3	/* smtp_listen, submission_listen, smtps_listen */

struct smtp_conf {
	struct smtp_server_conf srv;	/* srv.tls and the exceptions are owned */
	char **listen[SMTP_CONF_KINDS];	/* the specs of each enum smtp_listener_kind */
	size_t nlisten[SMTP_CONF_KINDS];
};

extern const char *const smtp_conf_listen_keys[SMTP_CONF_KINDS];

/* NULL with *error_r (valid until the next call) when the settings are wrong */
struct smtp_conf *smtp_conf_new(const struct conf *c, const char **error_r);
void smtp_conf_free(struct smtp_conf **sc);

#endif
