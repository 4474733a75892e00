/* redis_schema: key names and hash fields <-> entries; snapshot diffing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/xmalloc.h"
#include "storage-adapter/redis_schema.h"
#include "tests/unit/unit.h"

static void
test_schema_keys(void)
{
	char *k = redis_schema_key("portcullis:", LIST_KILL, "2001:db8::/32");
	enum list_kind kind;
	const char *entry;

	CU_ASSERT_STRING_EQUAL(k, "portcullis:kill:2001:db8::/32");
	CU_ASSERT_EQUAL(redis_schema_split_key("portcullis:", k, &kind, &entry), 0);
	CU_ASSERT_EQUAL(kind, LIST_KILL);
	CU_ASSERT_STRING_EQUAL(entry, "2001:db8::/32");
	free(k);
	CU_ASSERT_EQUAL(redis_schema_split_key("portcullis:", "portcullis:accept:@x.example",
	    &kind, &entry), 0);
	CU_ASSERT_EQUAL(kind, LIST_ACCEPT);
	CU_ASSERT_EQUAL(redis_schema_split_key("portcullis:", "other:kill:1.2.3.4", &kind, &entry), -1);
	CU_ASSERT_EQUAL(redis_schema_split_key("portcullis:", "portcullis:rate:x", &kind, &entry), -1);
	CU_ASSERT_EQUAL(redis_schema_split_key("portcullis:", "portcullis:changes", &kind, &entry), -1);
	CU_ASSERT_EQUAL(redis_schema_split_key("site-a:", "site-a:kill:1.2.3.4", &kind, &entry), 0);
	/* country:XX entries are keys like any other */
	k = redis_schema_key("portcullis:", LIST_KILL, "country:FR");
	CU_ASSERT_STRING_EQUAL(k, "portcullis:kill:country:FR");
	CU_ASSERT_EQUAL(redis_schema_split_key("portcullis:", k, &kind, &entry), 0);
	CU_ASSERT_EQUAL(kind, LIST_KILL);
	CU_ASSERT_STRING_EQUAL(entry, "country:FR");
	free(k);
}

struct dcase {
	const char *name, *entry;
	const char *fv[8];
	long long expiretime;
	int ok;
	long long added, expires;
	int origin;
	const char *reason;
};

static const struct dcase dcases[] = {
	{ "all fields", "192.0.2.1", { "added", "100", "origin", "auto-ban", "reason", "long-command" },
	  5000, 1, 100, 4000, ORIGIN_AUTOBAN, "long-command" },
	{ "no fields at all (HSET by hand)", "@x.example", { NULL }, -1, 1, 0, 0, ORIGIN_ADMIN, NULL },
	{ "unknown field ignored", "192.0.2.1", { "note", "ticket 42", "reason", "spam" }, -1, 1, 0, 0,
	  ORIGIN_ADMIN, "spam" },
	{ "empty reason", "192.0.2.1", { "reason", "" }, -1, 1, 0, 0, ORIGIN_ADMIN, NULL },
	{ "bad added", "192.0.2.1", { "added", "yesterday" }, -1, 0, 0, 0, 0, NULL },
	{ "negative added", "192.0.2.1", { "added", "-5" }, -1, 0, 0, 0, 0, NULL },
	{ "bad origin", "192.0.2.1", { "origin", "martians" }, -1, 0, 0, 0, 0, NULL },
	{ "reason with newline", "192.0.2.1", { "reason", "a\nb" }, -1, 0, 0, 0, 0, NULL },
	{ "entry name is no entry", "not-an-entry", { NULL }, -1, 0, 0, 0, 0, NULL },
	{ "country entry", "country:FR", { "origin", "admin", "reason", "geo" }, -1, 1, 0, 0,
	  ORIGIN_ADMIN, "geo" },
	{ "country entry, lower case by hand", "country:fr", { NULL }, -1, 1, 0, 0, ORIGIN_ADMIN, NULL },
	{ "country of three letters", "country:FRA", { NULL }, -1, 0, 0, 0, 0, NULL },
	{ "entry with host bits", "192.0.2.1/24", { NULL }, -1, 0, 0, 0, 0, NULL },
};

static void
test_schema_decode(void)
{
	for (size_t i = 0; i < sizeof(dcases) / sizeof(dcases[0]); i++) {
		const struct dcase *t = &dcases[i];
		size_t n = 0, len[8];
		struct list_entry e;
		const char *err = NULL;
		int rc;

		while (n < 8 && t->fv[n] != NULL) {
			len[n] = strlen(t->fv[n]);
			n++;
		}
		memset(&e, 0, sizeof(e));
		rc = redis_schema_decode(t->entry, t->fv, len, n, t->expiretime, 1000, &e, &err);
		if (!t->ok) {
			if (rc != -1 || err == NULL) {
				fprintf(stderr, "\n  case \"%s\" accepted\n", t->name);
				CU_FAIL("bad Redis data accepted");
			}
			continue;
		}
		if (rc != 0 || e.added != t->added || e.expires != t->expires ||
		    (int)e.origin != t->origin ||
		    (t->reason ? (e.reason == NULL || strcmp(e.reason, t->reason) != 0) : e.reason != NULL)) {
			fprintf(stderr, "\n  case \"%s\": rc %d added %lld expires %lld\n", t->name, rc,
			    e.added, e.expires);
			CU_FAIL("decode differs");
		}
		listentry_clear(&e);
	}
}

