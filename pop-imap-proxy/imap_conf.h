#ifndef PC_IMAP_CONF_H
#define PC_IMAP_CONF_H
/*
 * imap_conf - the IMAP door's settings, compiled from the configuration in
 * one call, as smtp_conf_new() compiles the SMTP door's: the daemon's master
 * (start-up, reload, `portcullisd -t`) and the tests build them here.
 * Checks what the door needs (a Maildir store, TLS keys for imaps,
 * imap_auth_mechanisms, the penalty keys) and names FILE:LINE in the
 * error. Strings point into the conf: it must outlive the result. The run-time
 * pointers (pol, snaps, ban, params.sasl_cb) are left NULL for the caller.
 * No libevent.
 */
#include <stddef.h>
#include "pop-imap-proxy/imap_server.h"

struct conf;

#define IMAP_CONF_KINDS 2	/* imap_listen, imaps_listen */

struct imap_conf {
	struct imap_server_conf srv;	/* srv.tls is owned */
	char **listen[IMAP_CONF_KINDS];	/* the specs of each enum imap_listener_kind */
	size_t nlisten[IMAP_CONF_KINDS];
};

extern const char *const imap_conf_listen_keys[IMAP_CONF_KINDS];

/* NULL with *error_r (valid until the next call) when the settings are wrong */
struct imap_conf *imap_conf_new(const struct conf *c, const char **error_r);
void imap_conf_free(struct imap_conf **ic);

#endif
