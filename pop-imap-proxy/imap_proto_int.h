#ifndef PC_IMAP_PROTO_INT_H
#define PC_IMAP_PROTO_INT_H
/*
 * The IMAP session's insides, shared by imap_proto.c (states, commands) and
 * imap_fetch.c (the output queue, FETCH's item writer). Not for the door:
 * it uses imap_proto.h only.
 */
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "pop-imap-proxy/imap_mime.h"
#include "pop-imap-proxy/imap_parser.h"
#include "pop-imap-proxy/imap_proto.h"

enum imap_state { ST_NEW, ST_NOAUTH, ST_AUTH, ST_SELECTED, ST_LOGOUT };

/* a parsed message shared by the section segments of one FETCH response */
struct mref {
	struct imap_mime *m;
	unsigned refs;
};

enum seg_kind { SEG_BYTES, SEG_FILE, SEG_GEN };

struct seg {
	enum seg_kind kind;
	char *buf;		/* bytes; SEG_GEN: the piece being sent */
	size_t len, off, cap;
	int fd;			/* SEG_FILE */
	off_t offset;
	uint64_t flen;
	int crlf;
	struct mref *mr;	/* SEG_GEN: a converted section, made as it is sent */
	struct imap_mime_section sec;
	uint64_t pos;
};

struct segq {
	struct seg *v;
	size_t head, n, cap;
	uint64_t bytes;
	size_t files;
	uint64_t fbytes;	/* of bytes, those of file and generator segments
				   (message files: they cost no memory until sent) */
};

/* the client's view of one message */
struct vmsg {
	uint32_t uid;
	unsigned flags;
	uint32_t kw;
	unsigned gone:1;	/* expunged, not yet announced */
	unsigned recent:1;
};

struct imap_proto;
typedef void exec_fn(struct imap_proto *);

struct imap_proto {
	struct imap_params prm;
	char *store_root;
	enum imap_state st;
	enum imap_action act;
	struct imap_parser *parser;
	int tls;
	char *tls_peer;
	char tag[IMAP_TAG_MAX + 1];	/* of the command an action or exchange belongs to */
	/* AUTHENTICATE */
	struct imap_auth_req auth;
	char *auth_final;
	int in_sasl;
	char *line;		/* IMAP_AUTH_LINE_MAX + 1, only during AUTHENTICATE */
	size_t linelen;
	int skipping;
	char user[256];
	unsigned auth_failures;
	/* the store, the selected folder and the client's view of it */
	struct mailstore *ms;
	struct mailstore_box *box;
	int readonly;
	struct vmsg *view;
	size_t nview, capview;
	size_t told;		/* view entries the client knows of (EXISTS less EXPUNGEs) */
	size_t recent_told;
	uint32_t kwmask;	/* keyword slots the client was told of */
	/* the command being executed */
	const struct imap_cmd *cmd;
	exec_fn *exec;
	int more;		/* exec continues in another batch */
	size_t cursor;		/* where a batch resumes */
	int in_exec;
	exec_fn *after;		/* on the loop once the exec is done */
	/* APPEND */
	int app_active, app_failed, app_sync;
	struct mailstore_box *abox;
	int abox_own;
	struct mailstore_append *app;
	unsigned app_flags;
	char **app_kw;
	size_t app_nkw;
	time_t app_date;
	char *chunk;
	size_t chunklen, chunkcap;
	int fetch_gone;
	int idling;
	unsigned bad_row;	/* BADs in a row, parser's and ours */
	int logout_pending;
	char *bye;		/* imap_proto_bye() during an exec */
	/* output */
	struct segq q, xq;
	int close;
};

/* format into a growing string (long lines: FETCH, SEARCH, FLAGS) */
struct str {
	char *s;
	size_t n, cap;
};

struct mailstore_msg;

/* one message file during a FETCH or SEARCH */
struct fmsg {
	int fd;			/* -1 until opened */
	uint64_t size;		/* file size */
	struct mref *mr;	/* the parsed message, once asked for */
};

/* ---- imap_fetch.c ---- */
/* queue N bytes (to the exec's queue while an exec runs) */
void imap_out_add(struct imap_proto *p, const char *s, size_t n);
/* queue B's bytes and free B */
void imap_out_str(struct imap_proto *p, struct str *b);
void imap_str_addn(struct str *b, const char *s, size_t n);
void imap_str_add(struct str *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* move what an exec queued (X) to the end of the output queue Q */
void imap_segq_join(struct segq *q, struct segq *x);
void imap_segq_clear(struct segq *q);
/* F's parsed message (opening the file of UID first): 0, or -1 */
int imap_fmsg_mime(struct imap_proto *p, struct fmsg *f, uint32_t uid);
void imap_fmsg_close(struct fmsg *f);
/* one message's FETCH response for view entry I (exec); 0, or -1 when it is gone */
int imap_fetch_one(struct imap_proto *p, size_t i);

/* ---- imap_proto.c ---- */
/* "\Answered ... \Recent kw1 kw2", Dovecot's order */
void imap_flags_str(struct imap_proto *p, struct str *b, unsigned flags, uint32_t kw, int recent);
/* the message behind view entry I, or NULL when it is gone from the store */
const struct mailstore_msg *imap_view_msg(struct imap_proto *p, size_t i);

#endif
