/* mailstore cache: the portcullis.cache parser (table-driven) and its round
 * trip, then on a scratch store the message string cache (a fresh process
 * reads the file; expunged messages leave it; a damaged file is rebuilt)
 * and the folder snapshot a sync trusts (other writers are seen). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/xmalloc.h"
#include "storage-adapter/mailstore.h"
#include "storage-adapter/mailstore_cache.h"
#include "tests/unit/unit.h"

#define HEAD "portcullis-cache 1\n"

static const struct {
	const char *name;
	const char *in;
	size_t len;		/* 0: strlen */
	int rc;
	size_t nrecs;
} files[] = {
	{ "empty cache", HEAD "end 0\n", 0, 0, 0 },
	{ "one message, three values", HEAD "3 2 1 0\nabcXYZ\nend 1\n", 0, 0, 1 },
	{ "absent values", HEAD "3 - 2 -\nabcxy\nend 1\n", 0, 0, 1 },
	{ "values hold CR LF", HEAD "1 5 - -\na{1}\r\n\nend 1\n", 0, 0, 1 },
	{ "two messages", HEAD "1 1 - -\nax\n1 1 - -\nby\nend 2\n", 0, 0, 2 },
	{ "NUL inside a value", HEAD "1 3 - -\nax\0y\nend 1\n", sizeof(HEAD) - 1 + 19, 0, 1 },
	{ "no header", "1 1 - -\nax\nend 1\n", 0, -1, 0 },
	{ "other version", "portcullis-cache 2\nend 0\n", 0, -1, 0 },
	{ "empty file", "", 0, -1, 0 },
	{ "no trailer (torn write)", HEAD "1 1 - -\nax\n", 0, -1, 1 },
	{ "trailer count wrong", HEAD "1 1 - -\nax\nend 2\n", 0, -1, 1 },
	{ "bytes after the trailer", HEAD "end 0\nx", 0, -1, 0 },
	{ "value shorter than said", HEAD "1 9 - -\nax\nend 1\n", 0, -1, 0 },
	{ "record not ended by LF", HEAD "1 1 - -\naxyend 1\n", 0, -1, 0 },
	{ "leading zero", HEAD "01 1 - -\nax\nend 1\n", 0, -1, 0 },
	{ "negative length", HEAD "1 -1 - -\nax\nend 1\n", 0, -1, 0 },
	{ "too few lengths", HEAD "1 1 -\nax\nend 1\n", 0, -1, 0 },
	{ "giant length", HEAD "1 99999999999999999999 - -\nax\nend 1\n", 0, -1, 0 },
	{ "value over the cap", HEAD "1 65537 - -\n", 0, -1, 0 },
	{ "empty base", HEAD "0 1 - -\nx\nend 1\n", 0, -1, 0 },
	{ "base with a slash", HEAD "3 1 - -\na/bx\nend 1\n", 0, -1, 0 },
	{ "base with flags", HEAD "5 1 - -\na:2,Sx\nend 1\n", 0, -1, 0 },
	{ "base with a control byte", HEAD "3 1 - -\na\tbx\nend 1\n", 0, -1, 0 },
	{ "base starting with a dot", HEAD "2 1 - -\n.ax\nend 1\n", 0, -1, 0 },
	{ "base over the cap", HEAD "256 1 - -\n", 0, -1, 0 },
};

static int
count_rec(void *ctx, const struct mscache_rec *rec)
{
	(void)rec;
	(*(size_t *)ctx)++;
	return 0;
}

static void
test_parse(void)
{
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		size_t n = 0, len = files[i].len ? files[i].len : strlen(files[i].in);
		const char *error = NULL;
		int rc = mscache_parse(files[i].in, len, count_rec, &n, &error);

		if (rc != files[i].rc || (rc == 0 && n != files[i].nrecs))
			fprintf(stderr, "mscache_parse: %s: rc %d, %zu records (%s)\n", files[i].name,
			    rc, n, error ? error : "");
		CU_ASSERT_EQUAL(rc, files[i].rc);
		if (rc == 0) {
			CU_ASSERT_EQUAL(n, files[i].nrecs);
		} else {
			CU_ASSERT_PTR_NOT_NULL(error);
		}
	}
}

struct seen {
	struct mscache_rec r[4];
	size_t n;
};

static int
keep_rec(void *ctx, const struct mscache_rec *rec)
{
	struct seen *s = ctx;

	if (s->n < 4)
		s->r[s->n++] = *rec;
	return 0;
}

