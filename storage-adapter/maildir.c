/*
 * maildir - the SMTP door's delivery API, kept for its callers, on top of
 * the mail store (storage-adapter/mailstore.h): every message reaches
 * ROOT/DOMAIN/LOCAL/Maildir/new through mailstore_deliver_*.
 *
 *   maildir_tmp_open()    create tmp/NAME in the first recipient's Maildir
 *   maildir_tmp_write()   append a piece (page cache only: no fsync)
 *   maildir_tmp_commit()  fsync, link into each new/ as NAME,S=<size>,W=<size
 *                         with CRLF>, fsync each new/ directory, unlink
 *                         tmp/NAME; then say yes
 *   maildir_tmp_abort()   unlink tmp/NAME (an aborted transaction)
 *   maildir_deliver()     all of it for a message held in memory
 *
 * Names are TIME.M<usec>P<pid>Q<seq>.HOST (unique per host). Recipient names
 * become path components, so they are checked: no '/', no leading dot, no
 * control characters, no upper case (the caller passes the user database's
 * canonical name, never the address as the client wrote it). Never leaves a
 * half-written file in new/: a crash before the link leaves at most a file in
 * tmp/, which readers ignore.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/xmalloc.h"
#include "storage-adapter/mailstore.h"
#include "storage-adapter/maildir.h"

static _Thread_local char errbuf[512];	/* one per delivery thread */

int
maildir_name_is_safe(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 255 || s[0] == '.')
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		/* upper case: not a canonical user name (userdb_resolve), so a
		 * mailbox the user would never read */
		if (c <= 0x20 || c >= 0x7f || c == '/' || c == '\\' || (c >= 'A' && c <= 'Z'))
			return 0;
	}
	return 1;
}

/* "local@domain" (domain in lower case) for the store, or NULL */
static char *
user_of(const struct maildir_rcpt *r)
{
	char dom[256];
	size_t k;

	for (k = 0; r->domain[k] && k + 1 < sizeof(dom); k++)
		dom[k] = (char)((r->domain[k] >= 'A' && r->domain[k] <= 'Z') ?
		    r->domain[k] + 32 : r->domain[k]);
	dom[k] = '\0';
	if (r->domain[k] != '\0' || !maildir_name_is_safe(r->local) || !maildir_name_is_safe(dom))
		return NULL;
	return xasprintf("%s@%s", r->local, dom);
}

/* a message being written into the first recipient's tmp/ */
struct maildir_tmp {
	struct mailstore_delivery *d;
};

int
maildir_tmp_open(const char *root, const struct maildir_rcpt *r, struct maildir_tmp **t_r,
    const char **error_r)
{
	char *user = user_of(r);
	struct maildir_tmp *t;

	if (user == NULL) {
		snprintf(errbuf, sizeof(errbuf), "recipient name not usable as a mailbox");
		*error_r = errbuf;
		return -1;
	}
	t = xcalloc(1, sizeof(*t));
	if (mailstore_deliver_begin(root, user, &t->d, error_r) < 0) {
		free(user);
		free(t);
		return -1;
	}
	free(user);
	*t_r = t;
	return 0;
}

int
maildir_tmp_write(struct maildir_tmp *t, const char *p, size_t n, const char **error_r)
{
	return mailstore_deliver_write(t->d, p, n, error_r);	/* keeps errno */
}

int
maildir_tmp_open_read(const struct maildir_tmp *t, int *fd_r, const char **error_r)
{
	return mailstore_deliver_open_read(t->d, fd_r, error_r);
}

void
maildir_tmp_abort(struct maildir_tmp **tp)
{
	struct maildir_tmp *t = *tp;

	if (t == NULL)
		return;
	*tp = NULL;
	mailstore_deliver_abort(&t->d);
	free(t);
}

int
maildir_tmp_commit(struct maildir_tmp **tp, const char *root, const struct maildir_rcpt *r,
    size_t n, char *id_r, const char **error_r)
{
	char **users = xcalloc(n + 1, sizeof(char *));
	int rc = -1;

	for (size_t i = 0; i < n; i++) {
		if ((users[i] = user_of(&r[i])) == NULL) {
			snprintf(errbuf, sizeof(errbuf), "recipient name not usable as a mailbox");
			*error_r = errbuf;
			goto done;
		}
	}
	rc = mailstore_deliver_commit(&(*tp)->d, root, (const char *const *)users, n, id_r,
	    error_r);
done:
	for (size_t i = 0; i < n; i++)
		free(users[i]);
	free(users);
	maildir_tmp_abort(tp);
	return rc;
}

int
maildir_deliver(const char *root, const struct maildir_rcpt *r, size_t n, const char *head,
    size_t headlen, const char *body, size_t bodylen, char *id_r, const char **error_r)
{
	struct maildir_tmp *t;

	if (n == 0) {
		snprintf(errbuf, sizeof(errbuf), "no recipient");
		*error_r = errbuf;
		return -1;
	}
	if (maildir_tmp_open(root, &r[0], &t, error_r) < 0)
		return -1;
	if (maildir_tmp_write(t, head, headlen, error_r) < 0 ||
	    maildir_tmp_write(t, body, bodylen, error_r) < 0) {
		maildir_tmp_abort(&t);
		return -1;
	}
	return maildir_tmp_commit(&t, root, r, n, id_r, error_r);
}
