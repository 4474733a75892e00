/*
 * bench-engine - engine verdicts per second and memory per list entry, with
 * 1,000,000 random kill-list CIDRs loaded. One thread (one core).
 *
 *   bench-engine [ENTRIES] [SECONDS]
 *
 * A "verdict" is one engine stage call (connect, MAIL or RCPT); each
 * simulated transaction makes three, from a random client address.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/conf.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "rules/engine.h"

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long
rss_kib(void)
{
	FILE *fp = fopen("/proc/self/statm", "r");
	long pages = 0, rss = 0;

	if (fp != NULL) {
		if (fscanf(fp, "%ld %ld", &pages, &rss) != 2)
			rss = 0;
		fclose(fp);
	}
	return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

static uint64_t rng = 88172645463325252ULL;

static uint32_t
rnd(void)
{
	rng ^= rng << 13;	/* xorshift64 */
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 16);
}

int
main(int argc, char **argv)
{
	size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000000;
	double secs = argc > 2 ? atof(argv[2]) : 3.0;
	struct entry_vec v = { 0 };
	struct conf *c = conf_new();
	struct policy *pol;
	const char *err;
	struct listset *kill, *accept;
	struct snapshot *snap;
	long rss0, rss1;
	double t0, t1;
	unsigned long tx = 0, refused = 0;

	log_open("bench-engine", 1);
	log_set_level(LOG_LVL_ERROR);
	if (conf_load_string(c, "bench", "mydomains = example.com\nrelay_networks = 192.0.2.0/24\n",
	    &err) < 0 || conf_finish(c, &err) < 0 || policy_new(c, &pol, &err) < 0) {
		fprintf(stderr, "bench: %s\n", err);
		return 1;
	}
	/* random IPv4 prefixes, lengths 20..32: a mix of hits and misses */
	v.v = xcalloc(n, sizeof(*v.v));
	v.cap = n;
	for (size_t i = 0; i < n; i++) {
		struct list_entry *e = &v.v[v.n++];
		unsigned len = 20 + rnd() % 13;
		uint32_t a = rnd() & (len == 32 ? 0xffffffffu : ~(0xffffffffu >> len));
		char text[40];

		snprintf(text, sizeof(text), "%u.%u.%u.%u/%u", a >> 24, (a >> 16) & 255,
		    (a >> 8) & 255, a & 255, len);
		if (listentry_parse_key(text, e, &err) < 0) {
			fprintf(stderr, "bench: %s: %s\n", text, err);
			return 1;
		}
	}
	rss0 = rss_kib();
	t0 = now_s();
	kill = listset_build(&v, (long long)time(NULL));
	t1 = now_s();
	rss1 = rss_kib();
	entry_vec_clear(&v);
	v = (struct entry_vec){ 0 };
	accept = listset_build(&v, 0);
	snap = snapshot_new(kill, accept);

	printf("engine: %zu random kill-list CIDRs (IPv4, /20../32)\n", n);
	printf("  snapshot build:      %.3f s\n", t1 - t0);
	printf("  memory per entry:    %.1f bytes (counted), %.1f bytes (RSS growth)\n",
	    (double)listset_memory(kill) / (double)n, (double)(rss1 - rss0) * 1024.0 / (double)n);

	{
		struct engine_session *s = engine_session_new(pol);
		double start = now_s(), end = start + secs, t;
		struct verdict vd;

		do {
			for (int k = 0; k < 1000; k++) {
				struct ipaddr a = { .family = 4, .v4 = rnd() };

				engine_connect(s, snap, &a, NULL, 1, &vd);
				engine_mail(s, snap, "<sender@example.org>", 32, NULL, 1, &vd);
				if (vd.action == VERDICT_REJECT) {
					refused++;
				} else {
					engine_rcpt(s, snap, "<user@example.com>", 28, 1, &vd);
					engine_abort(s);
				}
				tx++;
			}
			t = now_s();
		} while (t < end);
		printf("  transactions:        %.0f /s (%.1f%% refused by the kill list)\n",
		    (double)tx / (t - start), 100.0 * (double)refused / (double)tx);
		printf("  verdicts:            %.0f /s (connect + MAIL + RCPT calls, one core)\n",
		    (double)(tx * 3 - refused) / (t - start));
		engine_session_free(&s);
	}
	{
		/* the lookup alone */
		double start = now_s(), t;
		unsigned long lookups = 0, hits = 0;
		struct listset_match m;

		do {
			for (int k = 0; k < 10000; k++) {
				struct ipaddr a = { .family = 4, .v4 = rnd() };

				hits += listset_match_client(kill, &a, NULL, 1, &m);
			}
			lookups += 10000;
			t = now_s();
		} while (t < start + 1.0);
		printf("  address lookups:     %.0f /s (%.1f%% hit)\n", (double)lookups / (t - start),
		    100.0 * (double)hits / (double)lookups);
	}
	snapshot_free(&snap);
	policy_free(&pol);
	conf_free(&c);
	return 0;
}