static void
test_round_trip(void)
{
	static const char v1[] = "(\"Mon, 1 Jan 2024\" {3}\r\n\x80\0x NIL)";
	struct mscache_rec in[2] = {
		{ .base = "1700000000.M1P2.host,S=10,W=11", .baselen = 30,
		  .val = { v1, NULL, "(\"text\" \"plain\")" }, .len = { sizeof(v1) - 1, 0, 17 } },
		{ .base = "b", .baselen = 1, .val = { "", NULL, NULL }, .len = { 0, 0, 0 } },
	};
	char *out = NULL;
	size_t len = 0, cap = 0;
	struct seen s = { .n = 0 };
	const char *error;

	mscache_format_head(&out, &len, &cap);
	mscache_format_rec(&out, &len, &cap, &in[0]);
	mscache_format_rec(&out, &len, &cap, &in[1]);
	mscache_format_tail(&out, &len, &cap, 2);
	CU_ASSERT_EQUAL_FATAL(mscache_parse(out, len, keep_rec, &s, &error), 0);
	CU_ASSERT_EQUAL_FATAL(s.n, 2);
	for (size_t i = 0; i < 2; i++) {
		CU_ASSERT_EQUAL(s.r[i].baselen, in[i].baselen);
		CU_ASSERT(memcmp(s.r[i].base, in[i].base, in[i].baselen) == 0);
		for (int k = 0; k < MSCACHE_FIELDS; k++) {
			CU_ASSERT_EQUAL(s.r[i].val[k] == NULL, in[i].val[k] == NULL);
			if (in[i].val[k] != NULL) {
				CU_ASSERT_EQUAL(s.r[i].len[k], in[i].len[k]);
				CU_ASSERT(memcmp(s.r[i].val[k], in[i].val[k], in[i].len[k]) == 0);
			}
		}
	}
	/* every cut of it is refused: a torn file never passes */
	for (size_t cut = 0; cut < len; cut++)
		CU_ASSERT_EQUAL(mscache_parse(out, cut, NULL, NULL, &error), -1);
	free(out);
}

/* ---- on a scratch store ---- */

static void
spit(const char *path, const char *s)
{
	FILE *f = fopen(path, "w");

	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs(s, f);
	fclose(f);
}

static void
rm_root(char *root)
{
	char *cmd = xasprintf("rm -rf '%s'", root);

	if (system(cmd) != 0)
		CU_FAIL("rm");
	free(cmd);
	free(root);
}

/* a file or directory's mtime set SECS in the past */
static void
age(const char *path, int secs)
{
	struct timespec ts[2];

	clock_gettime(CLOCK_REALTIME, &ts[0]);
	ts[0].tv_sec -= secs;
	ts[1] = ts[0];
	CU_ASSERT_EQUAL(utimensat(AT_FDCWD, path, ts, 0), 0);
}

static void
age_folder(const char *md)
{
	static const char *const sub[] = { "new", "cur", "dovecot-uidlist" };

	for (int i = 0; i < 3; i++) {
		char *p = xasprintf("%s/%s", md, sub[i]);

		age(p, 10);
		free(p);
	}
}

