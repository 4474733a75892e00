#ifndef PC_MAILDIR_H
#define PC_MAILDIR_H
#include <stddef.h>

/*
 * The bundled mail store: Maildir++ under ROOT/DOMAIN/LOCAL/Maildir. A
 * message is acknowledged only after it was written to tmp/, fsynced,
 * renamed (linked) into new/ and new/ was fsynced.
 */
struct maildir_rcpt {
	const char *local;
	const char *domain;
};

/*
 * Deliver one message (head, then body) to every recipient: written once,
 * hard-linked into each mailbox. id_r (>= 64 bytes) gets the file's unique
 * name. All or nothing: on failure no mailbox keeps a copy.
 */
int maildir_deliver(const char *root, const struct maildir_rcpt *r, size_t n,
    const char *head, size_t headlen, const char *body, size_t bodylen, char *id_r,
    const char **error_r) __attribute__((warn_unused_result));
/*
 * A message written piecewise as it arrives (never held whole in memory):
 * opened in the first recipient's tmp/, written in pieces, then committed
 * (fsync, hard-linked into every recipient's new/, each new/ fsynced, the
 * tmp/ name removed) or aborted (removed). Open, write and abort are quick
 * (no fsync) and may run on an event loop; commit fsyncs and belongs on a
 * job thread. The tmp/ and new/ directories share one file system, so the
 * links never copy. Owner: one transaction; one thread at a time.
 */
struct maildir_tmp;

int maildir_tmp_open(const char *root, const struct maildir_rcpt *r, struct maildir_tmp **t_r,
    const char **error_r) __attribute__((warn_unused_result));
int maildir_tmp_write(struct maildir_tmp *t, const char *p, size_t n, const char **error_r)
    __attribute__((warn_unused_result));
/* all or nothing, as maildir_deliver(); *t is freed and NULL either way */
int maildir_tmp_commit(struct maildir_tmp **t, const char *root, const struct maildir_rcpt *r,
    size_t n, char *id_r, const char **error_r) __attribute__((warn_unused_result));
/* remove the file and free; NULL is fine */
void maildir_tmp_abort(struct maildir_tmp **t);
/* a read-only descriptor on the spooled bytes, before the commit (for the
 * user Sieve scripts and the relayhost sends); the caller closes it */
int maildir_tmp_open_read(const struct maildir_tmp *t, int *fd_r, const char **error_r)
    __attribute__((warn_unused_result));
/* a local part or domain that is safe as one path component (and canonical:
 * lower case) */
int maildir_name_is_safe(const char *s);

#endif
