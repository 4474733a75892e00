#ifndef PC_MAILSTORE_H
#define PC_MAILSTORE_H
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/*
 * The mail store, as the doors see it: one user's folders and messages,
 * named by the user database's canonical name ("user@domain"), never by a
 * path. Backend: Maildir++ in storage-adapter/mailstore_maildir.c, kept in
 * Dovecot's own formats so Dovecot and Portcullis can serve it in turn.
 *
 * Owner: a struct mailstore belongs to one session (or one delivery) and is
 * used by one thread at a time; a mailstore_box belongs to its store and is
 * closed before it. Calls do file I/O (and fsync where it matters): run them
 * on a job thread, never on an event loop.
 *
 * Folder names are IMAP names with '.' as the hierarchy separator, exactly
 * as a client sends them (modified UTF-7); "INBOX" (any case) is the inbox.
 */

/* limits (hostile store files are input too) */
#define MAX_MAILSTORE_FOLDER_NAME	200	/* bytes of a folder name */
#define MAX_MAILSTORE_FOLDERS		10000	/* folders listed for one user */
#define MAX_MAILSTORE_MESSAGES		1000000	/* messages in one folder */
#define MAX_MAILSTORE_FNAME		255	/* a message's file name */
#define MAX_MAILSTORE_UIDLIST_LINE	4096	/* one dovecot-uidlist line */
#define MAX_MAILSTORE_UIDLIST_BYTES	(256u << 20)
#define MAX_MAILSTORE_KEYWORDS		26	/* Maildir keyword letters a..z */
#define MAX_MAILSTORE_KEYWORD_LEN	100	/* bytes of one keyword name */
#define MAX_MAILSTORE_LOCK_WAIT		30	/* seconds to wait for a store lock */
#define MAX_MAILSTORE_CACHE_VALUE	(64u << 10)	/* one cached string (longer: not kept) */
#define MAX_MAILSTORE_CACHE_FILE	(256u << 20)	/* one folder's portcullis.cache */

/* system flags (IMAP \Answered \Flagged \Deleted \Seen \Draft) */
enum mailstore_flag {
	MAILSTORE_ANSWERED = 1 << 0,
	MAILSTORE_FLAGGED = 1 << 1,
	MAILSTORE_DELETED = 1 << 2,
	MAILSTORE_SEEN = 1 << 3,
	MAILSTORE_DRAFT = 1 << 4,
};
#define MAILSTORE_FLAGS_ALL 0x1fu

enum mailstore_flag_mode {
	MAILSTORE_FLAGS_REPLACE,
	MAILSTORE_FLAGS_ADD,
	MAILSTORE_FLAGS_REMOVE,
};

/* one message of an open mailbox, in UID order */
struct mailstore_msg {
	uint32_t uid;
	unsigned flags;		/* enum mailstore_flag bits */
	uint32_t keywords;	/* bit i: mailstore_box_keyword(box, i) */
	uint64_t size;		/* octets as stored */
	uint64_t vsize;		/* octets with CRLF line ends (RFC822.SIZE) */
	unsigned recent:1;	/* IMAP \Recent, as mailstore_box_open says */
};

/*
 * What a message call returns when the message was expunged (by another
 * session, or Dovecot) since the last sync: not an error of the store. A
 * file renamed by another session (its flags are in its name) is found by
 * its base name with a bounded rescan; only a file gone from new/ and cur/
 * is MAILSTORE_GONE. Other failures are -1; both are < 0.
 */
#define MAILSTORE_GONE (-2)

struct mailstore;
struct mailstore_box;
struct mailstore_append;

/* ROOT is the store's top directory; USER the canonical "local@domain" */
int mailstore_open(const char *root, const char *user, struct mailstore **ms_r,
    const char **error_r) __attribute__((warn_unused_result));
void mailstore_free(struct mailstore **ms);

/* folder names, INBOX first, then sorted; free with mailstore_names_free() */
int mailstore_folders(struct mailstore *ms, char ***names_r, size_t *n_r, const char **error_r)
    __attribute__((warn_unused_result));
void mailstore_names_free(char ***names, size_t n);
int mailstore_folder_create(struct mailstore *ms, const char *name, const char **error_r)
    __attribute__((warn_unused_result));
