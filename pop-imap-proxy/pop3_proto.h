#ifndef PC_POP3_PROTO_H
#define PC_POP3_PROTO_H
#include <stddef.h>
#include <stdint.h>
#include "common/sasl.h"

/*
 * The POP3 server protocol (RFC 1939, CAPA RFC 2449, STLS RFC 2595, AUTH
 * RFC 5034, APOP) for one connection, without I/O: client bytes in, reply
 * bytes and actions out, so tests can feed it piecewise. What needs a file,
 * a password hash or a handshake is an action the door runs (on a job
 * thread where it blocks) and answers with the matching _done call; input
 * is paused while an action is pending.
 *
 * The mailbox is a struct mailstore_box the door opened for the user (the
 * POP3 session's snapshot: the door must not sync it during the session).
 * Sizes are the stored ,W= sizes (CRLF octets, as Dovecot counts them), so
 * STAT and LIST read no file; UIDL is Dovecot's default pop3_uidl_format
 * %08Xu%08Xv (UID and UIDVALIDITY in hex; Dovecot's X writes lower case).
 * DELE takes effect only at QUIT (the UPDATE action); retrieved messages
 * get \Seen there too, as Dovecot does.
 *
 * Owner: the connection; one thread. Never logs raw peer bytes.
 */

#define POP3_LINE_MAX_PRELOGIN	512	/* RFC 2449: 255 octets of command; some slack */
#define POP3_LINE_MAX		2048
#define POP3_AUTH_LINE_MAX	12288	/* an AUTH response line (RFC 4954's budget) */
#define POP3_BAD_MAX_PRELOGIN	10
#define POP3_BAD_MAX		20
#define POP3_OUTPUT_CHUNK	(64 * 1024)	/* LIST/UIDL are produced in pieces of this */
#define POP3_USER_MAX		256

struct mailstore_box;

struct pop3_params {
	const char *myhostname;
	const char *banner;		/* text after "+OK "; NULL: "<myhostname> ready." */
	int tls_available;		/* STLS can be offered */
	int user_pass;			/* USER/PASS offered */
	unsigned auth_mechs;		/* AUTH_MECH_* for AUTH; 0: no AUTH */
	int apop;			/* APOP offered: a timestamp in the banner */
	int auth_allow_plaintext;	/* USER/PASS, PLAIN, LOGIN, APOP without TLS */
	const struct sasl_callbacks *sasl_cb;
	unsigned bad_max;		/* 0: the defaults */
};

enum pop3_action {
	POP3_ACT_NONE,
	POP3_ACT_AUTH,		/* check credentials (struct pop3_auth_req), then pop3_proto_auth_done() */
	POP3_ACT_OPEN,		/* open the user's INBOX (and take the POP3 lock), then pop3_proto_opened() */
	POP3_ACT_RETR,		/* open the message, then pop3_proto_retr_opened(), stream, pop3_proto_retr_done() */
	POP3_ACT_UPDATE,	/* QUIT: expunge and flag (pop3_proto_update()), then pop3_proto_update_done() */
	POP3_ACT_STARTTLS,	/* flush the output, drop buffered input, handshake, pop3_proto_set_tls() */
};

/*
 * Credentials to check. SASL (AUTH, and USER/PASS as PLAIN): check != 0:
 * run sasl_server_check(sasl) off the loop, the outcome is
 * sasl_server_checked(); check == 0: ok is the outcome. APOP: sasl is NULL;
 * the door looks up apop_login's APOP secret and compares
 * MD5(apop_stamp secret) with apop_digest (hex). Either way the door applies
 * the failure penalty and calls pop3_proto_auth_done().
 */
struct pop3_auth_req {
	struct sasl_server *sasl;
	int check;
	int ok;
	const char *apop_login;
	const char *apop_stamp;
	const char *apop_digest;
};

struct pop3_proto;

struct pop3_proto *pop3_proto_new(const struct pop3_params *p);
void pop3_proto_free(struct pop3_proto **pp);
/*
 * The connection opened: queues the greeting. stamp: the APOP timestamp
 * ("<unique@host>", RFC 1939 §7), NULL to make one; used only with apop.
 */
