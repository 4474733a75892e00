#ifndef PC_POP3_CONF_H
#define PC_POP3_CONF_H
/*
 * pop3_conf - the POP3 door's settings, compiled from the configuration in
 * one call (as smtp_conf_new() and policy_new() do): the daemon's master
 * (start-up, reload, `portcullisd -t`) and the tests build them with
 * pop3_conf_new(). Checks what the door needs (a maildir: delivery, TLS
 * keys for pop3s_listen, pop3_auth_mechanisms, pop3_apop, the penalty keys)
 * and names FILE:LINE in the error. Strings point into the conf: it must
 * outlive the result. The run-time pointers (pol, snaps, ban) are left NULL
 * for the caller. No libevent.
 */
#include <stddef.h>
#include "pop-imap-proxy/pop3_server.h"

struct conf;

#define POP3_CONF_KINDS 2	/* pop3_listen, pop3s_listen */

struct pop3_conf {
	struct pop3_server_conf srv;	/* srv.conn.tls is owned */
	char **listen[POP3_CONF_KINDS];
	size_t nlisten[POP3_CONF_KINDS];
	char words_timeout[300];
};

extern const char *const pop3_conf_listen_keys[POP3_CONF_KINDS];

/* NULL with *error_r (valid until the next call) when the settings are wrong */
struct pop3_conf *pop3_conf_new(const struct conf *c, const char **error_r);
void pop3_conf_free(struct pop3_conf **pc);

#endif
