#ifndef PC_SASL_H
#define PC_SASL_H
#include <stddef.h>
#include "common/authmech.h"

/*
 * The SASL mechanisms, once for every door (SMTP AUTH, POP3, IMAP, web UI):
 * PLAIN, LOGIN, SCRAM-SHA-256 (RFC 7677) and EXTERNAL through GNU SASL,
 * CRAM-MD5 of our own (GNU SASL's server side needs the plaintext password).
 * No sockets, no event loop, nothing of a protocol: base64 lines in,
 * base64 challenges out. The door frames them (SMTP "334 ...", IMAP "+ ...").
 * Owner: the door's session, one exchange per sasl_server; one thread at a
 * time (sasl_server_check() may run on a pool thread while the loop waits).
 */

/* What a user database knows of one user: copies, owned by the exchange. */
struct sasl_user {
	char name[256];		/* the canonical user name */
	char hash[256];		/* "{CRYPT}$y$..." or "" */
	char cram[72];		/* CRAM-MD5 secret (64 hex) or "" */
	char scram[200];	/* "{SCRAM-SHA-256}ITER,SALT,STOREDKEY,SERVERKEY" or "" */
};

struct sasl_callbacks {
	/* a login name (or, for EXTERNAL, the certificate's identity) -> the
	 * user: 1 found, 0 unknown. Called only from sasl_server_step(), on
	 * the caller's thread, so it may read a database the loop reloads. */
	int (*lookup)(void *arg, const char *login, struct sasl_user *r);
	/* 1 when password matches u->hash (u->hash "" must cost the same and
	 * fail). Slow: called from sasl_server_check() on any thread; must
	 * touch nothing but its arguments. */
	int (*verify_password)(void *arg, const struct sasl_user *u, const char *password);
	/* 1 when hexdigest answers challenge for u->cram (fast) */
	int (*verify_cram)(void *arg, const struct sasl_user *u, const char *challenge,
	    const char *hexdigest);
	void *arg;
};

struct sasl_params {
	const struct sasl_callbacks *cb;
	const char *hostname;		/* in the CRAM-MD5 challenge */
	/* EXTERNAL: the verified client certificate's identity (subjectAltName
	 * email, else subject CN); NULL when no certificate was verified */
	const char *external_id;
};

enum sasl_rc {
	SASL_CONTINUE,		/* send the challenge, read the next response */
	SASL_CHECK,		/* run sasl_server_check() off the loop, then sasl_server_checked() */
	SASL_OK,		/* authenticated; a non-empty challenge is the server's final data */
	SASL_FAIL,		/* credentials refused */
	SASL_BAD_BASE64,	/* the response was not base64: a protocol error */
	SASL_CANCELLED,		/* the client sent "*" */
};

/* GNU SASL's library context, made once; -1 with *error_r */
int sasl_init(const char **error_r) __attribute__((warn_unused_result));
/* AUTH_MECH_* bit -> "SCRAM-SHA-256"; NULL for none */
const char *sasl_mech_name(unsigned mech);

struct sasl_server;

/* one exchange of mech (an AUTH_MECH_* bit); NULL when mech is unknown or
 * unusable here (EXTERNAL without a verified certificate) */
struct sasl_server *sasl_server_new(unsigned mech, const struct sasl_params *p);
void sasl_server_free(struct sasl_server **s);
/*
 * One response, as the client sent it in base64 ("=" or "" is an empty
 * response; "*" cancels; at most 12288 characters), or NULL when the client
 * gave no initial response (asks for the first challenge). *out64_r: the
 * next challenge (or, with SASL_OK, the server's final data), base64, ""
 * for none; owned by s, valid until the next call.
 */
enum sasl_rc sasl_server_step64(struct sasl_server *s, const char *line, const char **out64_r);
/* the slow part (password hashing): any thread, touches only s */
void sasl_server_check(struct sasl_server *s);
/* after sasl_server_check(): SASL_OK or SASL_FAIL */
enum sasl_rc sasl_server_checked(struct sasl_server *s, const char **out64_r);
/* after SASL_OK: the canonical user name */
const char *sasl_server_user(const struct sasl_server *s);
/* the login the client gave (for a log line; escape it), "" if none yet */
const char *sasl_server_login(const struct sasl_server *s);
unsigned sasl_server_mech(const struct sasl_server *s);
/* after a PLAIN/LOGIN SASL_OK: the verified password (a proxy logs in to
 * the user's backend with it); NULL for other mechanisms. Wiped at free. */
const char *sasl_server_password(const struct sasl_server *s);
/* a PLAIN exchange waiting for its check (SASL_CHECK): the login and the
 * password the client sent, unverified (mail_proxy_auth = backend lets the
 * backend decide); -1 for other mechanisms, an authzid, or none held */
int sasl_server_plain_response(const struct sasl_server *s, const char **authcid_r,
    const char **password_r);

/* Admin side: SCRAM-SHA-256 keys for password, Dovecot's format
 * "{SCRAM-SHA-256}ITER,SALT,STOREDKEY,SERVERKEY" (base64; doveadm pw -s
 * SCRAM-SHA-256). salt NULL: 16 random bytes. -1 with *error_r. */
#define SASL_SCRAM_ITER 4096
int sasl_scram_make(const char *password, unsigned iter, const unsigned char *salt,
    size_t saltlen, char *out, size_t cap, const char **error_r)
    __attribute__((warn_unused_result));
/* split a stored value; 0 with the parts (NUL-terminated copies), -1 when garbled */
int sasl_scram_parse(const char *stored, unsigned *iter_r, char salt_r[64], char stored_r[64],
    char server_r[64]) __attribute__((warn_unused_result));


#endif
