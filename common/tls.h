#ifndef PC_TLS_H
#define PC_TLS_H
#include <stddef.h>

/*
 * One TLS server context for every listener, from one set of settings:
 * tls_cert_file, tls_key_file, tls_min_version, tls_ciphers (TLS 1.2),
 * tls_ciphersuites (TLS 1.3), tls_client_ca_file, tls_verify_client.
 */
struct conf;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;

/* NULL with *error_r when TLS is not configured (error_r "") or broken
 * (error names the file and what is wrong) */
SSL_CTX *tls_server_ctx_new(const struct conf *c, const char **error_r);
int tls_is_configured(const struct conf *c);
/*
 * The identity of a client certificate the handshake verified, for SASL
 * EXTERNAL: the first subjectAltName email (rfc822Name), else the subject's
 * CN. 0 with it in buf; -1 when no certificate was verified or the name is
 * empty, too long, or holds bytes outside printable ASCII.
 */
int tls_peer_identity(SSL *ssl, char *buf, size_t cap);

#endif
