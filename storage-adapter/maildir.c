/*
 * maildir - durable delivery into Maildir++ (the layout Dovecot and Courier
 * read): ROOT/DOMAIN/LOCAL/Maildir/{tmp,new,cur}.
 *
 *   maildir_tmp_open()    create tmp/NAME in the first recipient's Maildir
 *   maildir_tmp_write()   append a piece (page cache only: no fsync)
 *   maildir_tmp_commit()  fsync, link into each new/, fsync each new/
 *                         directory, unlink tmp/NAME; then say yes
 *   maildir_tmp_abort()   unlink tmp/NAME (an aborted transaction)
 *   maildir_deliver()     all of it for a message held in memory
 *
 * Names are TIME.M<usec>P<pid>Q<seq>.HOST (unique per host). Recipient names
 * become path components, so they are checked: no '/', no leading dot, no
 * control characters, no upper case (the caller passes the user database's
 * canonical name, never the address as the client wrote it). Never leaves a half-written file in new/: a crash
 * before the link leaves at most a file in tmp/, which readers ignore.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "common/xmalloc.h"
#include "storage-adapter/maildir.h"

static atomic_ulong seq;
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

static int
mkdirs(char *path, mode_t mode)
{
	for (char *q = path + 1; *q; q++) {
		if (*q != '/')
			continue;
		*q = '\0';
		if (mkdir(path, mode) < 0 && errno != EEXIST) {
			*q = '/';
			return -1;
		}
		*q = '/';
	}
	if (mkdir(path, mode) < 0 && errno != EEXIST)
		return -1;
	return 0;
}

static int
fsync_path(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rc;

	if (fd < 0)
		return -1;
	rc = fsync(fd);
	close(fd);
	return rc;
}

/* ROOT/DOMAIN/LOCAL/Maildir, with tmp new cur made */
static char *
mailbox(const char *root, const struct maildir_rcpt *r)
{
	static const char *const sub[] = { "tmp", "new", "cur" };
	char *md = xasprintf("%s/%s/%s/Maildir", root, r->domain, r->local);

	for (int i = 0; i < 3; i++) {
		char *d = xasprintf("%s/%s", md, sub[i]);
		struct stat st;

		if (stat(d, &st) < 0 && mkdirs(d, 0700) < 0) {
			snprintf(errbuf, sizeof(errbuf), "cannot create %s: %s", d, strerror(errno));
			free(d);
			free(md);
			return NULL;
		}
		free(d);
	}
	return md;
}

static int
write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* a message being written into the first recipient's tmp/ */
struct maildir_tmp {
	char *box;		/* that recipient's Maildir */
	char *path;		/* box/tmp/name */
	char name[256];
	int fd;
};

