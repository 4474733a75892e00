/*
 * tls - the server TLS context every front door shares.
 *
 *   tls_server_ctx_new()   certificate (with its chain) and key, checked to
 *                          match; protocol floor; cipher lists; client
 *                          certificates none | optional | require
 *
 * A start-up error names the setting and the file: an admin must see at once
 * which key does not fit which certificate.
 */
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "common/conf.h"
#include "common/tls.h"

static char errbuf[700];

static const char *
ssl_reason(void)
{
	unsigned long e = ERR_get_error();
	static char buf[256];

	if (e == 0)
		return "unknown error";
	ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	return buf;
}

int
tls_is_configured(const struct conf *c)
{
	return conf_get(c, "tls_cert_file")[0] != '\0' || conf_get(c, "tls_key_file")[0] != '\0';
}

SSL_CTX *
tls_server_ctx_new(const struct conf *c, const char **error_r)
{
	const char *cert = conf_get(c, "tls_cert_file"), *key = conf_get(c, "tls_key_file");
	const char *minv = conf_get(c, "tls_min_version"), *ciphers = conf_get(c, "tls_ciphers");
	const char *suites = conf_get(c, "tls_ciphersuites"), *ca = conf_get(c, "tls_client_ca_file");
	const char *verify = conf_get(c, "tls_verify_client");
	SSL_CTX *ctx;
	FILE *fp;

	*error_r = "";
	if (!tls_is_configured(c))
		return NULL;
	if (cert[0] == '\0' || key[0] == '\0') {
		snprintf(errbuf, sizeof(errbuf), "%s: TLS needs both tls_cert_file and tls_key_file",
		    conf_where(c, cert[0] ? "tls_cert_file" : "tls_key_file"));
		*error_r = errbuf;
		return NULL;
	}
	/* name the unreadable file plainly, before OpenSSL's wording */
	if ((fp = fopen(cert, "r")) == NULL) {
		snprintf(errbuf, sizeof(errbuf), "tls_cert_file = %s: cannot read it", cert);
		*error_r = errbuf;
		return NULL;
	}
	fclose(fp);
	if ((fp = fopen(key, "r")) == NULL) {
		snprintf(errbuf, sizeof(errbuf), "tls_key_file = %s: cannot read it", key);
		*error_r = errbuf;
		return NULL;
	}
	fclose(fp);
	ctx = SSL_CTX_new(TLS_server_method());
	if (ctx == NULL) {
		snprintf(errbuf, sizeof(errbuf), "TLS: %s", ssl_reason());
		*error_r = errbuf;
		return NULL;
	}
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
	    SSL_OP_CIPHER_SERVER_PREFERENCE);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		snprintf(errbuf, sizeof(errbuf), "tls_cert_file = %s: not a PEM certificate (%s)",
		    cert, ssl_reason());
		goto fail;
	}
	{
		FILE *kf = fopen(key, "r");
		EVP_PKEY *pk = kf ? PEM_read_PrivateKey(kf, NULL, NULL, NULL) : NULL;

		if (kf)
			fclose(kf);
		if (pk == NULL) {
			snprintf(errbuf, sizeof(errbuf), "tls_key_file = %s: not a PEM private key (%s)",
			    key, ssl_reason());
			goto fail;
		}
		if (SSL_CTX_use_PrivateKey(ctx, pk) != 1) {
			EVP_PKEY_free(pk);
			snprintf(errbuf, sizeof(errbuf), "tls_key_file = %s does not match tls_cert_file = %s",
			    key, cert);
			ERR_clear_error();
			goto fail;
		}
		EVP_PKEY_free(pk);
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		snprintf(errbuf, sizeof(errbuf), "tls_key_file = %s does not match tls_cert_file = %s",
		    key, cert);
		ERR_clear_error();
		goto fail;
	}
	if (strcmp(minv, "TLSv1.3") == 0)
		SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	else if (strcmp(minv, "TLSv1.2") == 0)
		SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	else {
		snprintf(errbuf, sizeof(errbuf), "%s: tls_min_version: \"%.20s\" is not TLSv1.2 or TLSv1.3",
		    conf_where(c, "tls_min_version"), minv);
		goto fail;
	}
	if (ciphers[0] != '\0' && SSL_CTX_set_cipher_list(ctx, ciphers) != 1) {
		snprintf(errbuf, sizeof(errbuf), "%s: tls_ciphers: no usable cipher in \"%.100s\"",
		    conf_where(c, "tls_ciphers"), ciphers);
		ERR_clear_error();
		goto fail;
	}
	if (suites[0] != '\0' && SSL_CTX_set_ciphersuites(ctx, suites) != 1) {
		snprintf(errbuf, sizeof(errbuf), "%s: tls_ciphersuites: no usable suite in \"%.100s\"",
		    conf_where(c, "tls_ciphersuites"), suites);
		ERR_clear_error();
		goto fail;
	}
	if (strcmp(verify, "none") != 0) {
		if (ca[0] == '\0') {
			snprintf(errbuf, sizeof(errbuf), "%s: tls_verify_client = %s needs tls_client_ca_file",
			    conf_where(c, "tls_verify_client"), verify);
			goto fail;
		}
		if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
			snprintf(errbuf, sizeof(errbuf), "tls_client_ca_file = %s: cannot load (%s)", ca,
			    ssl_reason());
			goto fail;
		}
		SSL_CTX_set_client_CA_list(ctx, SSL_load_client_CA_file(ca));
		SSL_CTX_set_verify(ctx, strcmp(verify, "require") == 0 ?
		    SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER, NULL);
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	*error_r = errbuf;
	return NULL;
}

static int
printable(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] <= 0x20 || p[i] >= 0x7f)
			return 0;
	return n > 0;
}

int
tls_peer_identity(SSL *ssl, char *buf, size_t cap)
{
	X509 *x;
	GENERAL_NAMES *gens;
	int rc = -1;

	if (ssl == NULL || SSL_get_verify_result(ssl) != X509_V_OK ||
	    (x = SSL_get0_peer_certificate(ssl)) == NULL)
		return -1;
	gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
		const unsigned char *p;
		int n;

		if (g->type != GEN_EMAIL)
			continue;
		p = ASN1_STRING_get0_data(g->d.rfc822Name);
		n = ASN1_STRING_length(g->d.rfc822Name);
		if (n > 0 && (size_t)n < cap && printable(p, (size_t)n)) {
			memcpy(buf, p, (size_t)n);
			buf[n] = '\0';
			rc = 0;
		}
		break;	/* the first email only: never a later, other one */
	}
	GENERAL_NAMES_free(gens);
	if (rc == 0)
		return 0;
	{
		int n = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, buf,
		    (int)cap);

		if (n > 0 && (size_t)n < cap && strlen(buf) == (size_t)n &&
		    printable((const unsigned char *)buf, (size_t)n))
			return 0;
	}
	return -1;
}
