/* liststore_file: hand-edited files, atomic rewrites, change detection. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "common/xmalloc.h"
#include "storage-adapter/liststore.h"
#include "tests/unit/unit.h"

static char *
slurp(const char *path)
{
	FILE *fp = fopen(path, "r");
	char *buf = xcalloc(1, 65536);

	if (fp != NULL) {
		size_t n = fread(buf, 1, 65535, fp);

		buf[n] = '\0';
		fclose(fp);
	}
	return buf;
}

static void
spit(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");

	CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
	fputs(text, fp);
	fclose(fp);
}

static int
has_key(const struct entry_vec *v, const char *key)
{
	for (size_t i = 0; i < v->n; i++)
		if (strcmp(v->v[i].key, key) == 0)
			return 1;
	return 0;
}

static void
test_file_bad_lines_skipped(void)
{
	char *dir = unit_tmpdir();
	char *url = xasprintf("file:%s", dir), *path = xasprintf("%s/kill.list", dir);
	char longline[3000];
	struct liststore *s;
	struct entry_vec v = { 0 };
	const char *err;
	char *text;

	memset(longline, 'x', sizeof(longline) - 1);
	longline[sizeof(longline) - 1] = '\0';
	text = xasprintf("# comment\n192.0.2.1\nthis is not an entry\n\n198.51.100.0/24 reason=spam\n"
	    "10.0.0.0/8 expires=banana\n%s\n@bad.example\n192.0.2.300\nlast@line.example", longline);
	spit(path, text);
	s = liststore_open(url, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	CU_ASSERT_EQUAL(liststore_load(s, LIST_KILL, &v, &err), 0);
	CU_ASSERT_EQUAL(v.n, 4);
	CU_ASSERT_TRUE(has_key(&v, "192.0.2.1"));
	CU_ASSERT_TRUE(has_key(&v, "198.51.100.0/24"));
	CU_ASSERT_TRUE(has_key(&v, "@bad.example"));
	CU_ASSERT_TRUE(has_key(&v, "last@line.example"));
	CU_ASSERT_FALSE(has_key(&v, "10.0.0.0/8"));
	entry_vec_clear(&v);
	/* a missing list is an empty list */
	CU_ASSERT_EQUAL(liststore_load(s, LIST_ACCEPT, &v, &err), 0);
	CU_ASSERT_EQUAL(v.n, 0);
	liststore_free(&s);
	free(text);
	free(url);
	free(path);
	free(dir);
}

