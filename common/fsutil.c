/*
 * fsutil - mkdir -p, write all, directory fsync, atomic replace.
 *
 *   fsutil_write_all()      every byte, or -1
 *   fsutil_mkdir_p()        create a directory and its missing ancestors
 *   fsutil_fsync_dir()      make a directory's entries durable
 *   fsutil_fsync_parent()   the same for the directory holding a path
 *   fsutil_replace()        temp + fsync + rename + fsync dir, from a buffer
 *   fsutil_replace_with()   the same, filled by a writer callback
 *
 * Blocking; thread-safe (error texts are thread-local). Never follows the
 * temporary name through a symlink (O_EXCL).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fsutil.h"
#include "common/xmalloc.h"

static _Thread_local char errbuf[600];

static const char *
fail(const char *what, const char *path, int e)
{
	snprintf(errbuf, sizeof(errbuf), "cannot %s %.400s: %s", what, path, strerror(e));
	return errbuf;
}

int
fsutil_write_all(int fd, const void *p, size_t n)
{
	const char *c = p;

	while (n > 0) {
		ssize_t w = write(fd, c, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

static int
mkdir_one(const char *p, mode_t mode)
{
	struct stat st;

	if (mkdir(p, mode) == 0)
		return 0;
	if (errno != EEXIST)
		return -1;
	if (stat(p, &st) < 0)
		return -1;
	if (!S_ISDIR(st.st_mode)) {
		errno = ENOTDIR;
		return -1;
	}
	return 0;
}

int
fsutil_mkdir_p(const char *path, mode_t mode, mode_t parent_mode)
{
	char *p = xstrdup(path);
	size_t len = strlen(p);
	int rc = 0, e = 0;

	while (len > 1 && p[len - 1] == '/')	/* "dir/" is dir */
		p[--len] = '\0';
	if (len == 0) {
		free(p);
		errno = ENOENT;
		return -1;
	}
	for (char *q = p + 1; *q; q++) {
		if (*q != '/' || q[-1] == '/')
			continue;
		*q = '\0';
		if (mkdir_one(p, parent_mode) < 0) {
			rc = -1;
			e = errno;
			*q = '/';
			break;
		}
		*q = '/';
	}
	if (rc == 0 && mkdir_one(p, mode) < 0) {
		rc = -1;
		e = errno;
	}
	free(p);
	if (rc < 0)
		errno = e;
	return rc;
}

int
fsutil_fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	if (fsync(fd) < 0) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	close(fd);
	return 0;
}

int
fsutil_fsync_parent(const char *path)
{
	char *dir = xstrdup(path), *slash = strrchr(dir, '/');
	int rc, e;

	if (slash == NULL)
		snprintf(dir, strlen(path) + 1, ".");
	else if (slash == dir)
		slash[1] = '\0';
	else
		*slash = '\0';
	rc = fsutil_fsync_dir(dir);
	e = errno;
	free(dir);
	errno = e;
	return rc;
}

struct buf {
	const void *data;
	size_t len;
};

static int
write_buf(FILE *out, void *ctx, const char **error_r)
{
	const struct buf *b = ctx;

	(void)error_r;	/* a short write shows in ferror(), reported by the caller */
	if (b->len > 0)
		fwrite(b->data, 1, b->len, out);
	return 0;
}

int
fsutil_replace(const char *path, const void *data, size_t len, mode_t mode,
    const char **error_r)
{
	struct buf b = { data, len };

	return fsutil_replace_with(path, mode, write_buf, &b, error_r);
}

int
fsutil_replace_with(const char *path, mode_t mode, fsutil_writer *write, void *ctx,
    const char **error_r)
{
	char *tmp = xasprintf("%s.tmp.XXXXXX", path);
	const char *werr = NULL;
	FILE *out;
	int fd, e;

	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		*error_r = fail("create a temporary file for", path, errno);
		free(tmp);
		return -1;
	}
	if (fchmod(fd, mode) < 0 || (out = fdopen(fd, "w")) == NULL) {
		*error_r = fail("create", tmp, errno);
		close(fd);
		goto fail;
	}
	if (write(out, ctx, &werr) < 0) {
		fclose(out);
		*error_r = werr != NULL ? werr : fail("write", tmp, EIO);
		goto fail;
	}
	errno = 0;
	if (fflush(out) != 0 || ferror(out) || fsync(fileno(out)) != 0) {
		e = errno ? errno : EIO;
		fclose(out);
		*error_r = fail("write", tmp, e);
		goto fail;
	}
	if (fclose(out) != 0) {
		*error_r = fail("write", tmp, errno);
		goto fail;
	}
	if (rename(tmp, path) < 0) {
		*error_r = fail("rename a temporary file over", path, errno);
		goto fail;
	}
	free(tmp);
	if (fsutil_fsync_parent(path) < 0) {	/* the rename itself must survive a crash */
		*error_r = fail("fsync the directory of", path, errno);
		return -1;
	}
	return 0;
fail:
	e = errno;
	unlink(tmp);
	free(tmp);
	errno = e;
	return -1;
}
