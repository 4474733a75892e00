/* fsutil: mkdir -p, directory fsync, atomic replace (buffer and writer). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>

#include "common/fsutil.h"
#include "common/xmalloc.h"
#include "tests/unit/unit.h"

static char *
slurp(const char *path)
{
	static char buf[4096];
	FILE *fp = fopen(path, "r");
	size_t n;

	if (fp == NULL)
		return NULL;
	n = fread(buf, 1, sizeof(buf) - 1, fp);
	buf[n] = '\0';
	fclose(fp);
	return buf;
}

static mode_t
mode_of(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? st.st_mode & 07777 : (mode_t)-1;
}

/* entries in dir other than . and .. */
static int
entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL)
		n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
	closedir(d);
	return n;
}

static const struct { const char *name, *rel; int ok; int err; } mkdir_cases[] = {
	{ "three new levels", "a/b/c", 1, 0 },
	{ "again: already there", "a/b/c", 1, 0 },
	{ "trailing slash", "a/b/d/", 1, 0 },
	{ "doubled slashes", "a//b//e", 1, 0 },
	{ "a file in the way at the end", "file", 0, ENOTDIR },
	{ "a file in the way in the middle", "file/x/y", 0, ENOTDIR },
};

static void
test_mkdir_p_table(void)
{
	char *d = unit_tmpdir(), *f = xasprintf("%s/file", d);
	mode_t um = umask(022);

	CU_ASSERT_EQUAL_FATAL(fsutil_replace(f, "x", 1, 0600, &(const char *){ NULL }), 0);
	for (size_t i = 0; i < sizeof(mkdir_cases) / sizeof(mkdir_cases[0]); i++) {
		char *p = xasprintf("%s/%s", d, mkdir_cases[i].rel);
		int rc;

		errno = 0;
		rc = fsutil_mkdir_p(p, 0750, 0755);
		if ((rc == 0) != mkdir_cases[i].ok ||
		    (!mkdir_cases[i].ok && errno != mkdir_cases[i].err)) {
			fprintf(stderr, "\n  case \"%s\": rc %d errno %d\n", mkdir_cases[i].name, rc,
			    errno);
			CU_FAIL("fsutil_mkdir_p");
		}
		free(p);
	}
	{
		char *a = xasprintf("%s/a", d), *c = xasprintf("%s/a/b/c", d);

		CU_ASSERT_EQUAL(mode_of(a), 0755);	/* ancestors: parent_mode */
		CU_ASSERT_EQUAL(mode_of(c), 0750);	/* the leaf: mode */
		free(a);
		free(c);
	}
	umask(um);
	free(f);
	free(d);
}

static void
test_fsync_dir(void)
{
	char *d = unit_tmpdir(), *f = xasprintf("%s/x", d);

	CU_ASSERT_EQUAL(fsutil_fsync_dir(d), 0);
	CU_ASSERT_EQUAL(fsutil_fsync_parent(f), 0);
	CU_ASSERT_EQUAL(fsutil_fsync_parent("relative-name"), 0);	/* "." */
	errno = 0;
	CU_ASSERT_EQUAL(fsutil_fsync_dir(f), -1);	/* not there */
	CU_ASSERT_EQUAL(errno, ENOENT);
	free(f);
	free(d);
}

struct wctx {
	int fail;
	int calls;
};

static int
writer(FILE *out, void *ctx, const char **error_r)
{
	struct wctx *w = ctx;

	w->calls++;
	fputs("new line 1\nnew line 2\n", out);
	if (w->fail) {
		*error_r = "the writer says no";
		return -1;
	}
	return 0;
}

static void
test_replace(void)
{
	char *d = unit_tmpdir(), *f = xasprintf("%s/list", d), *missing;
	const char *err = NULL;
	struct wctx w = { 0, 0 };

	/* a new file, with the mode asked for (no umask on fchmod) */
	CU_ASSERT_EQUAL_FATAL(fsutil_replace(f, "old\n", 4, 0640, &err), 0);
	CU_ASSERT_STRING_EQUAL(slurp(f), "old\n");
	CU_ASSERT_EQUAL(mode_of(f), 0640);
	/* over an existing one */
	CU_ASSERT_EQUAL(fsutil_replace_with(f, 0600, writer, &w, &err), 0);
	CU_ASSERT_STRING_EQUAL(slurp(f), "new line 1\nnew line 2\n");
	CU_ASSERT_EQUAL(mode_of(f), 0600);
	CU_ASSERT_EQUAL(entries(d), 1);	/* no temporary file left */
	/* a failing writer: old content stays, temporary file gone, its error */
	w.fail = 1;
	CU_ASSERT_EQUAL(fsutil_replace_with(f, 0600, writer, &w, &err), -1);
	CU_ASSERT_STRING_EQUAL(err, "the writer says no");
	CU_ASSERT_STRING_EQUAL(slurp(f), "new line 1\nnew line 2\n");
	CU_ASSERT_EQUAL(entries(d), 1);
	/* empty data makes an empty file */
	CU_ASSERT_EQUAL(fsutil_replace(f, NULL, 0, 0600, &err), 0);
	CU_ASSERT_STRING_EQUAL(slurp(f), "");
	/* a directory that is not there: an error naming the path */
	missing = xasprintf("%s/no/such/file", d);
	err = NULL;
	CU_ASSERT_EQUAL(fsutil_replace(missing, "x", 1, 0600, &err), -1);
	CU_ASSERT_PTR_NOT_NULL_FATAL(err);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, missing));
	CU_ASSERT_EQUAL(w.calls, 2);
	free(missing);
	unlink(f);
	rmdir(d);
	free(f);
	free(d);
}

static void
test_write_all(void)
{
	int p[2];
	char big[100000], back[100000];
	size_t got = 0;

	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (char)(i * 7);
	CU_ASSERT_EQUAL_FATAL(pipe(p), 0);
	if (fork() == 0) {	/* more than a pipe holds: short writes on the way */
		close(p[0]);
		_exit(fsutil_write_all(p[1], big, sizeof(big)) == 0 ? 0 : 1);
	}
	close(p[1]);
	while (got < sizeof(back)) {
		ssize_t r = read(p[0], back + got, sizeof(back) - got);

		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(p[0]);
	CU_ASSERT_EQUAL(got, sizeof(big));
	CU_ASSERT(memcmp(big, back, sizeof(big)) == 0);
	CU_ASSERT_EQUAL(fsutil_write_all(-1, "x", 1), -1);
}

static CU_TestInfo tests[] = {
	{ "mkdir -p: levels, repeats, slashes, files in the way, modes", test_mkdir_p_table },
	{ "fsync of a directory and of a path's directory", test_fsync_dir },
	{ "replace: new, over old, failing writer, empty, missing dir", test_replace },
	{ "write_all through short writes", test_write_all },
	{ NULL, NULL },
};

void
test_common_fsutil_register(void)
{
	unit_suite("common_fsutil", tests);
}
