/* ratelimit: counting, windows, sharing through a store; policy overrides;
 * the engine's 452 4.7.1. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/conf.h"
#include "rules/engine.h"
#include "storage-adapter/ratelimit.h"
#include "tests/unit/unit.h"

static void
test_ratelimit_parse(void)
{
	static const struct { const char *in; unsigned limit, window; int ok; } t[] = {
		{ "200/1h", 200, 3600, 1 }, { "5/30s", 5, 30, 1 }, { "1/1d", 1, 86400, 1 },
		{ "10/600", 10, 600, 1 }, { "0/1h", 0, 0, 0 }, { "-1/1h", 0, 0, 0 },
		{ "200", 0, 0, 0 }, { "200/", 0, 0, 0 }, { "/1h", 0, 0, 0 }, { "200/1y", 0, 0, 0 },
		{ "200/0", 0, 0, 0 }, { "abc/1h", 0, 0, 0 }, { "200/60d", 0, 0, 0 },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		unsigned l = 0, w = 0;
		int rc = ratelimit_parse(t[i].in, &l, &w);

		CU_ASSERT_EQUAL(rc, t[i].ok ? 0 : -1);
		if (t[i].ok && (l != t[i].limit || w != t[i].window)) {
			fprintf(stderr, "\n  %s -> %u/%u\n", t[i].in, l, w);
			CU_FAIL("parse differs");
		}
	}
}

static void
test_ratelimit_counting_and_windows(void)
{
	struct ratelimit *rl = ratelimit_new();
	unsigned long total;

	for (int i = 1; i <= 3; i++) {
		CU_ASSERT_EQUAL(ratelimit_take(rl, "alice@example.com", 3, 60, 120, &total), 1);
		CU_ASSERT_EQUAL(total, (unsigned long)i);
	}
	CU_ASSERT_EQUAL(ratelimit_take(rl, "alice@example.com", 3, 60, 150, &total), 0);
	CU_ASSERT_EQUAL(total, 3);
	/* others count apart */
	CU_ASSERT_EQUAL(ratelimit_take(rl, "bob@example.com", 3, 60, 150, &total), 1);
	/* the next window starts afresh */
	CU_ASSERT_EQUAL(ratelimit_take(rl, "alice@example.com", 3, 60, 180, &total), 1);
	CU_ASSERT_EQUAL(total, 1);
	ratelimit_free(&rl);
	CU_ASSERT_PTR_NULL(rl);
}

static void
test_ratelimit_shared_totals(void)
{
	struct ratelimit *a = ratelimit_new(), *b = ratelimit_new();
	struct rate_delta *d;
	unsigned long total;
	size_t n;
	long long shared = 0;

	/* node a counts 4, syncs; node b counts 1, syncs: both see 5 */
	for (int i = 0; i < 4; i++)
		CU_ASSERT_EQUAL(ratelimit_take(a, "u@x", 5, 3600, 10, &total), 1);
	n = ratelimit_collect(a, &d, 10);
	CU_ASSERT_EQUAL_FATAL(n, 1);
	CU_ASSERT_EQUAL(d[0].delta, 4);
	shared += d[0].delta;
	d[0].total = shared;
	ratelimit_apply(a, d, n);
	ratelimit_deltas_free(d, n);
	CU_ASSERT_EQUAL(ratelimit_take(b, "u@x", 5, 3600, 11, &total), 1);
	n = ratelimit_collect(b, &d, 11);
	shared += d[0].delta;
	d[0].total = shared;
	ratelimit_apply(b, d, n);
	ratelimit_deltas_free(d, n);
	CU_ASSERT_EQUAL(ratelimit_take(b, "u@x", 5, 3600, 12, &total), 0);
	CU_ASSERT_EQUAL(total, 5);
	/* a learns the total at its next sync (delta 0) */
	n = ratelimit_collect(a, &d, 12);
	CU_ASSERT_EQUAL(d[0].delta, 0);
	d[0].total = shared;
	ratelimit_apply(a, d, n);
	ratelimit_deltas_free(d, n);
	CU_ASSERT_EQUAL(ratelimit_take(a, "u@x", 5, 3600, 12, &total), 0);
	/* a failed sync keeps the counts local, nothing is lost */
	CU_ASSERT_EQUAL(ratelimit_take(a, "v@x", 5, 3600, 12, &total), 1);
	n = ratelimit_collect(a, &d, 12);
	for (size_t i = 0; i < n; i++)
		d[i].total = -1;
	ratelimit_apply(a, d, n);
	ratelimit_deltas_free(d, n);
	CU_ASSERT_EQUAL(ratelimit_take(a, "v@x", 5, 3600, 12, &total), 1);
	CU_ASSERT_EQUAL(total, 2);
	ratelimit_free(&a);
	ratelimit_free(&b);
}

static struct policy *
pol(const char *text, const char **err_r)
{
	struct conf *c = conf_new();
	struct policy *p = NULL;
	const char *err = NULL;

	if (conf_load_string(c, "t", text, &err) < 0 || conf_finish(c, &err) < 0 ||
	    policy_new(c, &p, &err) < 0)
		p = NULL;
	*err_r = err;
	conf_free(&c);
	return p;
}

