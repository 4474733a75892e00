/* mailstore: Maildir file names, dovecot-uidlist and dovecot-keywords in
 * Dovecot's formats (table-driven), then the backend on a scratch store:
 * new/ to cur/ with UIDs, flag renames, expunge, folders, hostile uidlists. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/xmalloc.h"
#include "storage-adapter/mailstore.h"
#include "storage-adapter/mailstore_maildir.h"
#include "tests/unit/unit.h"

#define A MAILSTORE_ANSWERED
#define F MAILSTORE_FLAGGED
#define T MAILSTORE_DELETED
#define S MAILSTORE_SEEN
#define D MAILSTORE_DRAFT

static const struct {
	const char *name, *fname;
	int rc;
	size_t baselen;
	unsigned flags;
	uint32_t kw;
	uint64_t size, vsize;
} names[] = {
	{ "plain new/ name", "1700000000.M1P2Q3.host", 0, 22, 0, 0, 0, 0 },
	{ "Dovecot's name with sizes and flags", "1700000000.M1P2.host,S=1234,W=1260:2,FRS", 0, 34,
	  F | A | S, 0, 1234, 1260 },
	{ "keywords are letters a..z", "x,S=5:2,Sac", 0, 5, S, 1u | 4u, 5, 0 },
	{ "draft and trashed", "x:2,DT", 0, 1, D | T, 0, 0, 0 },
	{ "unknown flag letters ignored", "x:2,PSX", 0, 1, S, 0, 0, 0 },
	{ "a second flag set is not flags", "x:2,S,F", 0, 1, S, 0, 0, 0 },
	{ "info other than 2 has no flags", "x:1,S", 0, 1, 0, 0, 0, 0 },
	{ "an S= that is not a number is no size", "x,S=12a:2,", 0, 7, 0, 0, 0, 0 },
	{ "a giant size is no size", "x,S=99999999999999999999:2,", 0, 24, 0, 0, 0, 0 },
	{ "empty base refused", ":2,S", -1, 0, 0, 0, 0, 0 },
	{ "empty name refused", "", -1, 0, 0, 0, 0, 0 },
	{ "control byte refused", "x\ty:2,", -1, 0, 0, 0, 0, 0 },
	{ "slash refused", "../x:2,", -1, 0, 0, 0, 0, 0 },
};

static void
test_names(void)
{
	char longname[400];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		struct mdname mn;
		int rc = mdname_parse(names[i].fname, &mn);

		if (rc != names[i].rc || (rc == 0 && (mn.baselen != names[i].baselen ||
		    mn.flags != names[i].flags || mn.keywords != names[i].kw ||
		    mn.size != names[i].size || mn.vsize != names[i].vsize)))
			fprintf(stderr, "mdname_parse: %s\n", names[i].name);
		CU_ASSERT_EQUAL(rc, names[i].rc);
		if (rc == 0) {
			CU_ASSERT_EQUAL(mn.baselen, names[i].baselen);
			CU_ASSERT_EQUAL(mn.flags, names[i].flags);
			CU_ASSERT_EQUAL(mn.keywords, names[i].kw);
			CU_ASSERT_EQUAL(mn.size, names[i].size);
			CU_ASSERT_EQUAL(mn.vsize, names[i].vsize);
		}
	}
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	{
		struct mdname mn;

		CU_ASSERT_EQUAL(mdname_parse(longname, &mn), -1);	/* over the cap */
	}
}

static const struct {
	const char *name, *in;
	unsigned flags;
	uint32_t kw;
	const char *out;
} renames[] = {
	{ "no info gets :2,", "b,S=1", S, 0, "b,S=1:2,S" },
	{ "flags in ASCII order", "b:2,", A | S | D | F | T, 0, "b:2,DFRST" },
	{ "keywords after the flags, sorted", "b:2,", S, (1u << 2) | 1u, "b:2,Sac" },
	{ "clearing keeps the base", "b:2,FSab", 0, 0, "b:2," },
	{ "unknown letters kept in place", "b:2,PS", F | S, 0, "b:2,FPS" },
	{ "a second flag set kept", "b:2,S,xyz", F, 0, "b:2,F,xyz" },
	{ "info 1 replaced", "b:1,foo", S, 0, "b:2,S" },
};

static void
test_rename(void)
{
	for (size_t i = 0; i < sizeof(renames) / sizeof(renames[0]); i++) {
		char out[300];
		int rc = mdname_set_flags(renames[i].in, renames[i].flags, renames[i].kw, out,
		    sizeof(out));

		if (rc != 0 || strcmp(out, renames[i].out) != 0)
			fprintf(stderr, "mdname_set_flags: %s: got %s\n", renames[i].name,
			    rc == 0 ? out : "(error)");
		CU_ASSERT_EQUAL(rc, 0);
		CU_ASSERT_STRING_EQUAL(out, renames[i].out);
	}
	{
		char out[8];

		CU_ASSERT_EQUAL(mdname_set_flags("abcdefgh", S, 0, out, sizeof(out)), -1);
	}
	/* Dovecot's order for new files: seconds, then microseconds, then name */
	CU_ASSERT(mdname_sort_cmp("100.M5P1.h", "100.M40P1.h") < 0);
	CU_ASSERT(mdname_sort_cmp("99.M9P1.h", "100.M1P1.h") < 0);
	CU_ASSERT(mdname_sort_cmp("100.M5P1.a:2,S", "100.M5P1.b") < 0);
}

