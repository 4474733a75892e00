#ifndef PC_CRAMMD5_H
#define PC_CRAMMD5_H
#include <stddef.h>

/*
 * CRAM-MD5 (RFC 2195) without keeping passwords: the HMAC-MD5 inner and
 * outer states after the key block, as Dovecot's CRAM-MD5 scheme stores
 * them. Whoever holds them can answer CRAM-MD5 challenges (they are
 * password-equivalent for this mechanism), but cannot read the password.
 */
#define CRAMMD5_SECRET_HEX 64

/* password -> 64 hex characters (+ NUL) */
void crammd5_secret(const char *password, char out[CRAMMD5_SECRET_HEX + 1]);
/* does "hexdigest" answer challenge for this secret */
int crammd5_verify(const char *secret_hex, const char *challenge, size_t chlen,
    const char *hexdigest);

#endif
