#ifndef PC_IMAP_PROTO_H
#define PC_IMAP_PROTO_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "common/sasl.h"

/*
 * The IMAP4rev1 server session (RFC 3501 with IDLE, UIDPLUS, MOVE, LITERAL+,
 * NAMESPACE, ID, ENABLE, UNSELECT, SPECIAL-USE, SASL-IR, CHILDREN, ESEARCH)
 * for one connection, without I/O: client bytes in (through imap_parser),
 * reply segments and actions out. The session owns the user's mail store
 * (struct mailstore) and the selected folder; it touches them only inside
 * imap_proto_exec(), which the door runs on a job thread.
 *
 * Door loop:
 *   imap_proto_start()                 greeting queued
 *   imap_proto_input(bytes)            returns what it consumed; stops when an
 *                                      action is pending: feed the rest after
 *   imap_proto_action():
 *     IMAP_ACT_AUTH       check credentials off the loop, imap_proto_auth_done()
 *     IMAP_ACT_STARTTLS   flush output, drop buffered input, handshake,
 *                         imap_proto_set_tls()
 *     IMAP_ACT_EXEC       imap_proto_exec() on a job thread (nothing else may
 *                         touch the session meanwhile except the output calls
 *                         below), then imap_proto_exec_done() on the loop.
 *                         If the action is still IMAP_ACT_EXEC afterwards the
 *                         command goes on in batches (a large FETCH): run it
 *                         again, preferably once the output has drained.
 *   output: while imap_proto_output_segment() gives a segment, send it and
 *   report with imap_proto_output_done(). Bytes may be sent piecewise; a file
 *   range is the door's to copy (sendfile/evbuffer_add_file), reported done
 *   once wholly sent. The session closes a segment's fd itself. A large
 *   converted body (bare LF -> CRLF) comes as byte segments of 64 KiB made
 *   as they are asked for (reading the mapped message file), so ask again
 *   only as the socket drains. Run a FETCH's next batch (action still
 *   IMAP_ACT_EXEC after exec_done) once imap_proto_output_queued() is
 *   below marks such as 64 KiB in memory and a few MiB or 8 message
 *   sections (open files) not yet handed over: a batch stops after 256 KiB
 *   in memory, 4 MiB of message files or 32 of them, so the next batch is
 *   made while the socket still sends the last one.
 *   imap_proto_wants_close(): close once the output is sent.
 *
 * IDLE: while imap_proto_watch_dir() is not NULL the door watches that
 * Maildir folder (inotify on its new/ and cur/ and dovecot-uidlist) and calls
 * imap_proto_notify() on a change: it asks for an IMAP_ACT_EXEC that syncs
 * the folder and queues the untagged EXISTS/EXPUNGE/FETCH. Every 2 minutes of
 * IDLE the door may call imap_proto_keepalive() ("* OK Still here").
 *
 * Owner: the connection; one thread at a time. Never logs raw peer bytes.
 */

struct imap_params {
	const char *myhostname;
	const char *banner;		/* text of the greeting; NULL: "<myhostname> ready." */
	int tls_available;		/* STARTTLS can be offered */
	unsigned auth_mechs;		/* AUTH_MECH_* for AUTHENTICATE */
	int login;			/* the LOGIN command (a plaintext mechanism) */
	int auth_allow_plaintext;	/* LOGIN, PLAIN, LOGIN mechanism without TLS */
	const struct sasl_callbacks *sasl_cb;
	const char *store_root;		/* mailstore_open()'s ROOT; copied */
};

enum imap_action {
	IMAP_ACT_NONE,
	IMAP_ACT_AUTH,		/* check credentials (struct imap_auth_req), then imap_proto_auth_done() */
	IMAP_ACT_STARTTLS,	/* flush, drop buffered input, handshake, imap_proto_set_tls() */
	IMAP_ACT_EXEC,		/* imap_proto_exec() on a job thread, imap_proto_exec_done() on the loop */
};

