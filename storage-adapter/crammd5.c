/*
 * crammd5 - CRAM-MD5 secrets and verification.
 *
 *   crammd5_secret()   HMAC-MD5 states after the ipad and opad blocks
 *   crammd5_verify()   resume both states, finish the HMAC, compare
 *
 * Resuming an MD5 state needs OpenSSL's low-level MD5 API, deprecated in
 * OpenSSL 3 but still there; it is confined to this file.
 */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <stdio.h>
#include <string.h>

#include <openssl/md5.h>

#include "storage-adapter/crammd5.h"

static void
state_after_block(const unsigned char key[64], unsigned char pad, MD5_LONG st[4])
{
	unsigned char block[64];
	MD5_CTX ctx;

	for (int i = 0; i < 64; i++)
		block[i] = key[i] ^ pad;
	MD5_Init(&ctx);
	MD5_Update(&ctx, block, 64);
	st[0] = ctx.A;
	st[1] = ctx.B;
	st[2] = ctx.C;
	st[3] = ctx.D;
	memset(block, 0, sizeof(block));
}

void
crammd5_secret(const char *password, char out[CRAMMD5_SECRET_HEX + 1])
{
	unsigned char key[64] = { 0 };
	size_t n = strlen(password);
	MD5_LONG in[4], ou[4];

	if (n > 64)
		MD5((const unsigned char *)password, n, key);
	else
		memcpy(key, password, n);
	state_after_block(key, 0x36, in);
	state_after_block(key, 0x5c, ou);
	for (int i = 0; i < 4; i++)
		snprintf(out + 8 * i, 9, "%08lx", (unsigned long)in[i]);
	for (int i = 0; i < 4; i++)
		snprintf(out + 32 + 8 * i, 9, "%08lx", (unsigned long)ou[i]);
	memset(key, 0, sizeof(key));
}

static int
resume(MD5_CTX *ctx, const char *hex)
{
	MD5_LONG v[4];

	for (int i = 0; i < 4; i++) {
		unsigned long x;
		char buf[9];

		memcpy(buf, hex + 8 * i, 8);
		buf[8] = '\0';
		if (strspn(buf, "0123456789abcdef") != 8 || sscanf(buf, "%lx", &x) != 1)
			return -1;
		v[i] = (MD5_LONG)x;
	}
	MD5_Init(ctx);
	ctx->A = v[0];
	ctx->B = v[1];
	ctx->C = v[2];
	ctx->D = v[3];
	ctx->Nl = 512;		/* one 64-byte block already processed */
	ctx->Nh = 0;
	return 0;
}

int
crammd5_verify(const char *secret, const char *challenge, size_t chlen, const char *hexdigest)
{
	unsigned char inner[16], mac[16];
	char hex[33];
	unsigned char diff = 0;
	MD5_CTX ctx;

	if (secret == NULL || strlen(secret) != CRAMMD5_SECRET_HEX || strlen(hexdigest) != 32)
		return 0;
	if (resume(&ctx, secret) < 0)
		return 0;
	MD5_Update(&ctx, challenge, chlen);
	MD5_Final(inner, &ctx);
	if (resume(&ctx, secret + 32) < 0)
		return 0;
	MD5_Update(&ctx, inner, 16);
	MD5_Final(mac, &ctx);
	for (int i = 0; i < 16; i++)
		snprintf(hex + 2 * i, 3, "%02x", mac[i]);
	for (int i = 0; i < 32; i++)
		diff |= (unsigned char)(hex[i] ^ (hexdigest[i] | 0x20));	/* hex in any case */
	return diff == 0;
}