static void
test_file_rewrite_keeps_what_it_cannot_parse(void)
{
	char *dir = unit_tmpdir();
	char *url = xasprintf("file:%s", dir), *path = xasprintf("%s/kill.list", dir);
	struct liststore *s;
	struct list_entry e;
	const char *err;
	char *after;
	int found = -1;

	spit(path, "# mine\n192.0.2.1 reason=old\ntypo here\n203.0.113.5 expires=1\n");
	s = liststore_open(url, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	CU_ASSERT_EQUAL_FATAL(listentry_parse_key("192.0.2.1", &e, &err), 0);
	e.reason = xstrdup("new");
	CU_ASSERT_EQUAL(liststore_add(s, LIST_KILL, &e, &err), 0);
	listentry_clear(&e);
	CU_ASSERT_EQUAL_FATAL(listentry_parse_key("@spam.example", &e, &err), 0);
	CU_ASSERT_EQUAL(liststore_add(s, LIST_KILL, &e, &err), 0);
	listentry_clear(&e);
	after = slurp(path);
	CU_ASSERT_PTR_NOT_NULL(strstr(after, "# mine\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(after, "typo here\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(after, "192.0.2.1 added=0 expires=0 origin=admin reason=new\n"));
	CU_ASSERT_PTR_NULL(strstr(after, "reason=old"));
	CU_ASSERT_PTR_NULL(strstr(after, "203.0.113.5"));	/* expired: dropped */
	CU_ASSERT_PTR_NOT_NULL(strstr(after, "@spam.example"));
	free(after);
	CU_ASSERT_EQUAL(liststore_del(s, LIST_KILL, "192.0.2.1", &found, &err), 0);
	CU_ASSERT_EQUAL(found, 1);
	CU_ASSERT_EQUAL(liststore_del(s, LIST_KILL, "192.0.2.1", &found, &err), 0);
	CU_ASSERT_EQUAL(found, 0);
	after = slurp(path);
	CU_ASSERT_PTR_NULL(strstr(after, "192.0.2.1"));
	CU_ASSERT_PTR_NOT_NULL(strstr(after, "typo here\n"));
	free(after);
	/* no temporary files left behind */
	char *cmd = xasprintf("test $(ls -A %s | grep -c tmp) -eq 0", dir);
	CU_ASSERT_EQUAL(system(cmd), 0);
	free(cmd);
	liststore_free(&s);
	free(url);
	free(path);
	free(dir);
}

static void
test_file_change_detection(void)
{
	char *dir = unit_tmpdir();
	char *url = xasprintf("file:%s", dir);
	struct liststore *reader, *writer;
	struct entry_vec v = { 0 };
	struct list_entry e;
	const char *err;

	reader = liststore_open(url, &err);
	writer = liststore_open(url, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(reader);
	CU_ASSERT_EQUAL(liststore_changed(reader, LIST_KILL), 1);	/* never loaded */
	CU_ASSERT_EQUAL(liststore_load(reader, LIST_KILL, &v, &err), 0);
	entry_vec_clear(&v);
	CU_ASSERT_EQUAL(liststore_changed(reader, LIST_KILL), 0);
	CU_ASSERT_EQUAL_FATAL(listentry_parse_key("192.0.2.1", &e, &err), 0);
	CU_ASSERT_EQUAL(liststore_add(writer, LIST_KILL, &e, &err), 0);
	listentry_clear(&e);
	CU_ASSERT_EQUAL(liststore_changed(reader, LIST_KILL), 1);
	CU_ASSERT_EQUAL(liststore_changed(reader, LIST_ACCEPT), 1);	/* never loaded */
	CU_ASSERT_EQUAL(liststore_load(reader, LIST_KILL, &v, &err), 0);
	CU_ASSERT_EQUAL(v.n, 1);
	entry_vec_clear(&v);
	liststore_free(&reader);
	liststore_free(&writer);
	free(url);
	free(dir);
}

static void
push_key(struct entry_vec *v, const char *key, const char *reason)
{
	struct list_entry e;
	const char *err;

	CU_ASSERT_EQUAL_FATAL(listentry_parse_key(key, &e, &err), 0);
	e.origin = ORIGIN_AUTOBAN;
	e.reason = reason ? xstrdup(reason) : NULL;
	entry_vec_push(v, &e);
}

static const struct list_entry *
find_key(const struct entry_vec *v, const char *key)
{
	for (size_t i = 0; i < v->n; i++)
		if (strcmp(v->v[i].key, key) == 0)
			return &v->v[i];
	return NULL;
}

/* batches go to DIR/kill.journal; readers get only the new tail; a rewrite
 * folds the journal in; a held lock makes a batch fail at once */
static void
test_file_journal(void)
{
	char *dir = unit_tmpdir();
	char *url = xasprintf("file:%s", dir), *list = xasprintf("%s/kill.list", dir);
	char *journal = xasprintf("%s/kill.journal", dir), *lock = xasprintf("%s/.lock", dir);
	struct liststore *reader, *writer;
	struct entry_vec v = { 0 }, b = { 0 };
	struct list_changes ch = { 0 };
	const char *err;
	char *text;
	int found = 0, fd;

	spit(list, "# hand-made\n192.0.2.1 reason=admin\n");
	reader = liststore_open(url, &err);
	writer = liststore_open(url, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(reader);
	CU_ASSERT_PTR_NOT_NULL_FATAL(writer);
	CU_ASSERT_EQUAL(liststore_load(reader, LIST_KILL, &v, &err), 0);
	entry_vec_clear(&v);
	CU_ASSERT_EQUAL(liststore_load(writer, LIST_KILL, &v, &err), 0);
	entry_vec_clear(&v);

	push_key(&b, "198.51.100.1", "long-command");
	push_key(&b, "192.0.2.1", "banned too");	/* replaces the list's entry */
	CU_ASSERT_EQUAL(liststore_add_batch(writer, LIST_KILL, b.v, b.n, &err), 0);
	entry_vec_clear(&b);
	text = slurp(list);
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "reason=admin"));	/* list not rewritten */
	free(text);
	text = slurp(journal);
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "198.51.100.1 "));
	free(text);

	/* the reader: the two entries handed over, no reload */
	CU_ASSERT_EQUAL(liststore_changes(reader, &ch), 0);
	CU_ASSERT_EQUAL(ch.reload[LIST_KILL], 0);
	CU_ASSERT_EQUAL(ch.got[LIST_KILL].n, 2);
	CU_ASSERT_PTR_NOT_NULL(find_key(&ch.got[LIST_KILL], "198.51.100.1"));
	list_changes_clear(&ch);
	CU_ASSERT_EQUAL(liststore_changes(reader, &ch), 0);
	CU_ASSERT_EQUAL(ch.got[LIST_KILL].n, 0);
	list_changes_clear(&ch);
	/* the writer knows its own lines */
	CU_ASSERT_EQUAL(liststore_changes(writer, &ch), 0);
	CU_ASSERT_EQUAL(ch.reload[LIST_KILL], 0);
	CU_ASSERT_EQUAL(ch.got[LIST_KILL].n, 0);
	list_changes_clear(&ch);

	/* a load is the list with the journal applied */
	CU_ASSERT_EQUAL(liststore_load(reader, LIST_KILL, &v, &err), 0);
	CU_ASSERT_EQUAL(v.n, 2);
	CU_ASSERT_STRING_EQUAL(find_key(&v, "192.0.2.1")->reason, "banned too");
	entry_vec_clear(&v);

	/* someone else holds the lock: the batch fails at once, nothing written */
	fd = open(lock, O_RDWR | O_CREAT, 0640);
	CU_ASSERT_EQUAL_FATAL(flock(fd, LOCK_EX), 0);
	push_key(&b, "203.0.113.9", NULL);
	CU_ASSERT_EQUAL(liststore_add_batch(writer, LIST_KILL, b.v, b.n, &err), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "held by another process"));
	close(fd);
	CU_ASSERT_EQUAL(liststore_add_batch(writer, LIST_KILL, b.v, b.n, &err), 0);
	entry_vec_clear(&b);

	/* a del folds the journal into the list and removes it */
	CU_ASSERT_EQUAL(liststore_del(writer, LIST_KILL, "198.51.100.1", &found, &err), 0);
	CU_ASSERT_EQUAL(found, 1);
	CU_ASSERT_EQUAL(access(journal, F_OK), -1);
	text = slurp(list);
	CU_ASSERT_PTR_NULL(strstr(text, "198.51.100.1"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "203.0.113.9 "));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "reason=banned too"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "# hand-made"));
	free(text);
	CU_ASSERT_EQUAL(liststore_changes(reader, &ch), 0);
	CU_ASSERT_EQUAL(ch.reload[LIST_KILL], 1);	/* the list was rewritten */
	list_changes_clear(&ch);

	/* a journal past half the list (and 256 KB) is folded in by the batch */
	for (int i = 0; i < 4000; i++) {
		char key[32];

		snprintf(key, sizeof(key), "10.1.%d.%d", i / 250, i % 250 + 1);
		push_key(&b, key, "a reason long enough to make the journal grow quickly, 80 bytes");
	}
	CU_ASSERT_EQUAL(liststore_add_batch(writer, LIST_KILL, b.v, b.n, &err), 0);
	entry_vec_clear(&b);
	CU_ASSERT_EQUAL(access(journal, F_OK), -1);
	CU_ASSERT_EQUAL(liststore_load(reader, LIST_KILL, &v, &err), 0);
	CU_ASSERT_EQUAL(v.n, 4002);
	entry_vec_clear(&v);

	liststore_free(&reader);
	liststore_free(&writer);
	free(url);
	free(list);
	free(journal);
	free(lock);
	free(dir);
}

