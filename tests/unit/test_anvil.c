/* anvil: per-address connection counts (IPv6 per /64) and rates, table-driven,
 * then a random churn checked against a naive counter. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service/anvil.h"
#include "tests/unit/unit.h"

static struct ipaddr
addr(const char *s)
{
	struct ipaddr a;

	memset(&a, 0, sizeof(a));
	if (cidr_addr_parse(s, &a) < 0) {
		fprintf(stderr, "bad test address %s\n", s);
		abort();
	}
	return a;
}

/*
 * A script is a list of steps: "+ADDR" connect, "-ADDR" disconnect,
 * "=ADDR N" assert the count, "tN" set the clock, "rADDR N" assert the rate,
 * "x" expire, "sN" assert the size.
 */
static const struct {
	const char *name;
	const char *steps[40];
} scripts[] = {
	{ "one address counts up and down",
	  { "+192.0.2.1", "+192.0.2.1", "+192.0.2.1", "=192.0.2.1 3", "-192.0.2.1", "=192.0.2.1 2",
	    "-192.0.2.1", "-192.0.2.1", "=192.0.2.1 0", "s1", "t160", "x", "s0" } },
	{ "addresses equal in their low 10 bits are apart",
	  { "+10.0.0.1", "+10.0.4.1", "+10.0.8.1", "+10.0.8.1", "=10.0.0.1 1", "=10.0.4.1 1",
	    "=10.0.8.1 2", "s3" } },
	{ "IPv6 counts per /64",
	  { "+2001:db8:1:2::1", "+2001:db8:1:2:ffff::9", "+2001:db8:1:3::1",
	    "=2001:db8:1:2::77 2", "=2001:db8:1:3::1 1", "s2" } },
	{ "IPv4 and IPv6 with the same bits are apart",
	  { "+0.0.0.1", "+::1", "=0.0.0.1 1", "=::1 1", "s2" } },
	{ "a disconnect of an address never seen changes nothing",
	  { "+192.0.2.7", "-192.0.2.8", "=192.0.2.7 1", "=192.0.2.8 0", "s1" } },
	{ "the rate counts connections in the window",
	  { "t100", "+192.0.2.1", "-192.0.2.1", "+192.0.2.1", "-192.0.2.1", "r192.0.2.1 2",
	    "s1", "t159", "r192.0.2.1 2", "t160", "r192.0.2.1 0", "x", "s0" } },
	{ "a new window starts at the first connection after the last",
	  { "t100", "+192.0.2.1", "t170", "+192.0.2.1", "r192.0.2.1 1", "=192.0.2.1 2" } },
	{ "an address with open connections is never expired",
	  { "t100", "+192.0.2.1", "t1000", "x", "=192.0.2.1 1", "s1" } },
};

static void
run_script(struct anvil *a, const char *const *steps, const char *name)
{
	time_t now = 100;

	for (size_t i = 0; i < 40 && steps[i] != NULL; i++) {
		const char *s = steps[i];
		char text[80];
		unsigned want = 0, got = 0;
		int check = 0;

		if (s[0] == 't') {
			now = atol(s + 1);
			continue;
		}
		if (s[0] == 'x') {
			anvil_expire(a, now);
			continue;
		}
		if (s[0] == 's') {
			want = (unsigned)atoi(s + 1);
			got = (unsigned)anvil_size(a);
			check = 1;
		} else {
			snprintf(text, sizeof(text), "%s", s + 1);
			text[strcspn(text, " ")] = '\0';
			if (strchr(s, ' ') != NULL)
				want = (unsigned)atoi(strchr(s, ' ') + 1);
			struct ipaddr ad = addr(text);

			if (s[0] == '+')
				anvil_connect(a, &ad, now);
			else if (s[0] == '-')
				(void)anvil_disconnect(a, &ad, now);
			else if (s[0] == '=') {
				got = anvil_count(a, &ad);
				check = 1;
			} else if (s[0] == 'r') {
				got = anvil_rate(a, &ad, now);
				check = 1;
			}
		}
		if (check && got != want) {
			fprintf(stderr, "\n  %s: step %zu \"%s\": got %u\n", name, i, s, got);
			CU_FAIL("anvil script");
		}
	}
}

static void
test_anvil_scripts(void)
{
	for (size_t i = 0; i < sizeof(scripts) / sizeof(scripts[0]); i++) {
		struct anvil *a = anvil_new(60);

		run_script(a, scripts[i].steps, scripts[i].name);
		anvil_free(&a);
		CU_ASSERT_PTR_NULL(a);
	}
}