static const struct {
	const char *name, *in, *out;	/* out NULL: a parse error */
} uidlists[] = {
	{ "version 3 round trip",
	  "3 V1700000000 N3 G0123456789abcdef0123456789abcdef\n1 :a.M1P1.h,S=5\n2 W12 :b.M2P1.h\n",
	  "3 V1700000000 N3 G0123456789abcdef0123456789abcdef\n1 :a.M1P1.h,S=5\n2 W12 :b.M2P1.h\n" },
	{ "unknown header fields kept",
	  "3 V5 N9 G0123456789abcdef0123456789abcdef Pxyz\n",
	  "3 V5 N9 G0123456789abcdef0123456789abcdef Pxyz\n" },
	{ "version 1 read, written as 3",
	  "1 7 4\n2 a.M1P1.h\n",
	  "3 V7 N4 G\n2 :a.M1P1.h\n" },
	{ "a record past next uid raises it",
	  "3 V5 N2 G0123456789abcdef0123456789abcdef\n7 :a\n",
	  "3 V5 N8 G0123456789abcdef0123456789abcdef\n7 :a\n" },
	{ "no final newline", "3 V5 N3 G0123456789abcdef0123456789abcdef\n2 :a",
	  "3 V5 N3 G0123456789abcdef0123456789abcdef\n2 :a\n" },
	{ "a name with its flags (old lists): the base is kept",
	  "1 7 4\n2 a.M1P1.h:2,S\n",
	  "3 V7 N4 G\n2 :a.M1P1.h\n" },
	{ "empty", "", NULL },
	{ "bad version", "x V1 N1\n", NULL },
	{ "version 2 unsupported", "2 V1 N1\n", NULL },
	{ "uidvalidity zero", "3 V0 N1\n", NULL },
	{ "uidvalidity overflows", "3 V99999999999 N1\n", NULL },
	{ "bad guid", "3 V1 N1 Gxyz\n", NULL },
	{ "uids out of order", "3 V1 N9\n3 :a\n2 :b\n", NULL },
	{ "uid zero", "3 V1 N9\n0 :a\n", NULL },
	{ "uid max", "3 V1 N9\n4294967295 :a\n", NULL },
	{ "slash in a file name", "3 V1 N9\n1 :../../etc/passwd\n", NULL },
	{ "dot file name", "3 V1 N9\n1 :.hidden\n", NULL },
	{ "no file name", "3 V1 N9\n1 W5\n", NULL },
	{ "bad extension key", "3 V1 N9\n1 w5 :a\n", NULL },
	{ "garbage record", "3 V1 N9\nhello world\n", NULL },
	{ "NUL byte", "3 V1 N9\n1 :a\0b\n", NULL },
};

static void
test_uidlist(void)
{
	for (size_t i = 0; i < sizeof(uidlists) / sizeof(uidlists[0]); i++) {
		struct md_uidlist ul;
		const char *error = NULL;
		size_t inlen = strlen(uidlists[i].in);
		int rc;

		if (strcmp(uidlists[i].name, "NUL byte") == 0)
			inlen = 16;
		rc = md_uidlist_parse(uidlists[i].in, inlen, &ul, &error);
		if ((rc == 0) != (uidlists[i].out != NULL))
			fprintf(stderr, "md_uidlist_parse: %s: rc %d (%s)\n", uidlists[i].name, rc,
			    error ? error : "");
		CU_ASSERT_EQUAL(rc == 0, uidlists[i].out != NULL);
		if (rc == 0 && uidlists[i].out) {
			size_t len;
			char *s = md_uidlist_format(&ul, &len);

			if (strcmp(s, uidlists[i].out) != 0)
				fprintf(stderr, "md_uidlist_format: %s: got %s\n", uidlists[i].name, s);
			CU_ASSERT_STRING_EQUAL(s, uidlists[i].out);
			CU_ASSERT_EQUAL(len, strlen(uidlists[i].out));
			free(s);
		} else {
			CU_ASSERT_PTR_NOT_NULL(error);
		}
		md_uidlist_clear(&ul);
	}
}

static void
test_keywords(void)
{
	static const char in[] =
	    "0 $Label\n1 Junk\nbad line\n30 TooFar\n2 \n3 $label\n4 sp ace\n1 Again\n5 NonJunk";
	char *kw[26];
	size_t len;
	char *out;

	md_keywords_parse(in, sizeof(in) - 1, kw);
	CU_ASSERT_STRING_EQUAL(kw[0], "$Label");
	CU_ASSERT_STRING_EQUAL(kw[1], "Junk");
	CU_ASSERT_PTR_NULL(kw[2]);	/* empty name */
	CU_ASSERT_PTR_NULL(kw[3]);	/* same name, other case */
	CU_ASSERT_PTR_NULL(kw[4]);	/* a space is no keyword */
	CU_ASSERT_STRING_EQUAL(kw[5], "NonJunk");
	out = md_keywords_format(kw, &len);
	CU_ASSERT_STRING_EQUAL(out, "0 $Label\n1 Junk\n5 NonJunk\n");
	free(out);
	for (int i = 0; i < 26; i++)
		free(kw[i]);
}

/* ---- the backend on a scratch store ---- */

static char *
slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf = xcalloc(1, 65536);

	if (f) {
		size_t n = fread(buf, 1, 65535, f);

		buf[n] = '\0';
		fclose(f);
	}
	return buf;
}

static void
spit(const char *path, const char *s)
{
	FILE *f = fopen(path, "w");

	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs(s, f);
	fclose(f);
}

static uint32_t
append(struct mailstore_box *box, const char *text, unsigned flags, const char *kw)
{
	struct mailstore_append *a;
	const char *error;
	uint32_t uid = 0;
	const char *kws[1] = { kw };

	CU_ASSERT_EQUAL_FATAL(mailstore_append_begin(box, &a, &error), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_append_write(a, text, strlen(text), &error), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_append_commit(&a, flags, kws, kw ? 1 : 0, 0, &uid, &error),
	    0);
	CU_ASSERT_PTR_NULL(a);
	return uid;
}

