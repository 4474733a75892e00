#ifndef PC_FSUTIL_H
#define PC_FSUTIL_H
#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>

/*
 * fsutil - the file-system steps every store repeats: mkdir -p, write all,
 * fsync of a directory, and replace-a-file-atomically. Blocking (disk I/O):
 * never call from an event loop.
 */

/* write all n bytes (EINTR and short writes retried); -1 with errno */
int fsutil_write_all(int fd, const void *p, size_t n)
    __attribute__((warn_unused_result));

/* mkdir -p: the missing ancestors with parent_mode, path itself with mode
 * (both before the umask); an existing directory is fine. -1 with errno
 * (ENOTDIR when a component is there and is not a directory). Callers
 * that go on to create something inside may ignore the result: that step
 * then fails with the better message. */
int fsutil_mkdir_p(const char *path, mode_t mode, mode_t parent_mode);

/* fsync the directory dir / the directory holding path ("." for a bare
 * name), so that a create, rename or unlink in it survives a crash;
 * -1 with errno */
int fsutil_fsync_dir(const char *dir);
int fsutil_fsync_parent(const char *path);

/*
 * Replace path atomically: a temporary file in the same directory
 * (PATH.tmp.XXXXXX, created with mode), filled, flushed and fsynced, renamed
 * over path, and the directory fsynced. A reader sees the old file or the
 * new one, never a mixture; after a 0 return the new one survives a crash.
 * On failure the temporary file is gone and path is untouched (unless the
 * final directory fsync failed: the rename happened then). The caller holds
 * whatever lock orders writers. error_r names the file and the errno; it
 * points at a thread-local buffer valid until the next fsutil call.
 */
int fsutil_replace(const char *path, const void *data, size_t len, mode_t mode,
    const char **error_r) __attribute__((warn_unused_result));

/* the same with a writer: it fills out (a stdio stream; don't close it) and
 * returns 0, or -1 and its own *error_r (which fsutil_replace_with passes
 * through, after removing the temporary file) */
typedef int fsutil_writer(FILE *out, void *ctx, const char **error_r);
int fsutil_replace_with(const char *path, mode_t mode, fsutil_writer *write, void *ctx,
    const char **error_r) __attribute__((warn_unused_result));

#endif
