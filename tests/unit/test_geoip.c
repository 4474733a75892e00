/*
 * geoip: lookups by address family, the reload rules (a file settles for one
 * poll; a bad file is logged once and kept out; the old database serves on),
 * and lookups on other threads while the database is swapped under them.
 * The .mmdb files are written with scripts/geoip-mmdb.pl (Debian's
 * libmaxmind-db-writer-perl); without it these tests say so and pass.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/xmalloc.h"
#include "rules/geoip.h"
#include "tests/unit/unit.h"

static char *dir;

/* path/NAME.mmdb from "LOW,HIGH,CC" lines; NULL when the writer is missing */
static char *
mmdb(const char *name, const char *ranges)
{
	char *txt = xasprintf("%s/%s.txt", dir, name);
	char *out = xasprintf("%s/%s.mmdb", dir, name);
	char *cmd = xasprintf("perl scripts/geoip-mmdb.pl %s %s 2>/dev/null", out, txt);
	FILE *fp = fopen(txt, "w");
	int rc;

	CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
	fputs(ranges, fp);
	fclose(fp);
	rc = system(cmd);
	free(cmd);
	free(txt);
	if (rc != 0) {
		free(out);
		return NULL;
	}
	return out;
}

/* cp src dst.tmp && mv dst.tmp dst: a replacement by rename */
static void
replace(const char *src, const char *dst)
{
	char *cmd = xasprintf("cp %s %s.tmp && mv %s.tmp %s", src, dst, dst, dst);

	CU_ASSERT_EQUAL(system(cmd), 0);
	free(cmd);
}

static int
setup(void)
{
	if (access("scripts/geoip-mmdb.pl", R_OK) != 0 ||
	    system("perl -MMaxMind::DB::Writer::Tree -e1 2>/dev/null") != 0) {
		fprintf(stderr, "\n  geoip: no libmaxmind-db-writer-perl (or not run from the "
		    "repository root): skipped\n");
		return 0;
	}
	dir = unit_tmpdir();
	return 1;
}

static void
teardown(void)
{
	char *cmd = xasprintf("rm -rf %s", dir);

	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
	free(cmd);
	free(dir);
	dir = NULL;
}

static const char RANGES_A[] =
	"127.0.0.5,127.0.0.5,XX\n"
	"2130706438,2130706438,YY\n"	/* 127.0.0.6 as tor writes IPv4 */
	"2001:db8::,2001:db8::ffff,ZZ\n"
	"192.0.2.0,192.0.2.255,??\n";	/* unknown: not in the database */

static void
test_geoip_lookups(void)
{
	static const struct { const char *addr, *cc; } rows[] = {
		{ "127.0.0.5", "XX" },
		{ "::ffff:127.0.0.5", "XX" },	/* v4-mapped is the IPv4 client */
		{ "127.0.0.6", "YY" },
		{ "2001:db8::1", "ZZ" },
		{ "2001:db8::1:0", NULL },	/* just past the range */
		{ "192.0.2.7", NULL },		/* "??" */
		{ "10.1.2.3", NULL },
		{ "::1", NULL },
	};
	struct geoip *g;
	const char *err;
	char *a;

	if (!setup())
		return;
	a = mmdb("a", RANGES_A);
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	CU_ASSERT_EQUAL_FATAL(geoip_open(a, "country.iso_code", &g, &err), 0);
	CU_ASSERT_STRING_EQUAL(geoip_path(g), a);
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		struct ipaddr ip;
		char cc[3] = "";
		int found;

		CU_ASSERT_EQUAL_FATAL(cidr_addr_parse(rows[i].addr, &ip), 0);
		found = geoip_lookup(g, &ip, cc);
		if (found != (rows[i].cc != NULL) || (found && strcmp(cc, rows[i].cc) != 0)) {
			fprintf(stderr, "\n  %s: found %d cc %s\n", rows[i].addr, found, cc);
			CU_FAIL("geoip lookup differs");
		}
	}
	geoip_free(&g);
	CU_ASSERT_PTR_NULL(g);
	/* a field the records do not have: nothing found, no error */
	CU_ASSERT_EQUAL_FATAL(geoip_open(a, "registered_country.iso_code", &g, &err), 0);
	{
		struct ipaddr ip;
		char cc[3];

		CU_ASSERT_EQUAL(cidr_addr_parse("127.0.0.5", &ip), 0);
		CU_ASSERT_FALSE(geoip_lookup(g, &ip, cc));
	}
	geoip_free(&g);
	free(a);
	teardown();
}