static void
test_policy_rate_overrides(void)
{
	const char *err;
	struct policy *p = pol("relay_rate_limit = 200/1h\nrelay_rate_limit_overrides = "
	    "Boss@Example.com:1000/1h @example.com:5000/1h @other.org:3/10m\n", &err);
	unsigned l, w;

	CU_ASSERT_PTR_NOT_NULL_FATAL(p);
	CU_ASSERT_TRUE(policy_rate_for(p, "boss@example.com", &l, &w));
	CU_ASSERT_EQUAL(l, 1000);
	CU_ASSERT_TRUE(policy_rate_for(p, "anyone@example.com", &l, &w));
	CU_ASSERT_EQUAL(l, 5000);
	CU_ASSERT_TRUE(policy_rate_for(p, "x@other.org", &l, &w));
	CU_ASSERT_EQUAL(l, 3);
	CU_ASSERT_EQUAL(w, 600);
	CU_ASSERT_TRUE(policy_rate_for(p, "x@third.net", &l, &w));
	CU_ASSERT_EQUAL(l, 200);
	CU_ASSERT_TRUE(policy_rate_for(p, NULL, &l, &w));
	CU_ASSERT_EQUAL(l, 200);
	policy_free(&p);

	p = pol("relay_rate_limit_overrides = @example.com:10/1h\n", &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(p);
	CU_ASSERT_FALSE(policy_rate_for(p, "x@third.net", &l, &w));
	CU_ASSERT_FALSE(policy_rate_for(p, NULL, &l, &w));
	policy_free(&p);

	CU_ASSERT_PTR_NULL(pol("relay_rate_limit = lots\n", &err));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "relay_rate_limit: \"lots\" is not COUNT/TIME"));
	CU_ASSERT_PTR_NULL(pol("relay_rate_limit_overrides = nobody:5/1h\n", &err));
	CU_ASSERT_PTR_NULL(pol("relay_rate_limit_overrides = a@b.example:5\n", &err));
}

static void
test_engine_rate_limit(void)
{
	const char *err;
	struct policy *p = pol("mydomains = example.com\nrelay_networks = 192.0.2.0/24\n"
	    "relay_rate_limit = 3/1h\n", &err);
	struct ratelimit *rl = ratelimit_new();
	struct entry_vec none = { 0 };
	struct snapshot *snap = snapshot_new(listset_build(&none, 0), listset_build(&none, 0));
	struct engine_session *s = engine_session_new(p);
	struct ipaddr a;
	struct verdict v;
	char rcpt[64];

	CU_ASSERT_PTR_NOT_NULL_FATAL(p);
	engine_session_set_ratelimit(s, rl);
	CU_ASSERT_EQUAL(cidr_addr_parse("192.0.2.7", &a), 0);
	engine_connect(s, snap, &a, NULL, 1000, &v);
	engine_mail(s, snap, "<a@example.com>", 30, NULL, 1000, &v);
	for (int i = 0; i < 3; i++) {
		snprintf(rcpt, sizeof(rcpt), "<r%d@other.org>", i);
		engine_rcpt(s, snap, rcpt, 30, 1000, &v);
		CU_ASSERT_EQUAL(v.action, VERDICT_CONTINUE);
	}
	/* local recipients never count */
	engine_rcpt(s, snap, "<u@example.com>", 30, 1000, &v);
	CU_ASSERT_EQUAL(v.action, VERDICT_CONTINUE);
	engine_rcpt(s, snap, "<r9@other.org>", 30, 1000, &v);
	CU_ASSERT_EQUAL(v.action, VERDICT_TEMPFAIL);
	CU_ASSERT_STRING_EQUAL(v.code, "452");
	CU_ASSERT_STRING_EQUAL(v.dsn, "4.7.1");
	CU_ASSERT_STRING_EQUAL(v.tag, "rate-limit");
	CU_ASSERT_PTR_NOT_NULL(strstr(v.text, "at most 3 recipients per 1h"));
	engine_session_free(&s);
	snapshot_free(&snap);
	ratelimit_free(&rl);
	policy_free(&p);
}

/*
 * A sender who knows the table's hash aims keys at the victim's stripe and
 * home slot: 16 of them fill its probe window and evict the victim's
 * counter, whose next event then starts a fresh count under the limit. The
 * table used unkeyed FNV-1a (computed here as an attacker would); with a
 * keyed hash these keys land anywhere and the victim stays limited.
 */
static uint32_t
fnv1a_window(const char *s, unsigned window)
{
	uint32_t h = 2166136261u ^ window;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

static void
test_ratelimit_hostile_keys(void)
{
	struct ratelimit *rl = ratelimit_new();
	const char *victim = "victim@example.com";
	uint32_t target = fnv1a_window(victim, 60) & ((1u << 18) - 1);	/* 64 stripes x 4096 slots */
	unsigned long total;
	unsigned found = 0;
	char who[64];

	CU_ASSERT_EQUAL(ratelimit_take(rl, victim, 1, 60, 120, &total), 1);
	CU_ASSERT_EQUAL(ratelimit_take(rl, victim, 1, 60, 120, &total), 0);
	for (unsigned i = 0; found < 16 && i < 50000000u; i++) {
		snprintf(who, sizeof(who), "s%u@evil.example", i);
		if ((fnv1a_window(who, 60) & ((1u << 18) - 1)) != target)
			continue;
		(void)ratelimit_take(rl, who, 1, 60, 120, &total);
		found++;
	}
	CU_ASSERT_EQUAL_FATAL(found, 16);
	/* still over its limit in this window */
	CU_ASSERT_EQUAL(ratelimit_take(rl, victim, 1, 60, 120, &total), 0);
	ratelimit_free(&rl);
}

static CU_TestInfo tests[] = {
	{ "COUNT/TIME parsing", test_ratelimit_parse },
	{ "counting and windows", test_ratelimit_counting_and_windows },
	{ "totals shared between nodes", test_ratelimit_shared_totals },
	{ "policy: user over domain over server", test_policy_rate_overrides },
	{ "engine: 452 4.7.1 past the limit", test_engine_rate_limit },
	{ "keys aimed at one bucket do not evict a limited sender", test_ratelimit_hostile_keys },
	CU_TEST_INFO_NULL,
};

void
test_ratelimit_register(void)
{
	unit_suite("ratelimit", tests);
}
