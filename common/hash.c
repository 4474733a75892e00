/*
 * hash - SipHash-1-3 and a string-keyed index set.
 *
 *   hash_siphash13()       64-bit SipHash-1-3 under a 128-bit key
 *   hash_key_random()      a fresh secret key
 *   hash_process_key()     the process's secret key (drawn once)
 *   hash_mem/str/u64()     hash under the process key
 *   hashidx_*()            open-addressing set of indices, keyed by string
 *
 * SipHash-1-3 (Aumasson & Bernstein; the variant Rust and Python use for
 * their tables): fast on short keys and keyed, so a peer that does not know
 * the key cannot pick colliding inputs (FNV-1a, used here before, can be
 * aimed at one bucket by anyone). Never blocks after the first key draw;
 * thread-safe.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "common/hash.h"
#include "common/log.h"
#include "common/xmalloc.h"

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

#define SIPROUND do { \
	v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
	v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2; \
	v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0; \
	v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); \
} while (0)

static uint64_t
load_le64(const unsigned char *p)
{
	return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 |
	    (uint64_t)p[3] << 24 | (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 |
	    (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

uint64_t
hash_siphash13(const struct hash_key *key, const void *data, size_t n)
{
	const unsigned char *p = data, *end = p + (n & ~(size_t)7);
	uint64_t v0 = 0x736f6d6570736575ull ^ key->k0, v1 = 0x646f72616e646f6dull ^ key->k1;
	uint64_t v2 = 0x6c7967656e657261ull ^ key->k0, v3 = 0x7465646279746573ull ^ key->k1;
	uint64_t b = (uint64_t)n << 56, m;

	for (; p != end; p += 8) {
		m = load_le64(p);
		v3 ^= m;
		SIPROUND;
		v0 ^= m;
	}
	switch (n & 7) {
	case 7: b |= (uint64_t)p[6] << 48; /* fall through */
	case 6: b |= (uint64_t)p[5] << 40; /* fall through */
	case 5: b |= (uint64_t)p[4] << 32; /* fall through */
	case 4: b |= (uint64_t)p[3] << 24; /* fall through */
	case 3: b |= (uint64_t)p[2] << 16; /* fall through */
	case 2: b |= (uint64_t)p[1] << 8; /* fall through */
	case 1: b |= (uint64_t)p[0]; break;
	case 0: break;
	}
	v3 ^= b;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t
mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

void
hash_key_random(struct hash_key *key_r)
{
	struct hash_key k;

	if (getrandom(&k, sizeof(k), GRND_NONBLOCK) != (ssize_t)sizeof(k)) {
		struct timespec ts;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		k.k0 = mix64((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)key_r);
		k.k1 = mix64(k.k0 ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20));
	}
	*key_r = k;
}

static struct hash_key process_key;
static pthread_once_t process_once = PTHREAD_ONCE_INIT;

static void
process_key_init(void)
{
	hash_key_random(&process_key);
}

const struct hash_key *
hash_process_key(void)
{
	pthread_once(&process_once, process_key_init);
	return &process_key;
}

uint64_t
hash_mem(const void *p, size_t n)
{
	return hash_siphash13(hash_process_key(), p, n);
}

uint64_t
hash_str(const char *s)
{
	return hash_siphash13(hash_process_key(), s, strlen(s));
}

uint64_t
hash_u64(uint64_t x)
{
	unsigned char b[8];

	for (int i = 0; i < 8; i++)
		b[i] = (unsigned char)(x >> (8 * i));
	return hash_siphash13(hash_process_key(), b, sizeof(b));
}

void
hashidx_init(struct hashidx *t, size_t max, const char *(*key)(const void *ctx, uint32_t idx),
    const void *ctx)
{
	size_t cap = 16;

	if (max >= HASHIDX_NONE)
		panic("hashidx: %zu entries do not fit", max);
	while (cap < max * 2)
		cap <<= 1;
	t->slot = xmalloc(cap * sizeof(uint32_t));
	memset(t->slot, 0xff, cap * sizeof(uint32_t));
	t->mask = cap - 1;
	t->n = 0;
	t->max = max;
	t->key = key;
	t->ctx = ctx;
}

void
hashidx_deinit(struct hashidx *t)
{
	free(t->slot);
	t->slot = NULL;
	t->mask = t->n = t->max = 0;
}

uint32_t
hashidx_put(struct hashidx *t, uint32_t idx)
{
	const char *k = t->key(t->ctx, idx);
	size_t i = (size_t)hash_str(k) & t->mask;

	while (t->slot[i] != HASHIDX_NONE) {
		if (strcmp(t->key(t->ctx, t->slot[i]), k) == 0) {
			uint32_t old = t->slot[i];

			t->slot[i] = idx;
			return old;
		}
		i = (i + 1) & t->mask;
	}
	if (t->n >= t->max)
		panic("hashidx: more than the %zu entries it was sized for", t->max);
	t->slot[i] = idx;
	t->n++;
	return HASHIDX_NONE;
}

uint32_t
hashidx_find(const struct hashidx *t, const char *key, size_t len)
{
	size_t i;

	if (t->slot == NULL)
		return HASHIDX_NONE;
	i = (size_t)hash_mem(key, len) & t->mask;
	while (t->slot[i] != HASHIDX_NONE) {
		const char *o = t->key(t->ctx, t->slot[i]);

		/* key may hold a NUL: never read o past its own end */
		if (strnlen(o, len + 1) == len && memcmp(o, key, len) == 0)
			return t->slot[i];
		i = (i + 1) & t->mask;
	}
	return HASHIDX_NONE;
}