/* a folder and its messages; children stay (as IMAP says) */
int mailstore_folder_delete(struct mailstore *ms, const char *name, const char **error_r)
    __attribute__((warn_unused_result));
/* renames the folder's children with it; INBOX cannot be renamed */
int mailstore_folder_rename(struct mailstore *ms, const char *from, const char *to,
    const char **error_r) __attribute__((warn_unused_result));
int mailstore_folder_is_valid(const char *name);
/*
 * Subscriptions (IMAP SUBSCRIBE/LSUB) in Dovecot's Maildir++ "subscriptions"
 * file (version 2 written; version 1 read and kept), so Dovecot sees the
 * same. Names as IMAP gives them, '.' the separator; NULL-terminated list.
 */
int mailstore_subscriptions(struct mailstore *ms, char ***names_r, size_t *n_r,
    const char **error_r) __attribute__((warn_unused_result));
int mailstore_subscribe(struct mailstore *ms, const char *name, int on, const char **error_r)
    __attribute__((warn_unused_result));
/* create NAME unless it exists, and subscribe it when created (first-login folders) */
int mailstore_folder_ensure(struct mailstore *ms, const char *name, const char **error_r)
    __attribute__((warn_unused_result));

/*
 * Open a folder: new mail is moved to cur/, UIDs are assigned under the
 * store's lock. The message list is a snapshot until mailstore_box_sync().
 *
 * \Recent as Dovecot does it: a message is \Recent from when it gets its UID
 * (delivery, COPY, MOVE, APPEND) until a session opened with
 * mailstore_box_open (IMAP SELECT) takes it; exactly one session does (the
 * first UID still recent is kept in dovecot-uidlist's header as "r<uid>", a
 * field Dovecot keeps and ignores). A box opened with mailstore_box_open_peek
 * (STATUS, EXAMINE, POP3, the target of COPY or APPEND, Sieve fileinto) sees
 * the \Recent marks and takes none. A message stays \Recent for the box that
 * saw it so until the box is closed.
 */
int mailstore_box_open(struct mailstore *ms, const char *name, struct mailstore_box **box_r,
    const char **error_r) __attribute__((warn_unused_result));
int mailstore_box_open_peek(struct mailstore *ms, const char *name,
    struct mailstore_box **box_r, const char **error_r) __attribute__((warn_unused_result));
void mailstore_box_close(struct mailstore_box **box);
int mailstore_box_sync(struct mailstore_box *box, const char **error_r)
    __attribute__((warn_unused_result));
uint32_t mailstore_box_uidvalidity(const struct mailstore_box *box);
uint32_t mailstore_box_uidnext(const struct mailstore_box *box);
size_t mailstore_box_count(const struct mailstore_box *box);
/* the I-th message (0-based, UID order); NULL past the end */
const struct mailstore_msg *mailstore_box_msg(const struct mailstore_box *box, size_t i);
/* the index of UID, or -1 */
long mailstore_box_find(const struct mailstore_box *box, uint32_t uid);
/* keyword I's name, NULL if the slot is unused */
const char *mailstore_box_keyword(const struct mailstore_box *box, unsigned i);
/* the folder's name ("INBOX" for the inbox) */
const char *mailstore_box_name(const struct mailstore_box *box);
/* the folder's Maildir directory (with new/ cur/ tmp/), for a watcher */
const char *mailstore_box_dir(const struct mailstore_box *box);

/* the internal date (the file's mtime), read when first asked: opening a
 * folder whose names carry ,S= stats no file */
int mailstore_msg_date(struct mailstore_box *box, uint32_t uid, time_t *date_r,
    const char **error_r) __attribute__((warn_unused_result));
/* a read-only descriptor on the message's bytes (the caller closes it);
 * MAILSTORE_GONE when expunged meanwhile (also for _date, _set_flags, _copy) */
int mailstore_msg_open(struct mailstore_box *box, uint32_t uid, int *fd_r, const char **error_r)
    __attribute__((warn_unused_result));
/*
 * Change flags and keywords (names, case-insensitive as IMAP's are; new ones
 * get a free letter). Fails if all 26 letters are taken.
 */
int mailstore_msg_set_flags(struct mailstore_box *box, uint32_t uid, enum mailstore_flag_mode mode,
    unsigned flags, const char *const *keywords, size_t nkeywords, const char **error_r)
    __attribute__((warn_unused_result));