int
maildir_tmp_open(const char *root, const struct maildir_rcpt *r, struct maildir_tmp **t_r,
    const char **error_r)
{
	struct maildir_tmp *t;
	char host[128], dom[256];
	struct timeval tv;
	size_t k;

	for (k = 0; r->domain[k] && k + 1 < sizeof(dom); k++)
		dom[k] = (char)((r->domain[k] >= 'A' && r->domain[k] <= 'Z') ?
		    r->domain[k] + 32 : r->domain[k]);
	dom[k] = '\0';
	if (!maildir_name_is_safe(r->local) || !maildir_name_is_safe(dom)) {
		snprintf(errbuf, sizeof(errbuf), "recipient name not usable as a mailbox");
		*error_r = errbuf;
		return -1;
	}
	t = xcalloc(1, sizeof(*t));
	t->fd = -1;
	{
		struct maildir_rcpt rr = { r->local, dom };

		if ((t->box = mailbox(root, &rr)) == NULL) {
			free(t);
			*error_r = errbuf;
			return -1;
		}
	}
	if (gethostname(host, sizeof(host)) < 0)
		strcpy(host, "localhost");
	host[strcspn(host, "/:")] = '\0';
	gettimeofday(&tv, NULL);
	snprintf(t->name, sizeof(t->name), "%lld.M%ldP%ldQ%lu.%s", (long long)tv.tv_sec,
	    (long)tv.tv_usec, (long)getpid(), atomic_fetch_add(&seq, 1), host);
	t->path = xasprintf("%s/tmp/%s", t->box, t->name);
	t->fd = open(t->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (t->fd < 0) {
		snprintf(errbuf, sizeof(errbuf), "cannot create %s: %s", t->path, strerror(errno));
		free(t->path);
		free(t->box);
		free(t);
		*error_r = errbuf;
		return -1;
	}
	*t_r = t;
	return 0;
}

int
maildir_tmp_write(struct maildir_tmp *t, const char *p, size_t n, const char **error_r)
{
	if (write_all(t->fd, p, n) < 0) {
		int e = errno;

		snprintf(errbuf, sizeof(errbuf), "cannot write %s: %s", t->path, strerror(e));
		*error_r = errbuf;
		errno = e;	/* the caller tells ENOSPC from the rest */
		return -1;
	}
	return 0;
}

void
maildir_tmp_abort(struct maildir_tmp **tp)
{
	struct maildir_tmp *t = *tp;

	if (t == NULL)
		return;
	*tp = NULL;
	if (t->fd >= 0)
		close(t->fd);
	unlink(t->path);
	free(t->path);
	free(t->box);
	free(t);
}

int
maildir_tmp_commit(struct maildir_tmp **tp, const char *root, const struct maildir_rcpt *r,
    size_t n, char *id_r, const char **error_r)
{
	struct maildir_tmp *t = *tp;
	char **boxes = xcalloc(n + 1, sizeof(char *));
	size_t linked = 0;
	int rc = -1;

	for (size_t i = 0; i < n; i++) {
		char dom[256];
		size_t k;

		for (k = 0; r[i].domain[k] && k + 1 < sizeof(dom); k++)
			dom[k] = (char)((r[i].domain[k] >= 'A' && r[i].domain[k] <= 'Z') ?
			    r[i].domain[k] + 32 : r[i].domain[k]);
		dom[k] = '\0';
		if (!maildir_name_is_safe(r[i].local) || !maildir_name_is_safe(dom)) {
			snprintf(errbuf, sizeof(errbuf), "recipient name not usable as a mailbox");
			goto done;
		}
		{
			struct maildir_rcpt rr = { r[i].local, dom };

			if ((boxes[i] = mailbox(root, &rr)) == NULL)
				goto done;
		}
	}
	if (fsync(t->fd) < 0) {
		snprintf(errbuf, sizeof(errbuf), "cannot write %s: %s", t->path, strerror(errno));
		goto done;
	}
	{
		int e = close(t->fd);

		t->fd = -1;
		if (e < 0) {
			snprintf(errbuf, sizeof(errbuf), "cannot write %s: %s", t->path,
			    strerror(errno));
			goto done;
		}
	}
	for (linked = 0; linked < n; linked++) {
		char *dst = xasprintf("%s/new/%s", boxes[linked], t->name);
		char *newdir = xasprintf("%s/new", boxes[linked]);
		int e = link(t->path, dst) < 0 ? errno : 0;

		if (e == 0 && fsync_path(newdir) < 0)
			e = errno;
		free(newdir);
		if (e != 0) {
			snprintf(errbuf, sizeof(errbuf), "cannot deliver to %s: %s", dst, strerror(e));
			unlink(dst);
			free(dst);
			goto done;
		}
		free(dst);
	}
	snprintf(id_r, 64, "%.63s", t->name);
	rc = 0;
done:
	if (rc < 0) {
		/* all or nothing: take back the copies already linked */
		for (size_t i = 0; i < linked; i++) {
			char *dst = xasprintf("%s/new/%s", boxes[i], t->name);

			unlink(dst);
			free(dst);
		}
		*error_r = errbuf;
	}
	for (size_t i = 0; i < n; i++)
		free(boxes[i]);
	free(boxes);
	maildir_tmp_abort(tp);	/* the tmp/ name goes: new/ holds the links */
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