static void
test_cache(void)
{
	char *root = unit_tmpdir(), *md, *p, *v;
	struct mailstore *ms;
	struct mailstore_box *box;
	const char *err;
	size_t len;
	uint32_t u1, u2;
	struct stat st;

	CU_ASSERT_EQUAL_FATAL(mailstore_open(root, "cc@example.com", &ms, &err), 0);
	md = xasprintf("%s/example.com/cc/Maildir", root);
	for (int i = 0; i < 2; i++) {
		p = xasprintf("%s/new/170000000%d.M%dP1.mda,S=14,W=17", md, i, i);
		spit(p, "Subject: c\n\nx\n");
		free(p);
	}
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "INBOX", &box, &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_box_count(box), 2);
	u1 = mailstore_box_msg(box, 0)->uid;
	u2 = mailstore_box_msg(box, 1)->uid;
	mscache_reset();
	CU_ASSERT_EQUAL(mailstore_cache_get(box, u1, MAILSTORE_CACHE_ENVELOPE, &v, &len), -1);
	mailstore_cache_put(box, u1, MAILSTORE_CACHE_ENVELOPE, "(env1)", 6);
	mailstore_cache_put(box, u2, MAILSTORE_CACHE_BODYSTRUCTURE, "(bs2)", 5);
	mailstore_cache_put(box, 999, MAILSTORE_CACHE_ENVELOPE, "(none)", 6);	/* no such UID */
	CU_ASSERT_EQUAL_FATAL(mailstore_cache_get(box, u1, MAILSTORE_CACHE_ENVELOPE, &v, &len), 0);
	CU_ASSERT(len == 6 && strcmp(v, "(env1)") == 0);
	free(v);
	CU_ASSERT_EQUAL(mailstore_cache_get(box, u1, MAILSTORE_CACHE_BODY, &v, &len), -1);
	mailstore_cache_flush(box);
	p = xasprintf("%s/" MSCACHE_FILE, md);
	CU_ASSERT_EQUAL(stat(p, &st), 0);
	/* a fresh process: from the file */
	mscache_reset();
	CU_ASSERT_EQUAL_FATAL(mailstore_cache_get(box, u2, MAILSTORE_CACHE_BODYSTRUCTURE, &v, &len),
	    0);
	CU_ASSERT(len == 5 && strcmp(v, "(bs2)") == 0);
	free(v);
	/* a flag change keeps the entry (the base name stays) */
	CU_ASSERT_EQUAL(mailstore_msg_set_flags(box, u1, MAILSTORE_FLAGS_ADD, MAILSTORE_SEEN, NULL, 0,
	    &err), 0);
	CU_ASSERT_EQUAL(mailstore_cache_get(box, u1, MAILSTORE_CACHE_ENVELOPE, &v, &len), 0);
	free(v);
	/* an expunged message leaves the file at the next write */
	CU_ASSERT_EQUAL(mailstore_msg_expunge(box, u1, &err), 0);
	mailstore_cache_put(box, u2, MAILSTORE_CACHE_ENVELOPE, "(env2)", 6);
	mailstore_cache_flush(box);
	{
		FILE *f = fopen(p, "r");
		char buf[4096];
		size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;

		if (f)
			fclose(f);
		buf[n] = '\0';
		CU_ASSERT_PTR_NULL(strstr(buf, "1700000000.M0P1"));
		CU_ASSERT_PTR_NOT_NULL(strstr(buf, "1700000001.M1P1"));
		CU_ASSERT_PTR_NOT_NULL(strstr(buf, "end 1\n"));
	}
	/* a damaged file: nothing from it, and it is written anew */
	spit(p, "portcullis-cache 1\n9 9 9 9\ngarbage");
	mscache_reset();
	CU_ASSERT_EQUAL(mailstore_cache_get(box, u2, MAILSTORE_CACHE_ENVELOPE, &v, &len), -1);
	mailstore_cache_flush(box);
	{
		FILE *f = fopen(p, "r");
		char buf[256];
		size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;

		if (f)
			fclose(f);
		buf[n] = '\0';
		CU_ASSERT_STRING_EQUAL(buf, "portcullis-cache 1\nend 0\n");
	}
	mscache_reset();
	free(p);
	mailstore_box_close(&box);
	mailstore_free(&ms);
	free(md);
	rm_root(root);
}

/*
 * The snapshot: after a sync of an old folder, a second session's sync is
 * served from it; every change by another writer is still seen: a flag
 * rename, an expunge, a delivery, and a uidlist rewritten in place with
 * the same size, inode and mtime (only its bytes differ).
 */