/* a line still being written is left for the next read; bad lines are skipped */
static void
test_file_journal_partial_and_bad_lines(void)
{
	char *dir = unit_tmpdir();
	char *url = xasprintf("file:%s", dir), *journal = xasprintf("%s/kill.journal", dir);
	struct liststore *reader;
	struct entry_vec v = { 0 };
	struct list_changes ch = { 0 };
	const char *err;
	FILE *fp;

	reader = liststore_open(url, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(reader);
	CU_ASSERT_EQUAL(liststore_load(reader, LIST_KILL, &v, &err), 0);
	CU_ASSERT_EQUAL(v.n, 0);
	entry_vec_clear(&v);
	spit(journal, "192.0.2.1 origin=auto-ban\nnot an entry\n192.0.2.1 reason=later wins\n"
	    "198.51.100.7 reas");
	CU_ASSERT_EQUAL(liststore_changes(reader, &ch), 0);
	CU_ASSERT_EQUAL(ch.reload[LIST_KILL], 0);
	CU_ASSERT_EQUAL_FATAL(ch.got[LIST_KILL].n, 1);	/* one key, the later line */
	CU_ASSERT_STRING_EQUAL(ch.got[LIST_KILL].v[0].reason, "later wins");
	list_changes_clear(&ch);
	fp = fopen(journal, "a");
	CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
	fputs("on=finished\n", fp);
	fclose(fp);
	CU_ASSERT_EQUAL(liststore_changes(reader, &ch), 0);
	CU_ASSERT_EQUAL_FATAL(ch.got[LIST_KILL].n, 1);
	CU_ASSERT_STRING_EQUAL(ch.got[LIST_KILL].v[0].key, "198.51.100.7");
	CU_ASSERT_STRING_EQUAL(ch.got[LIST_KILL].v[0].reason, "finished");
	list_changes_clear(&ch);
	/* the journal removed by hand: a reload */
	unlink(journal);
	CU_ASSERT_EQUAL(liststore_changes(reader, &ch), 0);
	CU_ASSERT_EQUAL(ch.reload[LIST_KILL], 1);
	list_changes_clear(&ch);
	liststore_free(&reader);
	free(url);
	free(journal);
	free(dir);
}

static void
test_file_bad_urls(void)
{
	const char *err;

	CU_ASSERT_PTR_NULL(liststore_open("ftp://x", &err));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "unknown store"));
	CU_ASSERT_PTR_NULL(liststore_open("file:", &err));
	CU_ASSERT_PTR_NULL(liststore_open("file:/proc/no/such/dir", &err));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "cannot create"));
}

static CU_TestInfo tests[] = {
	{ "bad lines are skipped, good lines load", test_file_bad_lines_skipped },
	{ "rewrites keep comments and typos, drop expired", test_file_rewrite_keeps_what_it_cannot_parse },
	{ "change detection", test_file_change_detection },
	{ "journal: batches, tails, folding, a held lock", test_file_journal },
	{ "journal: a line being written, bad lines, removal", test_file_journal_partial_and_bad_lines },
	{ "bad store URLs", test_file_bad_urls },
	CU_TEST_INFO_NULL,
};

void
test_liststore_file_register(void)
{
	unit_suite("liststore_file", tests);
}