/*
 * Copy message UID of SRC into DST (IMAP COPY/MOVE): a hard link where the
 * file system allows (else a copy), flags and keywords kept, the internal
 * date kept, a new UID in DST (*uid_r). SRC and DST are of one store.
 */
int mailstore_msg_copy(struct mailstore_box *src, uint32_t uid, struct mailstore_box *dst,
    uint32_t *uid_r, const char **error_r) __attribute__((warn_unused_result));
/* remove the message (whatever its flags) */
int mailstore_msg_expunge(struct mailstore_box *box, uint32_t uid, const char **error_r)
    __attribute__((warn_unused_result));

/*
 * Strings a door computes from a message file and would compute again,
 * cached per folder: in memory per process (shared by the sessions) and in
 * the folder's file "portcullis.cache" (storage-adapter/mailstore_cache.h),
 * keyed by the Maildir base name, which a flag change keeps and no other
 * file ever gets. get: 0 and a malloc'd NUL-terminated copy, -1 when not
 * cached (or UID is not in the list). put: keep it (values longer than
 * MAX_MAILSTORE_CACHE_VALUE are not). flush: write the folder's file when it
 * gained entries, without the messages expunged since (file I/O: a job
 * thread; call it at the end of a command that put).
 */
enum mailstore_cache_field {
	MAILSTORE_CACHE_ENVELOPE,
	MAILSTORE_CACHE_BODY,
	MAILSTORE_CACHE_BODYSTRUCTURE,
};
int mailstore_cache_get(struct mailstore_box *box, uint32_t uid, enum mailstore_cache_field field,
    char **val_r, size_t *len_r) __attribute__((warn_unused_result));
void mailstore_cache_put(struct mailstore_box *box, uint32_t uid, enum mailstore_cache_field field,
    const char *val, size_t len);
void mailstore_cache_flush(struct mailstore_box *box);

/*
 * Append (IMAP APPEND, and delivery): written to tmp/ piecewise, then fsync,
 * renamed into cur/ with its flags, UID assigned. date 0 means now.
 */
int mailstore_append_begin(struct mailstore_box *box, struct mailstore_append **a_r,
    const char **error_r) __attribute__((warn_unused_result));
int mailstore_append_write(struct mailstore_append *a, const void *p, size_t n,
    const char **error_r) __attribute__((warn_unused_result));
/* *a is freed either way */
int mailstore_append_commit(struct mailstore_append **a, unsigned flags,
    const char *const *keywords, size_t nkeywords, time_t date, uint32_t *uid_r,
    const char **error_r) __attribute__((warn_unused_result));
void mailstore_append_abort(struct mailstore_append **a);

/*
 * Delivery (the SMTP door): one message for several users, spooled as it
 * arrives into the first user's tmp/ (never held in memory), then committed:
 * fsync, hard-linked into every user's new/ named with ,S= and ,W= (so no
 * reader has to count), each new/ fsynced, the tmp/ name removed. All or
 * nothing. UIDs are given by the first session that opens the folder, as
 * with any Maildir delivery agent. Begin, write and abort do no fsync and
 * may run on an event loop; commit belongs on a job thread. USERS are
 * canonical names; id_r (>= 64 bytes) gets the message's file name in new/.
 */
struct mailstore_delivery;

int mailstore_deliver_begin(const char *root, const char *user,
    struct mailstore_delivery **d_r, const char **error_r) __attribute__((warn_unused_result));
int mailstore_deliver_write(struct mailstore_delivery *d, const void *p, size_t n,
    const char **error_r) __attribute__((warn_unused_result));
/* *d is freed either way */
int mailstore_deliver_commit(struct mailstore_delivery **d, const char *root,
    const char *const *users, size_t n, char *id_r, const char **error_r)
    __attribute__((warn_unused_result));
void mailstore_deliver_abort(struct mailstore_delivery **d);
/* a read-only descriptor on what was written so far (before the commit:
 * for the user Sieve scripts, storage-adapter/sieve_deliver.h); the caller
 * closes it */
int mailstore_deliver_open_read(const struct mailstore_delivery *d, int *fd_r,
    const char **error_r) __attribute__((warn_unused_result));

#endif