static void
test_snapshot(void)
{
	char *root = unit_tmpdir(), *md, *p, *q;
	struct mailstore *ms;
	struct mailstore_box *a, *b;
	const char *err;
	struct stat st;

	CU_ASSERT_EQUAL_FATAL(mailstore_open(root, "sn@example.com", &ms, &err), 0);
	md = xasprintf("%s/example.com/sn/Maildir", root);
	for (int i = 0; i < 3; i++) {
		p = xasprintf("%s/cur/170000000%d.M%dP1.mda,S=14,W=17:2,", md, i, i);
		spit(p, "Subject: s\n\nx\n");
		free(p);
	}
	/* a SELECT takes \Recent: the sessions after it have none, and share */
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "INBOX", &a, &err), 0);
	CU_ASSERT_EQUAL(mailstore_box_count(a), 3);
	mailstore_box_close(&a);
	age_folder(md);
	/* recorded by this sync (the folder is old now), used by the next */
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open_peek(ms, "INBOX", &a, &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open_peek(ms, "INBOX", &b, &err), 0);
	CU_ASSERT_EQUAL(mailstore_box_count(b), 3);
	CU_ASSERT_EQUAL(mailstore_box_uidvalidity(b), mailstore_box_uidvalidity(a));
	CU_ASSERT_EQUAL(mailstore_box_msg(b, 2)->uid, mailstore_box_msg(a, 2)->uid);
	CU_ASSERT_EQUAL(mailstore_box_msg(b, 2)->size, 14);
	/* b changes its shared list: a copy of its own; a pointer b handed out
	 * before stays readable until b's next sync, even once the snapshot is
	 * dropped (a's full sync of the changed folder drops it: cur/ is new) */
	{
		const struct mailstore_msg *held = mailstore_box_msg(b, 0);
		uint32_t uid0 = held->uid;

		CU_ASSERT_EQUAL(mailstore_msg_set_flags(b, uid0, MAILSTORE_FLAGS_ADD,
		    MAILSTORE_ANSWERED, NULL, 0, &err), 0);
		CU_ASSERT_EQUAL(mailstore_box_msg(b, 0)->flags, MAILSTORE_ANSWERED);
		CU_ASSERT_EQUAL(mailstore_box_msg(a, 0)->flags, 0);	/* a: not synced yet */
		CU_ASSERT_EQUAL(mailstore_box_sync(a, &err), 0);
		CU_ASSERT_EQUAL(mailstore_box_msg(a, 0)->flags, MAILSTORE_ANSWERED);
		CU_ASSERT_EQUAL(held->uid, uid0);	/* ASan: still allocated */
		CU_ASSERT_EQUAL(mailstore_box_sync(b, &err), 0);
		CU_ASSERT_EQUAL(mailstore_box_msg(b, 0)->flags, MAILSTORE_ANSWERED);
	}
	age_folder(md);
	CU_ASSERT_EQUAL(mailstore_box_sync(a, &err), 0);	/* a new snapshot */
	CU_ASSERT_EQUAL(mailstore_box_sync(b, &err), 0);	/* b shares it */
	/* another writer flags a message (Dovecot, by rename) */
	p = xasprintf("%s/cur/1700000001.M1P1.mda,S=14,W=17:2,", md);
	q = xasprintf("%s/cur/1700000001.M1P1.mda,S=14,W=17:2,FS", md);
	CU_ASSERT_EQUAL(rename(p, q), 0);
	CU_ASSERT_EQUAL(mailstore_box_sync(b, &err), 0);
	CU_ASSERT_EQUAL(mailstore_box_msg(b, 1)->flags, MAILSTORE_FLAGGED | MAILSTORE_SEEN);
	/* another writer expunges one */
	CU_ASSERT_EQUAL(unlink(q), 0);
	free(p);
	free(q);
	age_folder(md);
	CU_ASSERT_EQUAL(mailstore_box_sync(b, &err), 0);
	CU_ASSERT_EQUAL(mailstore_box_count(b), 2);
	/* a delivery into new/ */
	age_folder(md);
	CU_ASSERT_EQUAL(mailstore_box_sync(a, &err), 0);	/* records the snapshot */
	p = xasprintf("%s/new/1700000009.M9P1.mda,S=14,W=17", md);
	spit(p, "Subject: n\n\nx\n");
	free(p);
	CU_ASSERT_EQUAL(mailstore_box_sync(b, &err), 0);
	CU_ASSERT_EQUAL(mailstore_box_count(b), 3);
	/* the uidlist written a moment ago (its mtime recent when recorded),
	 * then rewritten in place in the same tick: same size, inode and mtime;
	 * its bytes tell */
	age_folder(md);
	p = xasprintf("%s/dovecot-uidlist", md);
	CU_ASSERT_EQUAL(utimensat(AT_FDCWD, p, NULL, 0), 0);
	CU_ASSERT_EQUAL(mailstore_box_sync(a, &err), 0);
	CU_ASSERT_EQUAL_FATAL(stat(p, &st), 0);
	{
		FILE *f = fopen(p, "r+");
		char buf[4096];
		size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
		char *v;
		struct timespec ts[2] = { st.st_atim, st.st_mtim };

		CU_ASSERT_PTR_NOT_NULL_FATAL(f);
		buf[n] = '\0';
		v = strstr(buf, " V");
		CU_ASSERT_PTR_NOT_NULL_FATAL(v);
		v[2] = v[2] == '9' ? '8' : '9';	/* another UIDVALIDITY, same length */
		rewind(f);
		fwrite(buf, 1, n, f);
		fclose(f);
		CU_ASSERT_EQUAL(utimensat(AT_FDCWD, p, ts, 0), 0);
	}
	{
		uint32_t before = mailstore_box_uidvalidity(a);

		CU_ASSERT_EQUAL(mailstore_box_sync(b, &err), 0);
		CU_ASSERT_NOT_EQUAL(mailstore_box_uidvalidity(b), before);
	}
	free(p);
	mailstore_box_close(&a);
	mailstore_box_close(&b);
	mailstore_free(&ms);
	free(md);
	rm_root(root);
}

void
test_mailstore_cache_register(void)
{
	static CU_TestInfo tests[] = {
		{ "portcullis.cache: parse, refuse", test_parse },
		{ "portcullis.cache: format, parse again; every cut refused", test_round_trip },
		{ "message strings: memory, file, fresh process, expunge, damage", test_cache },
		{ "folder snapshot: other writers' renames, expunges, deliveries, uidlist bytes",
		    test_snapshot },
		{ NULL, NULL },
	};

	unit_suite("mailstore_cache", tests);
}
