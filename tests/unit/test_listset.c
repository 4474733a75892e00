/* listset: compiled lists, matching order and expiry. */
#include <stdio.h>
#include <string.h>

#include "common/xmalloc.h"
#include "rules/listset.h"
#include "rules/snapshot.h"
#include "tests/unit/unit.h"

static void
add(struct entry_vec *v, const char *line)
{
	struct list_entry e;
	const char *err;

	CU_ASSERT_EQUAL_FATAL(listentry_parse_line(line, &e, &err), 0);
	entry_vec_push(v, &e);
}

static void
test_listset_matching(void)
{
	struct entry_vec v = { 0 };
	struct listset *l;
	struct listset_match m;
	struct ipaddr a;
	struct mailaddr s;

	add(&v, "10.0.0.0/8 reason=big net");
	add(&v, "10.1.0.0/16 expires=500");	/* expires inside the test */
	add(&v, "host:mx.example.com");
	add(&v, "host:.bad.example");
	add(&v, "joe@example.org");
	add(&v, "@spam.example");
	add(&v, "192.0.2.1 expires=50");	/* already expired at build */
	l = listset_build(&v, 100);
	entry_vec_clear(&v);
	CU_ASSERT_EQUAL(listset_count(l), 6);
	CU_ASSERT_EQUAL(listset_next_expiry(l), 500);

	CU_ASSERT_EQUAL(cidr_addr_parse("10.1.2.3", &a), 0);
	CU_ASSERT_TRUE(listset_match_client(l, &a, NULL, 100, &m));
	CU_ASSERT_STRING_EQUAL(m.key, "10.1.0.0/16");
	/* after its expiry the /16 stops matching; until a rebuild nothing covers it */
	CU_ASSERT_FALSE(listset_match_client(l, &a, NULL, 600, &m));
	CU_ASSERT_EQUAL(cidr_addr_parse("10.2.0.1", &a), 0);
	CU_ASSERT_TRUE(listset_match_client(l, &a, NULL, 600, &m));
	CU_ASSERT_STRING_EQUAL(m.reason, "big net");
	CU_ASSERT_EQUAL(cidr_addr_parse("192.0.2.1", &a), 0);
	CU_ASSERT_FALSE(listset_match_client(l, &a, NULL, 100, &m));

	CU_ASSERT_TRUE(listset_match_client(l, NULL, "MX.Example.Com.", 100, &m));
	CU_ASSERT_TRUE(listset_match_client(l, NULL, "deep.in.bad.example", 100, &m));
	CU_ASSERT_STRING_EQUAL(m.key, "host:.bad.example");
	CU_ASSERT_FALSE(listset_match_client(l, NULL, "bad.example", 100, &m));
	CU_ASSERT_FALSE(listset_match_client(l, NULL, "other.example.com", 100, &m));
	CU_ASSERT_FALSE(listset_match_client(l, NULL, "", 100, &m));

	CU_ASSERT_EQUAL(mailaddr_parse("<JOE@example.org>", &s), 0);
	CU_ASSERT_TRUE(listset_match_sender(l, &s, 100, &m));
	CU_ASSERT_EQUAL(mailaddr_parse("<x@spam.example>", &s), 0);
	CU_ASSERT_TRUE(listset_match_sender(l, &s, 100, &m));
	CU_ASSERT_EQUAL(m.kind, ENTRY_SENDER_DOMAIN);
	CU_ASSERT_EQUAL(mailaddr_parse("<>", &s), 0);
	CU_ASSERT_FALSE(listset_match_sender(l, &s, 100, &m));
	listset_free(&l);
	CU_ASSERT_PTR_NULL(l);
}

static void
test_listset_empty_and_duplicates(void)
{
	struct entry_vec v = { 0 };
	struct listset *l;
	struct listset_match m;
	struct mailaddr s;

	l = listset_build(&v, 0);
	CU_ASSERT_EQUAL(listset_count(l), 0);
	CU_ASSERT_EQUAL(mailaddr_parse("<a@b.example>", &s), 0);
	CU_ASSERT_FALSE(listset_match_sender(l, &s, 0, &m));
	listset_free(&l);

	add(&v, "a@b.example reason=first");
	add(&v, "a@b.example reason=second");
	l = listset_build(&v, 0);
	entry_vec_clear(&v);
	CU_ASSERT_TRUE(listset_match_sender(l, &s, 0, &m));
	CU_ASSERT_STRING_EQUAL(m.reason, "second");
	listset_free(&l);
}

/*
 * A snapshot with additions on top of a shared full list: both layers match,
 * the added entry is found first, counts add up, and the shared base outlives
 * the snapshot it was built for (ASan would see a double free or a leak).
 */