/* the old table's failure: 60 connections from one address, others churning */
static void
test_anvil_no_undercount_under_churn(void)
{
	struct anvil *a = anvil_new(0);
	struct ipaddr one = addr("127.0.0.1");

	for (unsigned i = 0; i < 60; i++) {
		char t[32];
		struct ipaddr o;

		/* neighbours come and go around every connection of ours */
		for (unsigned j = 0; j < 50; j++) {
			snprintf(t, sizeof(t), "127.%u.%u.%u", (i * 50 + j) % 250, j, i % 250);
			o = addr(t);
			anvil_connect(a, &o, 0);
		}
		CU_ASSERT_EQUAL(anvil_connect(a, &one, 0), i + 1);
		for (unsigned j = 0; j < 50; j++) {
			snprintf(t, sizeof(t), "127.%u.%u.%u", (i * 50 + j) % 250, j, i % 250);
			o = addr(t);
			CU_ASSERT_EQUAL(anvil_disconnect(a, &o, 0), 0);
		}
	}
	CU_ASSERT_EQUAL(anvil_count(a, &one), 60);
	CU_ASSERT_EQUAL(anvil_size(a), 1);
	anvil_free(&a);
}

/* random churn against a naive list */
#define NADDR 700
struct naive { struct ipaddr a; unsigned count, win_n; time_t win_start; int seen; };

static unsigned
naive_rate(const struct naive *n, time_t now, unsigned window)
{
	return n->seen && now - n->win_start < (time_t)window ? n->win_n : 0;
}

static void
test_anvil_random_churn(void)
{
	static struct naive nv[NADDR];
	const unsigned window = 30;
	struct anvil *a = anvil_new(window);
	time_t now = 1000;
	unsigned seed = 12345, bad = 0;

	memset(nv, 0, sizeof(nv));
	for (size_t i = 0; i < NADDR; i++) {
		char t[64];

		if (i % 3 == 0)		/* one /64 each */
			snprintf(t, sizeof(t), "2001:db8:%zx:%zx::%zx", i / 256, i % 256, i);
		else
			snprintf(t, sizeof(t), "%zu.%zu.0.%zu", 1 + i % 200, i / 200, i % 7);
		nv[i].a = addr(t);
	}
	for (unsigned step = 0; step < 200000 && bad < 5; step++) {
		unsigned r = (unsigned)rand_r(&seed);
		/* few busy addresses, many rare ones */
		size_t i = (r >> 8) % 8 == 0 ? (r >> 12) % NADDR : (r >> 12) % 40;
		struct naive *n = &nv[i];

		switch (r % 16) {
		case 0:
			now += (r >> 4) % 7;
			break;
		case 1:
			anvil_expire(a, now);
			{
				size_t live = 0;

				for (size_t k = 0; k < NADDR; k++)
					live += nv[k].count > 0 || naive_rate(&nv[k], now, window) > 0;
				if (live != anvil_size(a)) {
					fprintf(stderr, "\n  step %u: size %zu, naive %zu\n", step, anvil_size(a), live);
					bad++;
				}
			}
			break;
		case 2: case 3: case 4: case 5: case 6: case 7: case 8:
			if (!n->seen || now - n->win_start >= (time_t)window) {
				n->win_start = now;
				n->win_n = 0;
			}
			n->seen = 1;
			n->win_n++;
			if (anvil_connect(a, &n->a, now) != ++n->count) {
				fprintf(stderr, "\n  step %u: connect count differs\n", step);
				bad++;
			}
			break;
		default:
			if ((anvil_disconnect(a, &n->a, now) == 0) != (n->count > 0)) {
				fprintf(stderr, "\n  step %u: disconnect differs\n", step);
				bad++;
			}
			if (n->count > 0)
				n->count--;
			break;
		}
		if (step % 997 == 0)
			for (size_t k = 0; k < NADDR; k++)
				if (anvil_count(a, &nv[k].a) != nv[k].count ||
				    anvil_rate(a, &nv[k].a, now) != naive_rate(&nv[k], now, window)) {
					fprintf(stderr, "\n  step %u addr %zu: count %u/%u rate %u/%u\n", step, k,
					    anvil_count(a, &nv[k].a), nv[k].count,
					    anvil_rate(a, &nv[k].a, now), naive_rate(&nv[k], now, window));
					bad++;
					break;
				}
	}
	CU_ASSERT_EQUAL(bad, 0);
	/* everything closed and expired: empty again */
	for (size_t k = 0; k < NADDR; k++)
		while (nv[k].count-- > 0)
			CU_ASSERT_EQUAL(anvil_disconnect(a, &nv[k].a, now), 0);
	anvil_expire(a, now + window);
	CU_ASSERT_EQUAL(anvil_size(a), 0);
	anvil_free(&a);
}

static CU_TestInfo tests[] = {
	{ "scripts", test_anvil_scripts },
	{ "no undercount under churn", test_anvil_no_undercount_under_churn },
	{ "random churn against a naive counter", test_anvil_random_churn },
	{ NULL, NULL },
};

void
test_anvil_register(void)
{
	unit_suite("anvil", tests);
}
