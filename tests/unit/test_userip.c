/* userip: sessions per (user, client address) for mail_max_userip_connections,
 * table-driven scripts, then a churn against a naive counter. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service/userip.h"
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
 * Steps: "+USER ADDR MAX" a login that must be let in, "!USER ADDR MAX" one
 * that must be refused, "-USER ADDR" a session ends, "=USER ADDR N" the count.
 */
static const struct {
	const char *name;
	const char *steps[16];
} scripts[] = {
	{ "the max-th session is let in, one more is not",
	  { "+a@x 192.0.2.1 2", "+a@x 192.0.2.1 2", "!a@x 192.0.2.1 2", "=a@x 192.0.2.1 2" } },
	{ "another address of the same user counts apart",
	  { "+a@x 192.0.2.1 1", "+a@x 192.0.2.2 1", "!a@x 192.0.2.1 1", "=a@x 192.0.2.2 1" } },
	{ "another user from the same address counts apart",
	  { "+a@x 192.0.2.1 1", "+b@x 192.0.2.1 1", "=b@x 192.0.2.1 1", "=a@x 192.0.2.1 1" } },
	{ "a session that ends makes room",
	  { "+a@x 2001:db8::1 1", "!a@x 2001:db8::1 1", "-a@x 2001:db8::1", "+a@x 2001:db8::1 1" } },
	{ "max 0 is no limit",
	  { "+a@x 192.0.2.1 0", "+a@x 192.0.2.1 0", "+a@x 192.0.2.1 0", "=a@x 192.0.2.1 3" } },
	{ "IPv4 and IPv6 with the same bits are apart",
	  { "+a@x 0.0.0.1 1", "+a@x ::1 1", "=a@x 0.0.0.1 1" } },
	{ "a pair gone to 0 is forgotten",
	  { "+a@x 192.0.2.9 5", "-a@x 192.0.2.9", "=a@x 192.0.2.9 0" } },
};

static void
test_userip_scripts(void)
{
	for (size_t i = 0; i < sizeof(scripts) / sizeof(scripts[0]); i++) {
		struct userip *u = userip_new();

		for (size_t k = 0; scripts[i].steps[k] != NULL; k++) {
			const char *st = scripts[i].steps[k];
			char user[64], a[64];
			unsigned n = 0, before;
			int ok;

			if (sscanf(st + 1, "%63s %63s %u", user, a, &n) < 2)
				abort();
			struct ipaddr ad = addr(a);

			switch (st[0]) {
			case '+':
			case '!':
				ok = userip_acquire(u, user, &ad, n, &before);
				if (ok != (st[0] == '+'))
					fprintf(stderr, "%s: step %zu (%s)\n", scripts[i].name, k, st);
				CU_ASSERT_EQUAL(ok, st[0] == '+');
				break;
			case '-':
				userip_release(u, user, &ad);
				break;
			case '=':
				if (userip_count(u, user, &ad) != n)
					fprintf(stderr, "%s: step %zu (%s): %u\n", scripts[i].name, k, st,
					    userip_count(u, user, &ad));
				CU_ASSERT_EQUAL(userip_count(u, user, &ad), n);
				break;
			}
		}
		userip_free(&u);
		CU_ASSERT_PTR_NULL(u);
	}
}

/* many pairs in and out (the table grows): every count as a naive one says */
static void
test_userip_churn(void)
{
	enum { USERS = 50, ADDRS = 40 };
	static unsigned naive[USERS][ADDRS];
	struct userip *u = userip_new();
	unsigned seed = 7;

	memset(naive, 0, sizeof(naive));
	for (int round = 0; round < 20000; round++) {
		unsigned r = (seed = seed * 1103515245u + 12345u) >> 8;
		unsigned ui = r % USERS, ai = (r / USERS) % ADDRS, before;
		char user[32];
		struct ipaddr a;

		snprintf(user, sizeof(user), "u%u@example.com", ui);
		memset(&a, 0, sizeof(a));
		a.family = 4;
		a.v4 = 0xc0000200u + ai;
		if ((r >> 20) % 3 != 0 || naive[ui][ai] == 0) {
			int ok = userip_acquire(u, user, &a, 4, &before);

			CU_ASSERT_EQUAL(before, naive[ui][ai]);
			CU_ASSERT_EQUAL(ok, naive[ui][ai] < 4);
			if (ok)
				naive[ui][ai]++;
		} else {
			userip_release(u, user, &a);
			naive[ui][ai]--;
		}
	}
	for (unsigned ui = 0; ui < USERS; ui++)
		for (unsigned ai = 0; ai < ADDRS; ai++) {
			char user[32];
			struct ipaddr a;

			snprintf(user, sizeof(user), "u%u@example.com", ui);
			memset(&a, 0, sizeof(a));
			a.family = 4;
			a.v4 = 0xc0000200u + ai;
			CU_ASSERT_EQUAL(userip_count(u, user, &a), naive[ui][ai]);
		}
	userip_free(&u);
}

static CU_TestInfo tests[] = {
	{ "scripts", test_userip_scripts },
	{ "churn against a naive counter", test_userip_churn },
	{ NULL, NULL },
};

void
test_userip_register(void)
{
	unit_suite("userip", tests);
}
