#ifndef PC_HASH_H
#define PC_HASH_H
#include <stddef.h>
#include <stdint.h>

/*
 * The project's one hash function: SipHash-1-3 (64-bit output, 128-bit key),
 * and one table for the common case "a set of indices into my array, keyed
 * by a string".
 *
 * In-memory tables whose keys a peer can choose (addresses, senders, list
 * keys) use the process key, drawn from getrandom() once: nobody outside can
 * aim keys at one bucket. A table that lives in a file shared between
 * processes (the counters) names a fixed key of its own instead.
 */

struct hash_key {
	uint64_t k0, k1;
};

/* SipHash-1-3 of n bytes under key */
uint64_t hash_siphash13(const struct hash_key *key, const void *p, size_t n);

/* a fresh random key (getrandom(); a time/pid mix if that fails) */
void hash_key_random(struct hash_key *key_r);
/* the process key: drawn on first use, thread-safe, the same afterwards */
const struct hash_key *hash_process_key(void);

/* shorthands under the process key */
uint64_t hash_mem(const void *p, size_t n);
uint64_t hash_str(const char *s);
uint64_t hash_u64(uint64_t x);

/*
 * hashidx - a fixed-size set of uint32 indices into the caller's array, keyed
 * by the NUL-terminated string key(ctx, idx) returns (open addressing,
 * linear probing; no deletes). Sized at init for at most n entries: putting
 * more distinct keys than that is a broken invariant (panic).
 * Not thread-safe; lookups of a finished table may run concurrently.
 */
#define HASHIDX_NONE UINT32_MAX

struct hashidx {
	uint32_t *slot;
	size_t mask, n, max;
	const char *(*key)(const void *ctx, uint32_t idx);
	const void *ctx;
};

void hashidx_init(struct hashidx *t, size_t max, const char *(*key)(const void *ctx, uint32_t idx),
    const void *ctx);
void hashidx_deinit(struct hashidx *t);
/* add idx under its key; an index already there under the same key is
 * replaced (the later wins) and returned, else HASHIDX_NONE */
uint32_t hashidx_put(struct hashidx *t, uint32_t idx);
/* the index whose key is the len bytes at key, or HASHIDX_NONE */
uint32_t hashidx_find(const struct hashidx *t, const char *key, size_t len);

#endif
