/*
 * geoip-bench - GeoIP country lookups per second and heap allocations per
 * lookup, through geoip_lookup() (what engine_connect() calls).
 *
 *   geoip-bench FILE.mmdb [SECONDS] [THREADS]
 *
 * Random public IPv4 addresses, random IPv6 addresses in 2000::/4, then
 * IPv4 again on THREADS threads at once (default 2). malloc, calloc,
 * realloc and free are interposed here and counted while the lookups run:
 * the hot path must not allocate (0 expected).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/cidr.h"
#include "rules/geoip.h"

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);

static atomic_int counting;
static atomic_ulong nalloc, nbytes;

void *
malloc(size_t n)
{
	if (atomic_load_explicit(&counting, memory_order_relaxed)) {
		atomic_fetch_add(&nalloc, 1);
		atomic_fetch_add(&nbytes, n);
	}
	return __libc_malloc(n);
}

void *
calloc(size_t m, size_t n)
{
	if (atomic_load_explicit(&counting, memory_order_relaxed)) {
		atomic_fetch_add(&nalloc, 1);
		atomic_fetch_add(&nbytes, m * n);
	}
	return __libc_calloc(m, n);
}

void *
realloc(void *p, size_t n)
{
	if (atomic_load_explicit(&counting, memory_order_relaxed)) {
		atomic_fetch_add(&nalloc, 1);
		atomic_fetch_add(&nbytes, n);
	}
	return __libc_realloc(p, n);
}

void
free(void *p)
{
	__libc_free(p);
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t
xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

struct run {
	struct geoip *g;
	int v6;
	double secs;
	uint64_t seed;
	unsigned long lookups, found;
};

static void *
run_lookups(void *arg)
{
	struct run *r = arg;
	struct ipaddr a;
	char cc[3];
	double end = now_s() + r->secs;

	memset(&a, 0, sizeof(a));
	while (now_s() < end) {
		for (int i = 0; i < 4096; i++) {
			uint64_t x = xorshift(&r->seed);

			if (r->v6) {
				a.family = 6;
				a.hi = (x & 0x0fffffffffffffffULL) | 0x2000000000000000ULL;
				a.lo = xorshift(&r->seed);
			} else {
				a.family = 4;
				a.v4 = (uint32_t)(x >> 20);
				if ((a.v4 >> 24) == 0 || (a.v4 >> 24) >= 224 || (a.v4 >> 24) == 127 ||
				    (a.v4 >> 24) == 10)
					a.v4 ^= 0x40000000;	/* keep to public space */
			}
			r->found += (unsigned long)geoip_lookup(r->g, &a, cc);
			r->lookups++;
		}
	}
	return NULL;
}

static void
measure(struct geoip *g, const char *what, int v6, int threads, double secs)
{
	struct run r[16];
	pthread_t t[16];
	unsigned long lookups = 0, found = 0, allocs, bytes;

	memset(r, 0, sizeof(r));
	atomic_store(&nalloc, 0);
	atomic_store(&nbytes, 0);
	for (int i = 0; i < threads; i++) {
		r[i].g = g;
		r[i].v6 = v6;
		r[i].secs = secs;
		r[i].seed = 88172645463325252ULL + (uint64_t)i * 7919;
	}
	/* threads are made before counting starts: their stacks are no lookup's */
	if (threads == 1) {
		atomic_store(&counting, 1);
		run_lookups(&r[0]);
		atomic_store(&counting, 0);
	} else {
		for (int i = 0; i < threads; i++)
			if (pthread_create(&t[i], NULL, run_lookups, &r[i]) != 0) {
				fprintf(stderr, "geoip-bench: pthread_create failed\n");
				exit(1);
			}
		atomic_store(&counting, 1);
		for (int i = 0; i < threads; i++)
			pthread_join(t[i], NULL);
		atomic_store(&counting, 0);
	}
	allocs = atomic_load(&nalloc);
	bytes = atomic_load(&nbytes);
	for (int i = 0; i < threads; i++) {
		lookups += r[i].lookups;
		found += r[i].found;
	}
	printf("  %-26s %d thread%s: %10.0f lookups/s  (%4.1f%% found)  "
	    "%.3f allocations, %.3f bytes per lookup\n", what, threads, threads > 1 ? "s" : " ",
	    (double)lookups / secs, 100.0 * (double)found / (double)(lookups ? lookups : 1),
	    (double)allocs / (double)(lookups ? lookups : 1),
	    (double)bytes / (double)(lookups ? lookups : 1));
}

int
main(int argc, char **argv)
{
	struct geoip *g;
	const char *err;
	double secs = argc > 2 ? atof(argv[2]) : 2.0;
	int threads = argc > 3 ? atoi(argv[3]) : 2;
	double t0;

	if (argc < 2) {
		fprintf(stderr, "usage: geoip-bench FILE.mmdb [SECONDS] [THREADS]\n");
		return 2;
	}
	if (threads < 1 || threads > 16)
		threads = 2;
	t0 = now_s();
	if (geoip_open(argv[1], "country.iso_code", &g, &err) < 0) {
		fprintf(stderr, "geoip-bench: %s\n", err);
		return 1;
	}
	printf("geoip-bench: %s opened in %.1f ms\n", argv[1], (now_s() - t0) * 1000);
	{	/* the counter must see an allocation, or its 0 means nothing */
		void *volatile p;

		atomic_store(&counting, 1);
		p = malloc(16);
		atomic_store(&counting, 0);
		free(p);
		if (atomic_load(&nalloc) != 1) {
			fprintf(stderr, "geoip-bench: malloc is not interposed; cannot count\n");
			return 1;
		}
	}
	{	/* fault the mapped file in first: a cold page cache is not the lookup */
		struct run w = { g, 0, 0.5, 12345, 0, 0 };

		run_lookups(&w);
	}
	measure(g, "random public IPv4", 0, 1, secs);
	measure(g, "random IPv6 in 2000::/4", 1, 1, secs);
	measure(g, "random public IPv4", 0, threads, secs);
	geoip_free(&g);
	return 0;
}