static void
push(struct entry_vec *v, const char *line)
{
	struct list_entry e;
	const char *err;

	CU_ASSERT_EQUAL_FATAL(listentry_parse_line(line, &e, &err), 0);
	entry_vec_push(v, &e);
}

static int
has(const struct entry_vec *v, const char *key, const char *reason)
{
	for (size_t i = 0; i < v->n; i++)
		if (strcmp(v->v[i].key, key) == 0)
			return reason == NULL || (v->v[i].reason && strcmp(v->v[i].reason, reason) == 0);
	return 0;
}

static void
test_snapshot_diffing(void)
{
	struct entry_vec v = { 0 }, upd = { 0 };
	char *keys[] = { "192.0.2.2", "@gone.example", "192.0.2.9", "192.0.2.2" };

	push(&v, "192.0.2.1 reason=keep");
	push(&v, "192.0.2.2 reason=old");
	push(&v, "@gone.example");
	push(&v, "10.0.0.0/8");
	push(&upd, "192.0.2.2 reason=new");	/* changed */
	push(&upd, "192.0.2.9 reason=added");	/* added */
	/* @gone.example changed and is absent from upd: deleted */
	entry_vec_replace_keys(&v, keys, 4, &upd);
	CU_ASSERT_EQUAL(v.n, 4);
	CU_ASSERT_TRUE(has(&v, "192.0.2.1", "keep"));
	CU_ASSERT_TRUE(has(&v, "192.0.2.2", "new"));
	CU_ASSERT_FALSE(has(&v, "192.0.2.2", "old"));
	CU_ASSERT_TRUE(has(&v, "192.0.2.9", "added"));
	CU_ASSERT_TRUE(has(&v, "10.0.0.0/8", NULL));
	CU_ASSERT_FALSE(has(&v, "@gone.example", NULL));
	CU_ASSERT_EQUAL(upd.n, 0);
	entry_vec_clear(&v);
	entry_vec_clear(&upd);
}

/* Redis clock minus ours, rounded to the second, from TIME and our clock
 * around the question */
static void
test_clock_offset(void)
{
	static const struct {
		const char *what;
		long long ts, tus, s0;
		long ns0;
		long long s1;
		long ns1;
		long long want;
	} t[] = {
		/* the case whole seconds got wrong: TIME just past a second's turn,
		 * our clock (read before and after) just before it: 1 s then */
		{ "same clock across a second's turn", 1001, 200, 1000, 999000000L, 1001, 1000000L, 0 },
		{ "same clock, mid-second", 1000, 500000, 1000, 499000000L, 1000, 501000000L, 0 },
		{ "Redis 1 s ahead", 1001, 500000, 1000, 499000000L, 1000, 501000000L, 1 },
		{ "Redis 0.4 s ahead rounds to 0", 1000, 900000, 1000, 499000000L, 1000, 501000000L, 0 },
		{ "Redis 0.6 s ahead rounds to 1", 1001, 100000, 1000, 499000000L, 1000, 501000000L, 1 },
		{ "Redis 0.6 s behind rounds to -1", 999, 900000, 1000, 499000000L, 1000, 501000000L, -1 },
		{ "Redis 0.4 s behind rounds to 0", 1000, 100000, 1000, 499000000L, 1000, 501000000L, 0 },
		{ "Redis an hour behind", 0, 0, 3600, 0, 3600, 0, -3600 },
		{ "a slow round trip: its middle", 1000, 500000, 999, 0, 1002, 0, 0 },
		/* garbage from the peer: no offset, no overflow (UBSan) */
		{ "TIME seconds past any clock", 9223372036854775807LL, 0, 1000, 0, 1000, 0, 0 },
		{ "TIME seconds negative", -5, 0, 1000, 0, 1000, 0, 0 },
		{ "TIME microseconds out of range", 1000, 5000000, 1000, 0, 1000, 0, 0 },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		long long got = redis_schema_clock_offset(t[i].ts, t[i].tus, t[i].s0, t[i].ns0, t[i].s1,
		    t[i].ns1);

		if (got != t[i].want)
			fprintf(stderr, "clock offset: %s: got %lld, want %lld\n", t[i].what, got,
			    t[i].want);
		CU_ASSERT_EQUAL(got, t[i].want);
	}
}

static CU_TestInfo tests[] = {
	{ "key names", test_schema_keys },
	{ "hash fields (table, incl. garbage)", test_schema_decode },
	{ "applying changed keys to a list copy", test_snapshot_diffing },
	{ "clock offset from TIME, rounded to the second", test_clock_offset },
	CU_TEST_INFO_NULL,
};

void
test_redis_schema_register(void)
{
	unit_suite("redis_schema", tests);
}
