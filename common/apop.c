/*
 * apop - the APOP digest (RFC 1939 section 7) and its check.
 *
 *   apop_digest()   MD5(stamp || secret), lower-case hex
 *   apop_verify()   a client's digest against the secret, in constant time
 *
 * MD5 through OpenSSL's EVP interface (the digest is fixed by the RFC).
 * Never logs, never keeps a copy of the secret (the buffers are wiped).
 */
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common/apop.h"

/* MD5(stamp || secret) into md (16 bytes); 0, or -1 when OpenSSL fails */
static int
md5_of(const char *secret, const char *stamp, unsigned char md[16])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned len = 0;
	int ok;

	if (ctx == NULL)
		return -1;
	ok = EVP_DigestInit_ex(ctx, EVP_md5(), NULL) == 1 &&
	    EVP_DigestUpdate(ctx, stamp, strlen(stamp)) == 1 &&
	    EVP_DigestUpdate(ctx, secret, strlen(secret)) == 1 &&
	    EVP_DigestFinal_ex(ctx, md, &len) == 1 && len == 16;
	EVP_MD_CTX_free(ctx);
	return ok ? 0 : -1;
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

void
apop_digest(const char *secret, const char *stamp, char out[APOP_DIGEST_HEX + 1])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[16];

	if (md5_of(secret, stamp, md) < 0) {
		out[0] = '\0';	/* matches no digest */
		return;
	}
	for (int i = 0; i < 16; i++) {
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 15];
	}
	out[APOP_DIGEST_HEX] = '\0';
	OPENSSL_cleanse(md, sizeof(md));
}

int
apop_verify(const char *secret, const char *stamp, const char *digest_hex)
{
	unsigned char want[16], got[16];
	int ok;

	if (secret == NULL || stamp == NULL || digest_hex == NULL ||
	    strlen(digest_hex) != APOP_DIGEST_HEX)
		return 0;
	for (int i = 0; i < 16; i++) {
		int hi = hexval(digest_hex[2 * i]), lo = hexval(digest_hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return 0;
		got[i] = (unsigned char)(hi << 4 | lo);
	}
	if (md5_of(secret, stamp, want) < 0)
		return 0;
	ok = CRYPTO_memcmp(want, got, sizeof(want)) == 0;
	OPENSSL_cleanse(want, sizeof(want));
	return ok;
}
