#ifndef PC_SMTP_SERVER_H
#define PC_SMTP_SERVER_H
#include <stddef.h>
#include "common/cidr.h"
#include "service/penalty.h"
#include "smtp-gateway/smtp_proto.h"

struct userdb;
typedef struct ssl_ctx_st SSL_CTX;

enum smtp_listener_kind { LISTEN_SMTP, LISTEN_SUBMISSION, LISTEN_SMTPS };

/* What the daemon hands the SMTP front door. Must outlive smtp_server_run(). */
struct smtp_server_conf {
	struct smtp_params params;	/* user_resolve is filled by the server */
	const char *users_url;		/* "file:/etc/portcullis/users", "" none */
	const char *maildir_root;	/* delivery = maildir:DIR, or NULL */
	const char *downstream;		/* "[HOST]:PORT": delivery = relay:, or relayhost; NULL none */
	unsigned downstream_cache_time;	/* seconds a finished downstream session is kept */
	unsigned max_connections;	/* total */
	unsigned max_per_client;	/* per client address */
	unsigned timeout;		/* seconds per request (or idle: request_deadline = 0) */
	int request_deadline;		/* the timeout bounds a whole request, not each read */
	unsigned min_data_rate;		/* bytes/s a client must keep up in DATA */
	unsigned stress_timeout;	/* the timeout above 80 % of max_connections */
	SSL_CTX *tls;			/* NULL: no STARTTLS, no smtps */
	const char *resolver;		/* client name lookups: "system" or IP[:PORT]; NULL off */
	struct penalty_conf penalty;	/* failed AUTH: delays and the auth-ban */
	int smtp_auth;			/* 0: AUTH only on submission and smtps */
	/* Sieve (smtp_sieve): params.sieve is the scripts; NULL none */
	const struct sieve_limits *sieve_limits;
	const char *quarantine_dir;	/* the quarantine Maildir */
	/* from the event loop; must not block */
	void (*ban)(void *arg, const struct ipaddr *addr, unsigned long seconds, const char *why);
	void *ban_arg;
	/* user Sieve scripts at delivery (smtp_deliver_sieve.h); NULL none */
	struct smtp_deliver_sieve *deliver_sieve;
};

/* serve the given listening sockets (kinds[i], an enum smtp_listener_kind,
 * for fds[i], bound with listener_bind()) until SIGTERM/SIGINT */
int smtp_server_run(const int *fds, const int *kinds, size_t nfds,
    const struct smtp_server_conf *c, const char **error_r)
    __attribute__((warn_unused_result));

#endif
