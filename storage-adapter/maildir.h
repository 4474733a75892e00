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
/* a local part or domain that is safe as one path component (and canonical:
 * lower case) */
int maildir_name_is_safe(const char *s);

#endif
