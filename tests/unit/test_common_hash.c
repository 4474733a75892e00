/* hash: SipHash-1-3 reference vectors, the process key, hashidx. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/hash.h"
#include "tests/unit/unit.h"

/* the reference implementation's vectors: key 00..0f, message 00..(len-1) */
static const uint64_t sip13_ref[] = {
	0xabac0158050fc4dcull, 0xc9f49bf37d57ca93ull, 0x82cb9b024dc7d44dull, 0x8bf80ab8e7ddf7fbull,
	0xcf75576088d38328ull, 0xdef9d52f49533b67ull, 0xc50d2b50c59f22a7ull, 0xd3927d989bb11140ull,
	0x369095118d299a8eull, 0x25a48eb36c063de4ull, 0x79de85ee92ff097full, 0x70c118c1f94dc352ull,
	0x78a384b157b4d9a2ull, 0x306f760c1229ffa7ull, 0x605aa111c0f95d34ull, 0xd320d86d2a519956ull,
	0xcc4fdd1a7d908b66ull,
};

static const struct { const char *name, *msg; uint64_t want; } zero_key_cases[] = {
	{ "empty message, zero key", "", 0xd1fba762150c532cull },
	{ "7 bytes, zero key", "siphash", 0x8264ceeccb16bcbeull },
	{ "15 bytes, zero key", "digest-sip_hash", 0xce31007e34130c0aull },
};

static void
test_siphash13_vectors(void)
{
	struct hash_key k;
	unsigned char key[16], msg[32];

	for (int i = 0; i < 16; i++)
		key[i] = (unsigned char)i;
	for (int i = 0; i < 32; i++)
		msg[i] = (unsigned char)i;
	k.k0 = k.k1 = 0;
	for (int i = 0; i < 8; i++) {
		k.k0 |= (uint64_t)key[i] << (8 * i);
		k.k1 |= (uint64_t)key[8 + i] << (8 * i);
	}
	for (size_t n = 0; n < sizeof(sip13_ref) / sizeof(sip13_ref[0]); n++) {
		uint64_t h = hash_siphash13(&k, msg, n);

		if (h != sip13_ref[n]) {
			fprintf(stderr, "\n  length %zu: got %016llx\n", n, (unsigned long long)h);
			CU_FAIL("SipHash-1-3 differs from the reference");
		}
	}
	k.k0 = k.k1 = 0;
	for (size_t i = 0; i < sizeof(zero_key_cases) / sizeof(zero_key_cases[0]); i++) {
		uint64_t h = hash_siphash13(&k, zero_key_cases[i].msg, strlen(zero_key_cases[i].msg));

		if (h != zero_key_cases[i].want) {
			fprintf(stderr, "\n  case \"%s\": got %016llx\n", zero_key_cases[i].name,
			    (unsigned long long)h);
			CU_FAIL("SipHash-1-3 differs from the reference");
		}
	}
}

static void
test_process_key(void)
{
	struct hash_key a, b;
	const struct hash_key *pk = hash_process_key();

	CU_ASSERT_PTR_EQUAL(pk, hash_process_key());
	CU_ASSERT(pk->k0 != 0 || pk->k1 != 0);
	hash_key_random(&a);
	hash_key_random(&b);
	CU_ASSERT(a.k0 != b.k0 || a.k1 != b.k1);
	/* the shorthands are the function under the process key */
	CU_ASSERT_EQUAL(hash_str("192.0.2.1"), hash_siphash13(pk, "192.0.2.1", 9));
	CU_ASSERT_EQUAL(hash_mem("ab\0c", 4), hash_siphash13(pk, "ab\0c", 4));
	CU_ASSERT_NOT_EQUAL(hash_mem("ab\0c", 4), hash_mem("ab", 2));
	CU_ASSERT_NOT_EQUAL(hash_u64(1), hash_u64(2));
	{
		unsigned char le[8] = { 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01 };

		CU_ASSERT_EQUAL(hash_u64(0x0102030405060708ull), hash_siphash13(pk, le, 8));
	}
}

static const char *const idx_keys[] = {
	"alpha", "beta", "gamma", "alpha", "", "delta", "beta",
};

static const char *
idx_key(const void *ctx, uint32_t i)
{
	return ((const char *const *)ctx)[i];
}

static const struct { const char *name, *key; size_t len; uint32_t want; } find_cases[] = {
	{ "first key, later duplicate wins", "alpha", 5, 3 },
	{ "duplicate at the end wins", "beta", 4, 6 },
	{ "plain", "gamma", 5, 2 },
	{ "the empty key", "", 0, 4 },
	{ "absent", "epsilon", 7, HASHIDX_NONE },
	{ "prefix of a key", "alp", 3, HASHIDX_NONE },
	{ "a key plus more", "alphas", 6, HASHIDX_NONE },
	{ "counted length inside a longer string", "deltas", 5, 5 },
	{ "NUL inside the looked-up bytes", "beta\0xx", 7, HASHIDX_NONE },
};

static void
test_hashidx_table(void)
{
	struct hashidx t;
	uint32_t replaced[7];

	hashidx_init(&t, 7, idx_key, idx_keys);
	for (uint32_t i = 0; i < 7; i++)
		replaced[i] = hashidx_put(&t, i);
	CU_ASSERT_EQUAL(replaced[0], HASHIDX_NONE);
	CU_ASSERT_EQUAL(replaced[3], 0);
	CU_ASSERT_EQUAL(replaced[6], 1);
	CU_ASSERT_EQUAL(t.n, 5);
	for (size_t i = 0; i < sizeof(find_cases) / sizeof(find_cases[0]); i++) {
		uint32_t got = hashidx_find(&t, find_cases[i].key, find_cases[i].len);

		if (got != find_cases[i].want) {
			fprintf(stderr, "\n  case \"%s\": got %u\n", find_cases[i].name, got);
			CU_FAIL("hashidx_find");
		}
	}
	hashidx_deinit(&t);
	CU_ASSERT_EQUAL(hashidx_find(&t, "alpha", 5), HASHIDX_NONE);
}

/* many keys into a table sized exactly for them: all found, none invented */
static char big_keys[5000][16];

static const char *
big_key(const void *ctx, uint32_t i)
{
	(void)ctx;
	return big_keys[i];
}

static void
test_hashidx_full(void)
{
	struct hashidx t;
	int bad = 0;

	for (int i = 0; i < 5000; i++)
		snprintf(big_keys[i], sizeof(big_keys[i]), "k%d", i);
	hashidx_init(&t, 5000, big_key, NULL);
	for (uint32_t i = 0; i < 5000; i++)
		bad += hashidx_put(&t, i) != HASHIDX_NONE;
	for (uint32_t i = 0; i < 5000; i++)
		bad += hashidx_find(&t, big_keys[i], strlen(big_keys[i])) != i;
	bad += hashidx_find(&t, "k5000", 5) != HASHIDX_NONE;
	CU_ASSERT_EQUAL(bad, 0);
	hashidx_deinit(&t);
}

static CU_TestInfo tests[] = {
	{ "SipHash-1-3 reference vectors", test_siphash13_vectors },
	{ "process key drawn once, shorthands agree", test_process_key },
	{ "hashidx: later duplicate wins, counted-length lookups", test_hashidx_table },
	{ "hashidx: 5000 keys at its sized capacity", test_hashidx_full },
	{ NULL, NULL },
};

void
test_common_hash_register(void)
{
	unit_suite("common_hash", tests);
}
