/*
 * libFuzzer target: common/base64 and common/hash. Properties:
 *  - any bytes encode, and decode back to themselves (round trip), with the
 *    predicted lengths;
 *  - any text that decodes re-encodes to exactly that text (strict: one
 *    spelling per byte string), and a decoder with a one-byte-smaller cap
 *    refuses it instead of writing past it;
 *  - a text the decoder refuses is one a plain RFC 4648 checker refuses too;
 *  - hashidx finds every key it was given, and hashing is a function.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/base64.h"
#include "common/hash.h"

/* an independent, slow statement of canonical base64 */
static int
canonical(const uint8_t *s, size_t n)
{
	static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t pad = 0;

	if (n % 4 != 0)
		return 0;
	if (n >= 1 && s[n - 1] == '=')
		pad++;
	if (n >= 2 && s[n - 2] == '=')
		pad++;
	for (size_t i = 0; i < n - pad; i++)
		if (s[i] == 0 || memchr(a, s[i], 64) == NULL)
			return 0;
	if (pad > 0) {
		unsigned last = (unsigned)(strchr(a, s[n - pad - 1]) - a);

		if ((pad == 1 && (last & 3) != 0) || (pad == 2 && (last & 15) != 0))
			return 0;
	}
	return 1;
}

static const char *
key_of(const void *ctx, uint32_t i)
{
	return ((char *const *)ctx)[i];
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

int
LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	char *enc = malloc(BASE64_ENCODED_LEN(n) + 1), *again;
	uint8_t *dec = malloc(n + 1);
	size_t len = 0;

	/* bytes -> text -> bytes */
	if (base64_encode(d, n, enc) != BASE64_ENCODED_LEN(n) || strlen(enc) != BASE64_ENCODED_LEN(n))
		abort();
	if (base64_decode(enc, strlen(enc), dec, n + 1, &len) < 0 || len != n ||
	    (n > 0 && memcmp(dec, d, n) != 0))
		abort();
	if (base64_decode(enc, strlen(enc), dec, n, &len) == 0)	/* no room for the NUL */
		abort();

	/* text -> bytes -> the same text */
	{
		uint8_t *out = malloc(BASE64_DECODED_MAX(n) + 1);
		int ok = base64_decode((const char *)d, n, out, BASE64_DECODED_MAX(n) + 1, &len) == 0;

		if (ok != canonical(d, n))
			abort();
		if (ok) {
			if (len > BASE64_DECODED_MAX(n) || out[len] != '\0')
				abort();
			again = malloc(BASE64_ENCODED_LEN(len) + 1);
			base64_encode(out, len, again);
			if (strlen(again) != n || memcmp(again, d, n) != 0)
				abort();
			free(again);
			if (len > 0 && base64_decode((const char *)d, n, out, len, &len) == 0)
				abort();
		}
		free(out);
	}

	/* keys split at NUL bytes: every one is found, at its last position */
	{
		char *copy = malloc(n + 1), **keys = malloc((n + 1) * sizeof(char *));
		struct hashidx t;
		uint32_t nk = 0;

		memcpy(copy, d, n);
		copy[n] = '\0';
		for (size_t i = 0; i <= n; i += strlen(copy + i) + 1)
			keys[nk++] = copy + i;
		hashidx_init(&t, nk, key_of, keys);
		for (uint32_t i = 0; i < nk; i++)
			(void)hashidx_put(&t, i);
		for (uint32_t i = 0; i < nk; i++) {
			uint32_t got = hashidx_find(&t, keys[i], strlen(keys[i]));

			if (got == HASHIDX_NONE || strcmp(keys[got], keys[i]) != 0 || got < i)
				abort();
		}
		if (hash_mem(d, n) != hash_mem(copy, n))
			abort();
		hashidx_deinit(&t);
		free(keys);
		free(copy);
	}
	free(enc);
	free(dec);
	return 0;
}