/* the one name in DIR whose base starts with PREFIX (or the only one) */
static char *
only_file(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char *name = NULL;
	int n = 0;

	if (d == NULL)
		return NULL;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		free(name);
		name = xstrdup(de->d_name);
		n++;
	}
	closedir(d);
	if (n != 1) {
		free(name);
		return NULL;
	}
	return name;
}

static void
test_store(void)
{
	char *root = unit_tmpdir(), *p, *s, *name;
	struct mailstore *ms;
	struct mailstore_box *box;
	const char *error;
	const struct mailstore_msg *m;
	uint32_t uv, u1, u2;
	const char *kw[1] = { "$Label" };

	CU_ASSERT_EQUAL_FATAL(mailstore_open(root, "alice@Example.COM", &ms, &error), 0);
	/* a message delivered into new/ the way maildir.c does */
	p = xasprintf("%s/example.com/alice/Maildir/new/1700000000.M5P7Q0.host", root);
	spit(p, "Subject: one\n\nbody\n");
	free(p);
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "inbox", &box, &error), 0);
	CU_ASSERT_EQUAL(mailstore_box_count(box), 1);
	m = mailstore_box_msg(box, 0);
	CU_ASSERT_EQUAL(m->uid, 1);
	CU_ASSERT(m->recent);
	CU_ASSERT_EQUAL(m->size, 19);
	CU_ASSERT_EQUAL(m->vsize, 22);
	uv = mailstore_box_uidvalidity(box);
	CU_ASSERT(uv > 0);
	/* from Dovecot's per-user counter: dovecot-uidvalidity and its marker */
	{
		char *c = xasprintf("%s/example.com/alice/Maildir/dovecot-uidvalidity", root);
		char hex[16], *mk;

		s = slurp(c);
		snprintf(hex, sizeof(hex), "%08x", uv);
		CU_ASSERT_STRING_EQUAL(s, hex);
		free(s);
		mk = xasprintf("%s.%s", c, hex);
		CU_ASSERT_EQUAL(access(mk, F_OK), 0);
		free(mk);
		free(c);
	}
	CU_ASSERT_EQUAL(mailstore_box_uidnext(box), 2);
	/* moved to cur/ with ":2," as Dovecot does; the uidlist names it */
	p = xasprintf("%s/example.com/alice/Maildir/cur", root);
	name = only_file(p);
	CU_ASSERT_STRING_EQUAL(name, "1700000000.M5P7Q0.host:2,");
	free(name);
	free(p);
	p = xasprintf("%s/example.com/alice/Maildir/dovecot-uidlist", root);
	s = slurp(p);
	CU_ASSERT(strncmp(s, "3 V", 3) == 0);
	/* no ,W= in its name: the CRLF size is kept in the record, as Dovecot does */
	CU_ASSERT_PTR_NOT_NULL(strstr(s, "\n1 W22 :1700000000.M5P7Q0.host\n"));
	free(s);
	/* lock released */
	{
		char *lock = xasprintf("%s.lock", p);

		CU_ASSERT_EQUAL(access(lock, F_OK), -1);
		free(lock);
	}
	/* flags and a keyword: the file is renamed, the keyword gets letter a */
	CU_ASSERT_EQUAL(mailstore_msg_set_flags(box, 1, MAILSTORE_FLAGS_ADD, S | F, kw, 1, &error),
	    0);
	{
		char *cur = xasprintf("%s/example.com/alice/Maildir/cur", root);

		name = only_file(cur);
		CU_ASSERT_STRING_EQUAL(name, "1700000000.M5P7Q0.host:2,FSa");
		free(name);
		free(cur);
	}
	{
		char *kp = xasprintf("%s/example.com/alice/Maildir/dovecot-keywords", root);

		s = slurp(kp);
		CU_ASSERT_STRING_EQUAL(s, "0 $Label\n");
		free(s);
		free(kp);
	}
	CU_ASSERT_EQUAL(mailstore_msg_set_flags(box, 1, MAILSTORE_FLAGS_REMOVE, F, NULL, 0, &error),
	    0);
	CU_ASSERT_EQUAL(mailstore_box_msg(box, 0)->flags, S);
	/* append: ,S= and ,W= in the name, next UID */
	u2 = append(box, "Subject: two\n\nx\n", D, NULL);
	CU_ASSERT_EQUAL(u2, 2);
	CU_ASSERT_EQUAL(mailstore_box_msg(box, 1)->vsize, 19);	/* 3 bare LFs */
	mailstore_box_close(&box);
	/* a second session sees the same UIDs and flags, not \Recent */
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "INBOX", &box, &error), 0);
	CU_ASSERT_EQUAL(mailstore_box_count(box), 2);
	CU_ASSERT_EQUAL(mailstore_box_uidvalidity(box), uv);
	m = mailstore_box_msg(box, 0);
	CU_ASSERT_EQUAL(m->flags, S);
	CU_ASSERT_EQUAL(m->keywords, 1u);
	CU_ASSERT_STRING_EQUAL(mailstore_box_keyword(box, 0), "$Label");
	CU_ASSERT(!m->recent);
	m = mailstore_box_msg(box, 1);
	CU_ASSERT_EQUAL(m->uid, 2);
	CU_ASSERT_EQUAL(m->flags, D);
	CU_ASSERT_EQUAL(m->size, 16);
	{
		int fd;
		char buf[64];
		ssize_t r;

		CU_ASSERT_EQUAL_FATAL(mailstore_msg_open(box, 2, &fd, &error), 0);
		r = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		CU_ASSERT_EQUAL(r, 16);
		buf[r > 0 ? r : 0] = '\0';
		CU_ASSERT_STRING_EQUAL(buf, "Subject: two\n\nx\n");
	}
	/* expunge: file and uidlist record go */
	CU_ASSERT_EQUAL(mailstore_msg_expunge(box, 1, &error), 0);
	CU_ASSERT_EQUAL(mailstore_box_count(box), 1);
	s = slurp(p);
	CU_ASSERT_PTR_NULL(strstr(s, "\n1 :"));
	CU_ASSERT_PTR_NOT_NULL(strstr(s, "\n2 :"));
	CU_ASSERT_PTR_NOT_NULL(strstr(s, " N3 "));
	free(s);
	mailstore_box_close(&box);

	/* hostile uidlists: each is reported and rebuilt, never a crash; every
	 * message keeps a UID and UIDVALIDITY grows */
	{
		static const char *const bad[] = {
			"garbage\n",
			"3 V1 N1\n5 :x\n3 :y\n",
			"3 V4294967295 N4294967295\n",
			"3 V1 N2\n1 :../../../etc/passwd\n",
			"9 V1 N1\n",
			"",
		};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			int rc;

			spit(p, bad[i]);
			rc = mailstore_box_open(ms, "INBOX", &box, &error);
			if (rc != 0)
				fprintf(stderr, "hostile uidlist %zu: %s\n", i, error);
			CU_ASSERT_EQUAL_FATAL(rc, 0);
			CU_ASSERT_EQUAL(mailstore_box_count(box), 1);
			CU_ASSERT(mailstore_box_uidvalidity(box) != 1);
			CU_ASSERT_EQUAL(mailstore_box_msg(box, 0)->uid, 1);
			CU_ASSERT_EQUAL(mailstore_box_uidnext(box), 2);
			mailstore_box_close(&box);
			s = slurp(p);
			CU_ASSERT(strncmp(s, "3 V", 3) == 0);
			free(s);
		}
	}
	/* a stale lock of a dead process is overridden */
	{
		char *lock = xasprintf("%s.lock", p);
		char host[256], content[300];

		gethostname(host, sizeof(host));
		snprintf(content, sizeof(content), "999999:%s", host);
		spit(lock, content);
		CU_ASSERT_EQUAL(mailstore_box_open(ms, "INBOX", &box, &error), 0);
		mailstore_box_close(&box);
		CU_ASSERT_EQUAL(access(lock, F_OK), -1);
		free(lock);
	}
	free(p);

	/* folders: create, list, rename with children, delete */
	CU_ASSERT_EQUAL(mailstore_folder_create(ms, "Archive", &error), 0);
	CU_ASSERT_EQUAL(mailstore_folder_create(ms, "Archive.2024", &error), 0);
	CU_ASSERT_EQUAL(mailstore_folder_create(ms, "Archive", &error), -1);
	CU_ASSERT_EQUAL(mailstore_folder_create(ms, "../x", &error), -1);
	CU_ASSERT_EQUAL(mailstore_folder_create(ms, "a..b", &error), -1);
	CU_ASSERT_EQUAL(mailstore_folder_create(ms, "INBOX", &error), -1);
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "Archive.2024", &box, &error), 0);
	u1 = append(box, "Subject: old\n\n", S, NULL);
	CU_ASSERT_EQUAL(u1, 1);
	mailstore_box_close(&box);
	/* a folder deleted and made again never repeats its UIDVALIDITY */
	{
		uint32_t a, b;

		CU_ASSERT_EQUAL(mailstore_folder_create(ms, "Tmp", &error), 0);
		CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "Tmp", &box, &error), 0);
		a = mailstore_box_uidvalidity(box);
		mailstore_box_close(&box);
		CU_ASSERT_EQUAL(mailstore_folder_delete(ms, "Tmp", &error), 0);
		CU_ASSERT_EQUAL(mailstore_folder_create(ms, "Tmp", &error), 0);
		CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "Tmp", &box, &error), 0);
		b = mailstore_box_uidvalidity(box);
		mailstore_box_close(&box);
		CU_ASSERT(b > a);
		CU_ASSERT(a > uv);
		CU_ASSERT_EQUAL(mailstore_folder_delete(ms, "Tmp", &error), 0);
	}
	CU_ASSERT_EQUAL(mailstore_folder_rename(ms, "Archive", "Old", &error), 0);
	{
		char **v;
		size_t n;

		CU_ASSERT_EQUAL_FATAL(mailstore_folders(ms, &v, &n, &error), 0);
		CU_ASSERT_EQUAL_FATAL(n, 3);
		CU_ASSERT_STRING_EQUAL(v[0], "INBOX");
		CU_ASSERT_STRING_EQUAL(v[1], "Old");
		CU_ASSERT_STRING_EQUAL(v[2], "Old.2024");
		mailstore_names_free(&v, n);
	}
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "Old.2024", &box, &error), 0);
	CU_ASSERT_EQUAL(mailstore_box_count(box), 1);
	{
		/* APPEND with a date: the internal date, read lazily from the file */
		struct mailstore_append *a;
		uint32_t uid;
		time_t dt = 0;

		CU_ASSERT_EQUAL_FATAL(mailstore_append_begin(box, &a, &error), 0);
		CU_ASSERT_EQUAL(mailstore_append_write(a, "Subject: dated\n\n", 17, &error), 0);
		CU_ASSERT_EQUAL_FATAL(mailstore_append_commit(&a, 0, NULL, 0, 1600000000, &uid,
		    &error), 0);
		mailstore_box_close(&box);
		CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "Old.2024", &box, &error), 0);
		CU_ASSERT_EQUAL(mailstore_msg_date(box, uid, &dt, &error), 0);
		CU_ASSERT_EQUAL(dt, 1600000000);
		CU_ASSERT_EQUAL(mailstore_msg_date(box, 999, &dt, &error), -1);
	}
	mailstore_box_close(&box);
	CU_ASSERT_EQUAL(mailstore_folder_delete(ms, "Old", &error), 0);
	CU_ASSERT_EQUAL(mailstore_folder_delete(ms, "Old", &error), -1);
	CU_ASSERT_EQUAL(mailstore_folder_delete(ms, "INBOX", &error), -1);
	{
		char **v;
		size_t n;

		CU_ASSERT_EQUAL_FATAL(mailstore_folders(ms, &v, &n, &error), 0);
		CU_ASSERT_EQUAL(n, 2);
		mailstore_names_free(&v, n);
	}
	CU_ASSERT_EQUAL(mailstore_box_open(ms, "Nope", &box, &error), -1);
	mailstore_free(&ms);
	/* user names that are not one path component each are refused */
	CU_ASSERT_EQUAL(mailstore_open(root, "../x@example.com", &ms, &error), -1);
	CU_ASSERT_EQUAL(mailstore_open(root, "x@..", &ms, &error), -1);
	CU_ASSERT_EQUAL(mailstore_open(root, "nodomain", &ms, &error), -1);
	{
		char *cmd = xasprintf("rm -rf '%s'", root);

		CU_ASSERT_EQUAL(system(cmd), 0);
		free(cmd);
	}
	free(root);
}