static void
test_geoip_reload_rules(void)
{
	struct geoip *g;
	struct ipaddr ip;
	const char *err = NULL;
	char cc[3], *a, *b, *live, *junk;
	FILE *fp;

	if (!setup())
		return;
	a = mmdb("a", RANGES_A);
	b = mmdb("b", "127.0.0.5,127.0.0.5,QQ\n");
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	CU_ASSERT_PTR_NOT_NULL_FATAL(b);
	live = xasprintf("%s/live.mmdb", dir);
	junk = xasprintf("%s/junk", dir);
	fp = fopen(junk, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
	fputs("not a database\n", fp);
	fclose(fp);
	CU_ASSERT_EQUAL(cidr_addr_parse("127.0.0.5", &ip), 0);

	replace(a, live);
	CU_ASSERT_EQUAL_FATAL(geoip_open(live, "country.iso_code", &g, &err), 0);
	CU_ASSERT_EQUAL(geoip_reload_if_changed(g, &err), 0);	/* nothing changed */
	replace(b, live);
	CU_ASSERT_EQUAL(geoip_reload_if_changed(g, &err), 0);	/* seen; settling */
	CU_ASSERT_TRUE(geoip_lookup(g, &ip, cc) && strcmp(cc, "XX") == 0);
	CU_ASSERT_EQUAL(geoip_reload_if_changed(g, &err), 1);	/* unchanged since: loaded */
	CU_ASSERT_TRUE(geoip_lookup(g, &ip, cc) && strcmp(cc, "QQ") == 0);
	CU_ASSERT_EQUAL(geoip_reload_if_changed(g, &err), 0);

	/* a bad file: one error naming it, not tried again, the old one serves */
	replace(junk, live);
	CU_ASSERT_EQUAL(geoip_reload_if_changed(g, &err), 0);
	err = NULL;
	CU_ASSERT_EQUAL(geoip_reload_if_changed(g, &err), -1);
	CU_ASSERT_PTR_NOT_NULL_FATAL(err);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, live));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "not a MaxMind DB file"));
	CU_ASSERT_EQUAL(geoip_reload_if_changed(g, &err), 0);
	CU_ASSERT_TRUE(geoip_lookup(g, &ip, cc) && strcmp(cc, "QQ") == 0);

	/* gone for a moment: nothing said; for longer: said once; the old
	 * one serves all along; back: loaded */
	CU_ASSERT_EQUAL(unlink(live), 0);
	CU_ASSERT_EQUAL(geoip_reload_if_changed(g, &err), 0);
	err = NULL;
	CU_ASSERT_EQUAL(geoip_reload_if_changed(g, &err), -1);
	CU_ASSERT_PTR_NOT_NULL_FATAL(err);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "No such file or directory"));
	CU_ASSERT_EQUAL(geoip_reload_if_changed(g, &err), 0);
	CU_ASSERT_TRUE(geoip_lookup(g, &ip, cc) && strcmp(cc, "QQ") == 0);
	replace(a, live);
	CU_ASSERT_EQUAL(geoip_reload_if_changed(g, &err), 0);
	CU_ASSERT_EQUAL(geoip_reload_if_changed(g, &err), 1);
	CU_ASSERT_TRUE(geoip_lookup(g, &ip, cc) && strcmp(cc, "XX") == 0);
	geoip_free(&g);

	/* errors at open name the file or the field */
	CU_ASSERT_EQUAL(geoip_open(junk, "country.iso_code", &g, &err), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, junk));
	CU_ASSERT_EQUAL(geoip_open(a, "country.", &g, &err), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "geoip_country_field"));
	CU_ASSERT_EQUAL(geoip_open(a, "", &g, &err), -1);
	CU_ASSERT_EQUAL(geoip_open(a, "a.b.c.d.e.f.g.h.i", &g, &err), -1);
	CU_ASSERT_EQUAL(geoip_open(a, "a.b.c.d.e.f.g.h", &g, &err), 0);
	geoip_free(&g);
	free(a);
	free(b);
	free(live);
	free(junk);
	teardown();
}

struct reader {
	struct geoip *g;
	atomic_int *stop;
	unsigned long n, bad;
};

static void *
read_loop(void *arg)
{
	struct reader *r = arg;
	struct ipaddr ip;
	char cc[3];

	if (cidr_addr_parse("127.0.0.5", &ip) < 0)
		abort();
	while (!atomic_load(r->stop)) {
		if (!geoip_lookup(r->g, &ip, cc) || (strcmp(cc, "XX") != 0 && strcmp(cc, "QQ") != 0))
			r->bad++;
		r->n++;
	}
	return NULL;
}

/* ASan sees any read of a closed (unmapped, freed) database */
static void
test_geoip_swap_under_readers(void)
{
	struct reader r[2];
	pthread_t t[2];
	atomic_int stop;
	struct geoip *g;
	const char *err;
	char *a, *b, *live;
	int swaps = 0;

	if (!setup())
		return;
	a = mmdb("a", RANGES_A);
	b = mmdb("b", "127.0.0.5,127.0.0.5,QQ\n");
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	CU_ASSERT_PTR_NOT_NULL_FATAL(b);
	live = xasprintf("%s/live.mmdb", dir);
	replace(a, live);
	CU_ASSERT_EQUAL_FATAL(geoip_open(live, "country.iso_code", &g, &err), 0);
	atomic_init(&stop, 0);
	for (int i = 0; i < 2; i++) {
		r[i] = (struct reader){ g, &stop, 0, 0 };
		CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, read_loop, &r[i]), 0);
	}
	for (int i = 0; i < 20; i++) {
		replace(i % 2 ? a : b, live);
		while (geoip_reload_if_changed(g, &err) == 0)
			;
		swaps++;
	}
	atomic_store(&stop, 1);
	for (int i = 0; i < 2; i++) {
		pthread_join(t[i], NULL);
		CU_ASSERT(r[i].n > 0);
		CU_ASSERT_EQUAL(r[i].bad, 0);
	}
	CU_ASSERT_EQUAL(swaps, 20);
	geoip_free(&g);
	free(a);
	free(b);
	free(live);
	teardown();
}

static CU_TestInfo tests[] = {
	{ "lookups: IPv4, v4-mapped, IPv6, unknown (table)", test_geoip_lookups },
	{ "reload: settle, bad file kept out, file gone", test_geoip_reload_rules },
	{ "database swapped under reading threads", test_geoip_swap_under_readers },
	CU_TEST_INFO_NULL,
};

void
test_geoip_register(void)
{
	unit_suite("geoip", tests);
}