static void
test_snapshot_overlay(void)
{
	struct entry_vec v = { 0 }, o = { 0 }, e = { 0 };
	struct listset *base, *acc;
	struct snapshot *s1, *s2;
	struct listset_match m;
	struct ipaddr a;
	struct mailaddr snd;

	add(&v, "10.0.0.0/8 reason=base net");
	add(&v, "@spam.example");
	base = listset_build(&v, 100);
	acc = listset_build(&e, 100);
	s1 = snapshot_new(base, acc);
	add(&o, "10.1.2.3 reason=pushed");
	add(&o, "joe@example.org expires=500");
	s2 = snapshot_new_overlay(listset_ref(base), listset_ref(acc), listset_build(&o, 100), NULL);
	snapshot_free(&s1);	/* as publishing s2 would */
	CU_ASSERT_EQUAL(snapshot_count(s2, LIST_KILL), 4);
	CU_ASSERT_EQUAL(snapshot_count(s2, LIST_ACCEPT), 0);
	CU_ASSERT_EQUAL(cidr_addr_parse("10.1.2.3", &a), 0);
	CU_ASSERT_TRUE(snapshot_match_client(s2, LIST_KILL, &a, NULL, 100, &m));
	CU_ASSERT_STRING_EQUAL(m.reason, "pushed");
	CU_ASSERT_EQUAL(cidr_addr_parse("10.9.9.9", &a), 0);
	CU_ASSERT_TRUE(snapshot_match_client(s2, LIST_KILL, &a, NULL, 100, &m));
	CU_ASSERT_STRING_EQUAL(m.reason, "base net");
	CU_ASSERT_FALSE(snapshot_match_client(s2, LIST_ACCEPT, &a, NULL, 100, &m));
	CU_ASSERT_EQUAL(cidr_addr_parse("192.0.2.1", &a), 0);
	CU_ASSERT_FALSE(snapshot_match_client(s2, LIST_KILL, &a, NULL, 100, &m));
	CU_ASSERT_EQUAL(mailaddr_parse("<joe@example.org>", &snd), 0);
	CU_ASSERT_TRUE(snapshot_match_sender(s2, LIST_KILL, &snd, 100, &m));
	CU_ASSERT_FALSE(snapshot_match_sender(s2, LIST_KILL, &snd, 600, &m));	/* expired */
	CU_ASSERT_EQUAL(mailaddr_parse("<x@spam.example>", &snd), 0);
	CU_ASSERT_TRUE(snapshot_match_sender(s2, LIST_KILL, &snd, 100, &m));
	snapshot_free(&s2);
	entry_vec_clear(&v);
	entry_vec_clear(&o);
}

/* country:XX entries: one row per lookup, over both layers of a snapshot */
static void
test_listset_country(void)
{
	static const struct {
		const char *name, *country;
		enum list_kind k;
		long long now;
		const char *key;	/* NULL: no match */
	} rows[] = {
		{ "listed country", "FR", LIST_KILL, 100, "country:FR" },
		{ "other country", "DE", LIST_KILL, 100, NULL },
		{ "unknown country", "", LIST_KILL, 100, NULL },
		{ "no country", NULL, LIST_KILL, 100, NULL },
		{ "lower case is not canonical", "fr", LIST_KILL, 100, NULL },
		{ "expired after the build", "CN", LIST_KILL, 600, NULL },
		{ "not yet expired", "CN", LIST_KILL, 100, "country:CN" },
		{ "pushed on top (overlay)", "RU", LIST_KILL, 100, "country:RU" },
		{ "accept list is its own", "CH", LIST_ACCEPT, 100, "country:CH" },
		{ "kill entry not in accept", "FR", LIST_ACCEPT, 100, NULL },
		{ "address entry is no country", "10", LIST_KILL, 100, NULL },
	};
	struct entry_vec kill = { 0 }, over = { 0 }, acc = { 0 };
	struct snapshot *s;
	struct listset_match m;

	add(&kill, "country:fr reason=geo");
	add(&kill, "country:CN expires=500");
	add(&kill, "10.0.0.0/8");
	add(&kill, "country:DE expires=50");	/* expired at build */
	add(&over, "country:RU");
	add(&acc, "country:ch");
	s = snapshot_new_overlay(listset_build(&kill, 100), listset_build(&acc, 100),
	    listset_build(&over, 100), NULL);
	entry_vec_clear(&kill);
	entry_vec_clear(&over);
	entry_vec_clear(&acc);
	CU_ASSERT_EQUAL(snapshot_count(s, LIST_KILL), 4);
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		int hit = snapshot_match_country(s, rows[i].k, rows[i].country, rows[i].now, &m);

		if (hit != (rows[i].key != NULL) || (hit && (strcmp(m.key, rows[i].key) != 0 ||
		    m.kind != ENTRY_COUNTRY))) {
			fprintf(stderr, "\n  %s: hit %d key %s\n", rows[i].name, hit, hit ? m.key : "-");
			CU_FAIL("country match differs");
		}
	}
	CU_ASSERT_TRUE(snapshot_match_country(s, LIST_KILL, "FR", 100, &m));
	CU_ASSERT_STRING_EQUAL(m.reason, "geo");
	snapshot_free(&s);
}

static CU_TestInfo tests[] = {
	{ "addresses, hosts, senders, expiry", test_listset_matching },
	{ "snapshot: additions on top of a shared list", test_snapshot_overlay },
	{ "empty lists and duplicate keys", test_listset_empty_and_duplicates },
	{ "country:XX entries (table)", test_listset_country },
	CU_TEST_INFO_NULL,
};

void
test_listset_register(void)
{
	unit_suite("listset", tests);
}