static void
test_deliver(void)
{
	static const char *const pieces[] = { "x\r", "\n", "y\n", "\n" };
	const char *users[2] = { "bob@example.com", "carol@example.com" };
	char *root = unit_tmpdir(), *p, *name, id[64];
	struct mailstore_delivery *d;
	const char *error;

	CU_ASSERT_EQUAL_FATAL(mailstore_deliver_begin(root, users[0], &d, &error), 0);
	for (size_t i = 0; i < 4; i++)
		CU_ASSERT_EQUAL(mailstore_deliver_write(d, pieces[i], strlen(pieces[i]), &error), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_deliver_commit(&d, root, users, 2, id, &error), 0);
	CU_ASSERT_PTR_NULL(d);
	for (int u = 0; u < 2; u++) {
		/* a CR ending one piece and its LF starting the next are one CRLF */
		p = xasprintf("%s/example.com/%s/Maildir/new", root, u ? "carol" : "bob");
		name = only_file(p);
		CU_ASSERT_PTR_NOT_NULL_FATAL(name);
		CU_ASSERT_STRING_EQUAL(name, id);
		CU_ASSERT_PTR_NOT_NULL(strstr(name, ",S=6,W=8"));
		free(name);
		free(p);
	}
	p = xasprintf("%s/example.com/bob/Maildir/tmp", root);
	name = only_file(p);
	CU_ASSERT_PTR_NULL(name);	/* the tmp/ name is gone */
	free(p);
	/* all or nothing: a recipient that cannot be a mailbox takes back every copy */
	{
		const char *bad[2] = { "dave@example.com", "../x@example.com" };

		CU_ASSERT_EQUAL_FATAL(mailstore_deliver_begin(root, bad[0], &d, &error), 0);
		CU_ASSERT_EQUAL(mailstore_deliver_write(d, "z\n", 2, &error), 0);
		CU_ASSERT_EQUAL(mailstore_deliver_commit(&d, root, bad, 2, id, &error), -1);
		p = xasprintf("%s/example.com/dave/Maildir/new", root);
		name = only_file(p);
		CU_ASSERT_PTR_NULL(name);
		free(p);
		p = xasprintf("%s/example.com/dave/Maildir/tmp", root);
		name = only_file(p);
		CU_ASSERT_PTR_NULL(name);
		free(p);
	}
	{
		char *cmd = xasprintf("rm -rf '%s'", root);

		CU_ASSERT_EQUAL(system(cmd), 0);
		free(cmd);
	}
	free(root);
}

