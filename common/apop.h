#ifndef PC_APOP_H
#define PC_APOP_H

/*
 * APOP (RFC 1939 section 7): the client proves it knows the shared secret
 * by sending MD5(timestamp || secret) in lower-case hex, where timestamp is
 * the msg-id the server put in its greeting ("<pid.clock@host>"). The
 * server needs the secret itself (the password, recoverable): see the
 * users file's apop= field (storage-adapter/userdb.h) and what it costs.
 * Pure; never logs its arguments.
 */
#define APOP_DIGEST_HEX 32

/* 1 when digest_hex (32 hex digits, either case) is MD5(stamp || secret);
 * 0 otherwise, for a malformed digest too. The digests are compared in
 * constant time. */
int apop_verify(const char *secret, const char *stamp, const char *digest_hex);
/* MD5(stamp || secret) as 32 lower-case hex digits and a NUL: what a client
 * sends (tests, the POP3 door's own checks) */
void apop_digest(const char *secret, const char *stamp, char out[APOP_DIGEST_HEX + 1]);

#endif
