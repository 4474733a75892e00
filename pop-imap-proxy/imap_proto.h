#ifndef PC_IMAP_PROTO_H
#define PC_IMAP_PROTO_H
#include <stddef.h>
#include "common/sasl.h"

/*
 * The IMAP4rev1 server session (RFC 3501) for one connection, without I/O:
 * client bytes in (through imap_parser), reply bytes and actions out. A
 * skeleton for now: NOT AUTHENTICATED / AUTHENTICATED / SELECTED / LOGOUT
 * with CAPABILITY, NOOP, LOGOUT, STARTTLS, LOGIN (LOGINDISABLED before TLS
 * unless plaintext is allowed), AUTHENTICATE with SASL-IR, SELECT/EXAMINE,
 * UNSELECT, LIST/LSUB, NAMESPACE, ID, ENABLE and IDLE; the other commands
 * of a selected mailbox answer NO [CANNOT] until they land.
 *
 * What needs a file, a hash or a handshake is an action the door runs (on
 * a job thread where it blocks) and answers with the matching call; input is
 * paused while one is pending. The door owns the mail store and its boxes:
 * the session only reads the box it was handed (counts, flags, UIDs).
 *
 * Owner: the connection; one thread. Never logs raw peer bytes.
 */

struct mailstore_box;

struct imap_params {
	const char *myhostname;
	const char *banner;		/* text of the greeting; NULL: "<myhostname> ready." */
	int tls_available;		/* STARTTLS can be offered */
	unsigned auth_mechs;		/* AUTH_MECH_* for AUTHENTICATE */
	int login;			/* the LOGIN command (a plaintext mechanism) */
	int auth_allow_plaintext;	/* LOGIN, PLAIN, LOGIN mechanism without TLS */
	const struct sasl_callbacks *sasl_cb;
};

enum imap_action {
	IMAP_ACT_NONE,
	IMAP_ACT_AUTH,		/* check credentials (struct imap_auth_req), then imap_proto_auth_done() */
	IMAP_ACT_STARTTLS,	/* flush, drop buffered input, handshake, imap_proto_set_tls() */
	IMAP_ACT_SELECT,	/* close the box handed before (if any); open imap_proto_select_req()'s
				   folder unless its name is NULL; imap_proto_selected() */
	IMAP_ACT_LIST,		/* the user's folders, then imap_proto_list_done() */
};

/* as struct pop3_auth_req without APOP: check != 0: run sasl_server_check()
 * off the loop, the outcome is sasl_server_checked(); else ok is */
struct imap_auth_req {
	struct sasl_server *sasl;
	int check;
	int ok;
};

struct imap_proto;

struct imap_proto *imap_proto_new(const struct imap_params *p);
void imap_proto_free(struct imap_proto **ip);
/* queues the greeting */
void imap_proto_start(struct imap_proto *ip);
/* feed client bytes; returns how many were consumed (fewer while an action is pending) */
size_t imap_proto_input(struct imap_proto *ip, const char *buf, size_t len);
const char *imap_proto_output(const struct imap_proto *ip, size_t *len_r);
void imap_proto_output_done(struct imap_proto *ip, size_t n);
int imap_proto_wants_close(const struct imap_proto *ip);
enum imap_action imap_proto_action(const struct imap_proto *ip);

struct imap_auth_req *imap_proto_auth_req(struct imap_proto *ip);
#define IMAP_AUTH_TEMPFAIL (-1)
void imap_proto_auth_done(struct imap_proto *ip, int ok);
/* "" before login: the canonical user */
const char *imap_proto_user(const struct imap_proto *ip);
unsigned imap_proto_auth_failures(const struct imap_proto *ip);

/* IMAP_ACT_SELECT: the folder (NULL: only close) and whether EXAMINE */
void imap_proto_select_req(const struct imap_proto *ip, const char **name_r, int *readonly_r);
/* box NULL: the folder could not be opened (error: the NO text, e.g.
 * "[NONEXISTENT] Mailbox doesn't exist: x") */
void imap_proto_selected(struct imap_proto *ip, struct mailstore_box *box, const char *error);

/* IMAP_ACT_LIST: the folder names (INBOX first, as mailstore_folders gives them) */
void imap_proto_list_done(struct imap_proto *ip, char *const *names, size_t n, int ok);

void imap_proto_set_tls(struct imap_proto *ip, int active);
void imap_proto_set_tls_peer(struct imap_proto *ip, const char *identity);

/* does NAME match the LIST pattern (with '%' and '*', '.' the separator)? */
int imap_list_match(const char *pattern, const char *name);

#endif
