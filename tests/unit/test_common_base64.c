/* base64: RFC 4648 section 10 vectors both ways, and what strict refuses. */
#include <stdio.h>
#include <string.h>

#include "common/base64.h"
#include "tests/unit/unit.h"

static const struct { const char *plain, *coded; } rfc4648[] = {
	{ "", "" },
	{ "f", "Zg==" },
	{ "fo", "Zm8=" },
	{ "foo", "Zm9v" },
	{ "foob", "Zm9vYg==" },
	{ "fooba", "Zm9vYmE=" },
	{ "foobar", "Zm9vYmFy" },
};

static void
test_rfc4648_vectors(void)
{
	for (size_t i = 0; i < sizeof(rfc4648) / sizeof(rfc4648[0]); i++) {
		char enc[32];
		unsigned char dec[32];
		size_t pl = strlen(rfc4648[i].plain), n = 99;

		CU_ASSERT_EQUAL(base64_encode(rfc4648[i].plain, pl, enc), strlen(rfc4648[i].coded));
		CU_ASSERT_EQUAL(BASE64_ENCODED_LEN(pl), strlen(rfc4648[i].coded));
		if (strcmp(enc, rfc4648[i].coded) != 0) {
			fprintf(stderr, "\n  \"%s\": encoded as %s\n", rfc4648[i].plain, enc);
			CU_FAIL("encode differs from RFC 4648");
		}
		CU_ASSERT_EQUAL_FATAL(base64_decode(rfc4648[i].coded, strlen(rfc4648[i].coded), dec,
		    sizeof(dec), &n), 0);
		CU_ASSERT_EQUAL(n, pl);
		CU_ASSERT(memcmp(dec, rfc4648[i].plain, pl) == 0 && dec[n] == '\0');
	}
}

static const struct { const char *name, *in; size_t len; size_t cap; int ok; } strict[] = {
	{ "all 64 characters", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", 64, 64, 1 },
	{ "binary 00 ff", "AP8=", 4, 8, 1 },
	{ "length not a multiple of 4", "Zm9", 3, 8, 0 },
	{ "missing padding", "Zg", 2, 8, 0 },
	{ "one character", "Z", 1, 8, 0 },
	{ "three pads", "Z===", 4, 8, 0 },
	{ "four pads", "====", 4, 8, 0 },
	{ "pad then data", "Zg=a", 4, 8, 0 },
	{ "pad inside", "Zg==Zm8=", 8, 8, 0 },
	{ "pad in the first quantum of two", "Zm8=Zm9v", 8, 8, 0 },
	{ "trailing bits set, one pad", "Zm9=", 4, 8, 0 },
	{ "trailing bits set, two pads", "Zh==", 4, 8, 0 },
	{ "space inside", "Zm9 v", 5, 8, 0 },
	{ "trailing space", "Zm9v ", 5, 8, 0 },
	{ "CRLF", "Zm9v\r\n", 6, 8, 0 },
	{ "line break inside", "Zm9v\nYmFy", 9, 16, 0 },
	{ "NUL inside", "Zm\0v", 4, 8, 0 },
	{ "URL-safe alphabet", "-_-_", 4, 8, 0 },
	{ "8-bit byte", "Zm9\xc3", 4, 8, 0 },
	{ "exact cap without room for the NUL", "Zm9v", 4, 3, 0 },
	{ "cap with room for the NUL", "Zm9v", 4, 4, 1 },
	{ "zero cap", "", 0, 0, 0 },
	{ "empty", "", 0, 1, 1 },
};

static void
test_strict_table(void)
{
	for (size_t i = 0; i < sizeof(strict) / sizeof(strict[0]); i++) {
		unsigned char out[80];
		size_t n = 12345;
		int rc = base64_decode(strict[i].in, strict[i].len, out, strict[i].cap, &n);

		if ((rc == 0) != strict[i].ok) {
			fprintf(stderr, "\n  case \"%s\": rc %d\n", strict[i].name, rc);
			CU_FAIL("strict decode");
		}
		if (rc < 0) {
			CU_ASSERT_EQUAL(n, 12345);	/* untouched */
		} else {
			CU_ASSERT(n < strict[i].cap);
		}
	}
}

/* every length 0..64 of every byte value round-trips and re-encodes identically */
static void
test_round_trip(void)
{
	unsigned char in[64], out[65];
	char enc[BASE64_ENCODED_LEN(64) + 1], again[BASE64_ENCODED_LEN(64) + 1];
	int bad = 0;

	for (size_t n = 0; n <= sizeof(in); n++) {
		size_t m = 0;

		for (size_t i = 0; i < n; i++)
			in[i] = (unsigned char)(i * 37 + n * 101 + 255);
		base64_encode(in, n, enc);
		if (base64_decode(enc, strlen(enc), out, n + 1, &m) < 0 ||
		    m != n || memcmp(in, out, n) != 0)
			bad++;
		CU_ASSERT(BASE64_DECODED_MAX(strlen(enc)) >= n);
		base64_encode(out, m, again);
		bad += strcmp(enc, again) != 0;
	}
	CU_ASSERT_EQUAL(bad, 0);
}

static CU_TestInfo tests[] = {
	{ "RFC 4648 section 10 vectors, both ways", test_rfc4648_vectors },
	{ "strict: whitespace, padding, trailing bits, alphabet, cap", test_strict_table },
	{ "round trip at every length 0..64", test_round_trip },
	{ NULL, NULL },
};

void
test_common_base64_register(void)
{
	unit_suite("common_base64", tests);
}