void pop3_proto_start(struct pop3_proto *pp, const char *stamp);
/* feed client bytes; returns how many were consumed (fewer while an action is pending) */
size_t pop3_proto_input(struct pop3_proto *pp, const char *buf, size_t len);
/* reply bytes to send; consume with pop3_proto_output_done() */
const char *pop3_proto_output(const struct pop3_proto *pp, size_t *len_r);
void pop3_proto_output_done(struct pop3_proto *pp, size_t n);
/* close once the output is written */
int pop3_proto_wants_close(const struct pop3_proto *pp);
/* what the door must do now (POP3_ACT_NONE: read more input) */
enum pop3_action pop3_proto_action(const struct pop3_proto *pp);

struct pop3_auth_req *pop3_proto_auth_req(struct pop3_proto *pp);
/* ok: 1 accepted, 0 refused, POP3_AUTH_TEMPFAIL: not checked. user: the
 * canonical name for APOP (NULL for SASL, which knows it) */
#define POP3_AUTH_TEMPFAIL (-1)
void pop3_proto_auth_done(struct pop3_proto *pp, int ok, const char *user);
/* "" before login: the canonical user to open */
const char *pop3_proto_user(const struct pop3_proto *pp);
/* failed logins on this connection (for the penalty) */
unsigned pop3_proto_auth_failures(const struct pop3_proto *pp);

/* the INBOX, or NULL with in_use (another POP3 session holds it) or a temporary failure */
void pop3_proto_opened(struct pop3_proto *pp, struct mailstore_box *box, int in_use);
/* POP3_ACT_OPEN refused before opening (mail_max_userip_connections):
 * "-ERR <text>" and the connection closes */
void pop3_proto_open_refused(struct pop3_proto *pp, const char *text);

/* POP3_ACT_RETR: which message (UID) and how much: top -1 for RETR, else TOP's line count */
void pop3_proto_retr_req(const struct pop3_proto *pp, uint32_t *uid_r, long *top_r);
/* the message opened (or not): queues "+OK" or "-ERR"; when ok the door
 * flushes the output, streams the message (pop3_stream_*), then calls
 * pop3_proto_retr_done() */
void pop3_proto_retr_opened(struct pop3_proto *pp, int ok);
void pop3_proto_retr_done(struct pop3_proto *pp);

/* POP3_ACT_UPDATE: UIDs to expunge and UIDs to flag \Seen */
void pop3_proto_update(const struct pop3_proto *pp, const uint32_t **expunge_r, size_t *nexpunge_r,
    const uint32_t **seen_r, size_t *nseen_r);
void pop3_proto_update_done(struct pop3_proto *pp, int ok);

/* the connection is (now) encrypted: implicit TLS (pop3s) or after STLS */
void pop3_proto_set_tls(struct pop3_proto *pp, int active);
/* the verified client certificate's identity, for AUTH EXTERNAL */
void pop3_proto_set_tls_peer(struct pop3_proto *pp, const char *identity);

/* Dovecot's default UIDL of a message, %08Xu%08Xv: "%08x%08x" of UID and
 * UIDVALIDITY (lower case, as Dovecot 2.3 really writes it); out holds 17 bytes */
void pop3_uidl(uint32_t uid, uint32_t uidvalidity, char out[17]);

/*
 * A message on its way out (RETR, TOP): read from fd, bare LF made CRLF,
 * lines starting with '.' dot-stuffed, TOP cut after the header and n body
 * lines, ".\r\n" at the end. Reads a regular file: run it where blocking
 * reads are fine, or accept a page-cache read on the loop.
 */
struct pop3_stream {
	int fd;
	long top;		/* -1: everything */
	int in_body;
	long body_lines;
	int bol;		/* at the start of a line */
	int line_empty;		/* the line so far is empty (header end detection) */
	int cr;			/* the last byte was CR */
	int eof, done;
	unsigned char buf[8192];
	size_t pos, len;
};

void pop3_stream_init(struct pop3_stream *s, int fd, long top);
/* up to cap (>= 16) bytes into out; *done_r once the final ".\r\n" is in.
 * -1 with *error_r on a read error. */
int pop3_stream_read(struct pop3_stream *s, char *out, size_t cap, size_t *len_r, int *done_r,
    const char **error_r) __attribute__((warn_unused_result));

#endif