/* as struct pop3_auth_req without APOP: check != 0: run sasl_server_check()
 * off the loop, the outcome is sasl_server_checked(); else ok is */
struct imap_auth_req {
	struct sasl_server *sasl;
	int check;
	int ok;
};

/* one piece of output, in order */
struct imap_segment {
	const char *data;	/* bytes (fd < 0): data[0..len) */
	size_t len;		/* bytes: left to send; file: octets the client gets */
	int fd;			/* file range: -1 for bytes; the session's, do not close */
	off_t offset;		/* file: where the range starts in the file */
	int crlf;		/* file: turn each LF not preceded by CR into CRLF; len
				   counts the output (a copier stops after len octets).
				   Always 0 today: converted sections come as bytes */
};

struct imap_proto;

struct imap_proto *imap_proto_new(const struct imap_params *p);
/* closes the folder and the store (file I/O: the door may call it on a job thread) */
void imap_proto_free(struct imap_proto **ip);
/* queues the greeting */
void imap_proto_start(struct imap_proto *ip);
/* feed client bytes; returns how many were consumed (fewer while an action is pending) */
size_t imap_proto_input(struct imap_proto *ip, const char *buf, size_t len);
enum imap_action imap_proto_action(const struct imap_proto *ip);
int imap_proto_wants_close(const struct imap_proto *ip);

/* the first segment to send: 1 and *seg_r, or 0 when nothing is queued */
int imap_proto_output_segment(struct imap_proto *ip, struct imap_segment *seg_r);
/* N octets of the first segment were sent (a file range: only all of it) */
void imap_proto_output_done(struct imap_proto *ip, size_t n);
/* octets queued (bytes and file ranges), for back-pressure */
uint64_t imap_proto_output_pending(const struct imap_proto *ip);
/* of those: octets held in memory, and the message sections still queued
 * (file ranges and converted sections: an open file each) and their octets */
void imap_proto_output_queued(const struct imap_proto *ip, uint64_t *mem_r, size_t *files_r,
    uint64_t *file_bytes_r);
/* the leading byte segment (len 0 when the first is a file range): for tests */
const char *imap_proto_output(const struct imap_proto *ip, size_t *len_r);

/* IMAP_ACT_EXEC: on a job thread */
void imap_proto_exec(struct imap_proto *ip);
/* back on the loop: queues what exec produced; the action may be EXEC again */
void imap_proto_exec_done(struct imap_proto *ip);

struct imap_auth_req *imap_proto_auth_req(struct imap_proto *ip);
/* the tag of the command an action belongs to (the proxy answers a login) */
const char *imap_proto_tag(const struct imap_proto *ip);
#define IMAP_AUTH_TEMPFAIL (-1)
/* a success is followed by IMAP_ACT_EXEC (open the store; first-login work:
 * the special-use folders), whose exec_done queues the tagged OK */
void imap_proto_auth_done(struct imap_proto *ip, int ok);
/* "" before login: the canonical user */
const char *imap_proto_user(const struct imap_proto *ip);
unsigned imap_proto_auth_failures(const struct imap_proto *ip);

void imap_proto_set_tls(struct imap_proto *ip, int active);
void imap_proto_set_tls_peer(struct imap_proto *ip, const char *identity);

/* in IDLE (the door's idle timeout applies, not the command one) */
int imap_proto_idling(const struct imap_proto *ip);
/* IDLE: the selected folder's Maildir directory while idling, else NULL */
const char *imap_proto_watch_dir(const struct imap_proto *ip);
/* something changed in the watched folder (ignored unless idling with no action) */
void imap_proto_notify(struct imap_proto *ip);
void imap_proto_keepalive(struct imap_proto *ip);
/* the server is going away: "* BYE <text>", then close */
void imap_proto_bye(struct imap_proto *ip, const char *text);

/* does NAME match the LIST pattern (with '%' and '*', '.' the separator)? */
int imap_list_match(const char *pattern, const char *name);

#endif