/* COPY: a hard link (same inode), flags and keywords by name, the mtime kept, new UIDs */
static void
test_copy(void)
{
	char *root = unit_tmpdir(), *cmd;
	const char *err, *kw[] = { "$Label1" };
	struct mailstore *ms;
	struct mailstore_box *in, *dst;
	struct mailstore_append *a;
	uint32_t u1, u2;
	const struct mailstore_msg *m;
	int fd1, fd2;
	struct stat s1, s2;
	time_t d1, d2;

	CU_ASSERT_EQUAL_FATAL(mailstore_open(root, "bob@example.com", &ms, &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_folder_create(ms, "Archive", &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "INBOX", &in, &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "Archive", &dst, &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_append_begin(in, &a, &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_append_write(a, "S: x\n\nhi\n", 9, &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_append_commit(&a, MAILSTORE_SEEN, kw, 1, 1000000000, &u1,
	    &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_msg_copy(in, u1, dst, &u2, &err), 0);
	CU_ASSERT_EQUAL(u2, 1);
	CU_ASSERT_EQUAL(mailstore_box_uidnext(dst), 2);
	m = mailstore_box_msg(dst, 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(m);
	CU_ASSERT_EQUAL(m->flags, MAILSTORE_SEEN);
	CU_ASSERT_EQUAL(m->size, 9);
	CU_ASSERT_EQUAL(m->vsize, 12);
	CU_ASSERT_STRING_EQUAL(mailstore_box_keyword(dst, 0), "$Label1");
	CU_ASSERT_EQUAL(m->keywords, 1u);
	CU_ASSERT_EQUAL_FATAL(mailstore_msg_open(in, u1, &fd1, &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_msg_open(dst, u2, &fd2, &err), 0);
	CU_ASSERT_EQUAL(fstat(fd1, &s1), 0);
	CU_ASSERT_EQUAL(fstat(fd2, &s2), 0);
	CU_ASSERT_EQUAL(s1.st_ino, s2.st_ino);
	close(fd1);
	close(fd2);
	CU_ASSERT_EQUAL(mailstore_msg_date(in, u1, &d1, &err), 0);
	CU_ASSERT_EQUAL(mailstore_msg_date(dst, u2, &d2, &err), 0);
	CU_ASSERT_EQUAL(d1, 1000000000);
	CU_ASSERT_EQUAL(d2, 1000000000);
	/* a message that is not there */
	CU_ASSERT_EQUAL(mailstore_msg_copy(in, 77, dst, &u2, &err), -1);
	/* into its own folder: the commit reloads the keywords it was given
	 * (a use-after-free before, found by test_imap_session_dovecot) */
	CU_ASSERT_EQUAL_FATAL(mailstore_msg_copy(in, u1, in, &u2, &err), 0);
	CU_ASSERT_EQUAL(u2, u1 + 1);
	CU_ASSERT_EQUAL(mailstore_box_msg(in, 1)->keywords, 1u);
	mailstore_box_close(&dst);
	/* a fresh open sees the same UID (it is in dovecot-uidlist) */
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "Archive", &dst, &err), 0);
	CU_ASSERT_EQUAL(mailstore_box_count(dst), 1);
	CU_ASSERT_EQUAL(mailstore_box_msg(dst, 0)->uid, 1);
	CU_ASSERT_EQUAL(mailstore_box_msg(dst, 0)->flags, MAILSTORE_SEEN);
	mailstore_box_close(&dst);
	mailstore_box_close(&in);
	mailstore_free(&ms);
	cmd = xasprintf("rm -rf '%s'", root);
	if (system(cmd) != 0)
		CU_FAIL("rm");
	free(cmd);
	free(root);
}

/* subscriptions: Dovecot's version 2 file (TAB between levels), version 1 kept */
static void
test_subscriptions(void)
{
	char *root = unit_tmpdir(), *cmd, *path, *got, **names;
	const char *err;
	struct mailstore *ms;
	size_t n;
	FILE *f;

	CU_ASSERT_EQUAL_FATAL(mailstore_open(root, "bob@example.com", &ms, &err), 0);
	path = xasprintf("%s/example.com/bob/Maildir/subscriptions", root);
	CU_ASSERT_EQUAL(mailstore_subscribe(ms, "A.b", 1, &err), 0);
	CU_ASSERT_EQUAL(mailstore_subscribe(ms, "inbox", 1, &err), 0);
	CU_ASSERT_EQUAL(mailstore_subscribe(ms, "A.b", 1, &err), 0);
	CU_ASSERT_EQUAL(mailstore_subscribe(ms, "Sent", 1, &err), 0);
	CU_ASSERT_EQUAL(mailstore_subscribe(ms, "Sent", 0, &err), 0);
	got = slurp(path);
	CU_ASSERT_STRING_EQUAL(got, "V\t2\n\nA\tb\nINBOX\n");
	free(got);
	CU_ASSERT_EQUAL_FATAL(mailstore_subscriptions(ms, &names, &n, &err), 0);
	CU_ASSERT_EQUAL_FATAL(n, 2);
	CU_ASSERT_STRING_EQUAL(names[0], "A.b");
	CU_ASSERT_STRING_EQUAL(names[1], "INBOX");
	mailstore_names_free(&names, n);
	/* a version 1 file (an old Dovecot's): read as is, written back as version 1 */
	f = fopen(path, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs("Old.x\nINBOX\n", f);
	fclose(f);
	CU_ASSERT_EQUAL(mailstore_subscribe(ms, "New", 1, &err), 0);
	got = slurp(path);
	CU_ASSERT_STRING_EQUAL(got, "Old.x\nINBOX\nNew\n");
	free(got);
	CU_ASSERT_EQUAL(mailstore_folder_ensure(ms, "Trash", &err), 0);
	CU_ASSERT_EQUAL(mailstore_folder_ensure(ms, "Trash", &err), 0);
	got = slurp(path);
	CU_ASSERT_STRING_EQUAL(got, "Old.x\nINBOX\nNew\nTrash\n");
	free(got);
	mailstore_free(&ms);
	cmd = xasprintf("rm -rf '%s'", root);
	if (system(cmd) != 0)
		CU_FAIL("rm");
	free(cmd);
	free(path);
	free(root);
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

/* D1: a bare-LF file whose name and uidlist record have no W= (another
 * MDA's, a UID Dovecot gave): RFC822.SIZE and POP3 sizes are the CRLF size
 * that BODY[] and RETR send, counted once and kept in the record as Dovecot
 * keeps it. Failed before: vsize was the file's size. */
static void
test_vsize_without_w(void)
{
	char *root = unit_tmpdir(), *md, *p, *s;
	struct mailstore *ms;
	struct mailstore_box *box;
	const char *err;

	CU_ASSERT_EQUAL_FATAL(mailstore_open(root, "v@example.com", &ms, &err), 0);
	md = xasprintf("%s/example.com/v/Maildir", root);
	/* a folder Dovecot served: the uidlist has UIDs, no W */
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "INBOX", &box, &err), 0);
	mailstore_box_close(&box);
	p = xasprintf("%s/dovecot-uidlist", md);
	spit(p, "3 V1800000000 N4 G0123456789abcdef0123456789abcdef\n"
	    "1 :1700000001.M1P1.mda\n2 :1700000002.M2P2.mda,S=13\n3 W9 :1700000003.M3P3.mda\n");
	free(p);
	p = xasprintf("%s/cur/1700000001.M1P1.mda:2,S", md);
	spit(p, "A: b\n\nline\nline\n");	/* 16 octets, 4 bare LFs */
	free(p);
	p = xasprintf("%s/cur/1700000002.M2P2.mda,S=13:2,", md);
	spit(p, "A: bc\r\n\r\nx\ny\n");	/* 13 octets, 2 bare LFs */
	free(p);
	p = xasprintf("%s/cur/1700000003.M3P3.mda:2,", md);
	spit(p, "A: b\n\nx\n");	/* W9 in the record is believed */
	free(p);
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "INBOX", &box, &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_box_count(box), 3);
	CU_ASSERT_EQUAL(mailstore_box_msg(box, 0)->size, 16);
	CU_ASSERT_EQUAL(mailstore_box_msg(box, 0)->vsize, 20);
	CU_ASSERT_EQUAL(mailstore_box_msg(box, 1)->size, 13);
	CU_ASSERT_EQUAL(mailstore_box_msg(box, 1)->vsize, 15);
	CU_ASSERT_EQUAL(mailstore_box_msg(box, 2)->vsize, 9);
	mailstore_box_close(&box);
	/* kept in the records (Dovecot reads W as its virtual size) */
	p = xasprintf("%s/dovecot-uidlist", md);
	s = slurp(p);
	CU_ASSERT_PTR_NOT_NULL(strstr(s, "\n1 W20 :1700000001.M1P1.mda\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(s, "\n2 W15 :1700000002.M2P2.mda,S=13\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(s, "\n3 W9 :1700000003.M3P3.mda\n"));
	free(s);
	free(p);
	/* a second open reads it from there */
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "INBOX", &box, &err), 0);
	CU_ASSERT_EQUAL(mailstore_box_msg(box, 0)->vsize, 20);
	mailstore_box_close(&box);
	mailstore_free(&ms);
	free(md);
	rm_root(root);
}

/* item 2: another process renames a message's file again and again (flags
 * in the name) while this session sets flags, opens it and copies it: each
 * call finds the file by its base name; only an expunged one is
 * MAILSTORE_GONE. Failed before: a file renamed twice was "gone". */
static void
test_rename_race(void)
{
	char *root = unit_tmpdir();
	struct mailstore *ms;
	struct mailstore_box *box, *other;
	const char *err;
	uint32_t uid, cuid;
	int fails = 0, fd;
	pid_t pid;

	CU_ASSERT_EQUAL_FATAL(mailstore_open(root, "r@example.com", &ms, &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_folder_create(ms, "Other", &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "INBOX", &box, &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "Other", &other, &err), 0);
	uid = append(box, "Subject: race\r\n\r\nx\r\n", 0, NULL);
	fflush(NULL);
	pid = fork();
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0) {
		/* the other session: its own store object, flipping \Flagged */
		struct mailstore *ms2;
		struct mailstore_box *b2;
		struct timespec t0, t;

		if (mailstore_open(root, "r@example.com", &ms2, &err) < 0 ||
		    mailstore_box_open(ms2, "INBOX", &b2, &err) < 0)
			_exit(2);
		clock_gettime(CLOCK_MONOTONIC, &t0);
		do {
			for (int k = 0; k < 50; k++) {
				if (mailstore_msg_set_flags(b2, uid, k % 2 ? MAILSTORE_FLAGS_ADD :
				    MAILSTORE_FLAGS_REMOVE, F, NULL, 0, &err) < 0)
					_exit(3);
				usleep(100);	/* a busy session, not a spin */
			}
			clock_gettime(CLOCK_MONOTONIC, &t);
		} while (t.tv_sec - t0.tv_sec < 2);
		_exit(0);
	}
	for (int r = 0; r < 400; r++) {
		int rc = mailstore_msg_set_flags(box, uid, r % 2 ? MAILSTORE_FLAGS_ADD :
		    MAILSTORE_FLAGS_REMOVE, A, NULL, 0, &err);

		if (rc < 0)
			fails++;
		if (mailstore_msg_open(box, uid, &fd, &err) < 0)
			fails++;
		else
			close(fd);
		if (r % 20 == 0 && mailstore_msg_copy(box, uid, other, &cuid, &err) < 0)
			fails++;
	}
	{
		int status = 0;

		CU_ASSERT_EQUAL(waitpid(pid, &status, 0), pid);
		CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	CU_ASSERT_EQUAL(fails, 0);
	/* expunged for real: gone, not an error */
	CU_ASSERT_EQUAL(mailstore_msg_expunge(other, 1, &err), 0);
	{
		struct mailstore_box *b3;

		CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "INBOX", &b3, &err), 0);
		CU_ASSERT_EQUAL(mailstore_msg_expunge(b3, uid, &err), 0);
		mailstore_box_close(&b3);
	}
	CU_ASSERT_EQUAL(mailstore_msg_set_flags(box, uid, MAILSTORE_FLAGS_ADD, S, NULL, 0, &err),
	    MAILSTORE_GONE);
	CU_ASSERT_EQUAL(mailstore_msg_open(box, uid, &fd, &err), MAILSTORE_GONE);
	CU_ASSERT_EQUAL(mailstore_msg_copy(box, uid, other, &cuid, &err), MAILSTORE_GONE);
	/* expunging a message that is gone already is done, not an error */
	CU_ASSERT_EQUAL(mailstore_msg_expunge(box, uid, &err), 0);
	mailstore_box_close(&other);
	mailstore_box_close(&box);
	mailstore_free(&ms);
	rm_root(root);
}

static size_t
recent_count(struct mailstore *ms, const char *name, int claim)
{
	struct mailstore_box *box;
	const char *err;
	size_t k = 0;

	CU_ASSERT_EQUAL_FATAL((claim ? mailstore_box_open : mailstore_box_open_peek)(ms, name,
	    &box, &err), 0);
	for (size_t i = 0; i < mailstore_box_count(box); i++)
		k += mailstore_box_msg(box, i)->recent;
	mailstore_box_close(&box);
	return k;
}

/* item 3: \Recent as Dovecot: a peek (STATUS, EXAMINE, POP3) sees it and
 * takes none, exactly one SELECT takes it, COPY and APPEND make it. Failed
 * before: the first open of any kind took it (R1), a copy never had it (R2). */
static void
test_recent(void)
{
	char *root = unit_tmpdir(), *p, *s;
	struct mailstore *ms;
	struct mailstore_box *a, *b, *work;
	const char *err;
	uint32_t u;

	CU_ASSERT_EQUAL_FATAL(mailstore_open(root, "rc@example.com", &ms, &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_folder_create(ms, "Work", &err), 0);
	CU_ASSERT_EQUAL_FATAL(recent_count(ms, "INBOX", 0), 0);	/* the folder exists */
	for (int i = 0; i < 2; i++) {
		p = xasprintf("%s/example.com/rc/Maildir/new/170000000%d.M%dP1.mda", root, i, i);
		spit(p, "Subject: r\n\nx\n");
		free(p);
	}
	/* STATUS twice, POP3: 2, 2 */
	CU_ASSERT_EQUAL(recent_count(ms, "INBOX", 0), 2);
	CU_ASSERT_EQUAL(recent_count(ms, "INBOX", 0), 2);
	/* two SELECTs: one gets both, the other none; a peek then sees none */
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "INBOX", &a, &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open(ms, "INBOX", &b, &err), 0);
	CU_ASSERT(mailstore_box_msg(a, 0)->recent && mailstore_box_msg(a, 1)->recent);
	CU_ASSERT(!mailstore_box_msg(b, 0)->recent && !mailstore_box_msg(b, 1)->recent);
	CU_ASSERT_EQUAL(recent_count(ms, "INBOX", 0), 0);
	/* the first session keeps them over a sync */
	CU_ASSERT_EQUAL(mailstore_box_sync(a, &err), 0);
	CU_ASSERT(mailstore_box_msg(a, 0)->recent);
	/* COPY into Work (opened as a target: a peek): Recent for Work's next SELECT */
	CU_ASSERT_EQUAL_FATAL(mailstore_box_open_peek(ms, "Work", &work, &err), 0);
	CU_ASSERT_EQUAL(mailstore_msg_copy(a, mailstore_box_msg(a, 0)->uid, work, &u, &err), 0);
	CU_ASSERT_EQUAL(mailstore_msg_copy(a, mailstore_box_msg(a, 1)->uid, work, &u, &err), 0);
	mailstore_box_close(&work);
	CU_ASSERT_EQUAL(recent_count(ms, "Work", 0), 2);
	CU_ASSERT_EQUAL(recent_count(ms, "Work", 1), 2);
	CU_ASSERT_EQUAL(recent_count(ms, "Work", 1), 0);
	/* APPEND into the selected INBOX: Recent for the session that has it
	 * selected, seen at its next sync; not for the other */
	u = append(a, "Subject: appended\r\n\r\nx\r\n", S, NULL);
	CU_ASSERT_EQUAL(mailstore_box_sync(a, &err), 0);
	CU_ASSERT(mailstore_box_msg(a, 2)->recent);
	CU_ASSERT_EQUAL(mailstore_box_sync(b, &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_box_count(b), 3);
	CU_ASSERT(!mailstore_box_msg(b, 2)->recent);
	mailstore_box_close(&b);
	mailstore_box_close(&a);
	/* the mark is a header field Dovecot keeps: "r<first recent UID>" */
	p = xasprintf("%s/example.com/rc/Maildir/dovecot-uidlist", root);
	s = slurp(p);
	CU_ASSERT_PTR_NOT_NULL(strstr(s, " r4\n"));
	free(s);
	free(p);
	mailstore_free(&ms);
	rm_root(root);
}

void
test_mailstore_register(void)
{
	static CU_TestInfo tests[] = {
		{ "file names: flags, keywords, sizes", test_names },
		{ "file names: flag renames as Dovecot", test_rename },
		{ "dovecot-uidlist: parse, format, refuse", test_uidlist },
		{ "dovecot-keywords: parse, format", test_keywords },
		{ "store: UIDs, flags, expunge, folders, hostile uidlist", test_store },
		{ "delivery: one file linked into each new/, ,S= and ,W=", test_deliver },
		{ "copy: a hard link, flags, keywords, date, new UID", test_copy },
		{ "subscriptions: Dovecot's file, version 2 and 1", test_subscriptions },
		{ "vsize without W=: counted once, kept in the record", test_vsize_without_w },
		{ "a file renamed by another session is found again; gone is gone",
		    test_rename_race },
		{ "\\Recent: peeks see it, one SELECT takes it, COPY/APPEND make it", test_recent },
		{ NULL, NULL },
	};

	unit_suite("mailstore", tests);
}
