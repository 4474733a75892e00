/*
 * base64 - strict RFC 4648 base64, both ways.
 *
 *   base64_encode()   bytes -> padded text
 *   base64_decode()   text -> bytes; refuses anything not canonical
 *
 * The decoder is for peer input (SASL responses): it never reads past n,
 * never writes past cap, and accepts exactly one spelling of each byte
 * string, so a caller may compare encodings. Pure, thread-safe.
 */
#include <stdint.h>

#include "common/base64.h"

static const char enc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* 0..63, or 64 for anything else */
static uint8_t
dec(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return (uint8_t)(c - 'A');
	if (c >= 'a' && c <= 'z')
		return (uint8_t)(c - 'a' + 26);
	if (c >= '0' && c <= '9')
		return (uint8_t)(c - '0' + 52);
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return 64;
}

size_t
base64_encode(const void *in, size_t n, char *out)
{
	const unsigned char *p = in;
	size_t o = 0;

	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
		    (i + 2 < n ? p[i + 2] : 0);

		out[o++] = enc[(v >> 18) & 63];
		out[o++] = enc[(v >> 12) & 63];
		out[o++] = i + 1 < n ? enc[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < n ? enc[v & 63] : '=';
	}
	out[o] = '\0';
	return o;
}

int
base64_decode(const char *in, size_t n, void *out, size_t cap, size_t *len_r)
{
	unsigned char *q = out;
	size_t o = 0;

	if (n % 4 != 0 || cap == 0)
		return -1;
	for (size_t i = 0; i < n; i += 4) {
		const unsigned char *s = (const unsigned char *)in + i;
		uint8_t a = dec(s[0]), b = dec(s[1]), c = dec(s[2]), d = dec(s[3]);
		int last = i + 4 == n;
		size_t k;

		if (a == 64 || b == 64)
			return -1;
		if (c == 64 || d == 64) {
			/* only the last quantum pads: "xx==" or "xxx=" */
			if (!last || s[3] != '=' || (c == 64 && s[2] != '='))
				return -1;
			k = c == 64 ? 1 : 2;
			/* the bits the padding leaves over are zero (RFC 4648 3.5) */
			if (k == 1 ? (b & 0x0f) != 0 : (c & 0x03) != 0)
				return -1;
		} else
			k = 3;
		if (o + k >= cap)
			return -1;
		q[o++] = (unsigned char)(a << 2 | b >> 4);
		if (k > 1)
			q[o++] = (unsigned char)((b & 0x0f) << 4 | c >> 2);
		if (k > 2)
			q[o++] = (unsigned char)((c & 0x03) << 6 | d);
	}
	q[o] = '\0';
	*len_r = o;
	return 0;
}
