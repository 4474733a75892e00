#ifndef PC_USERDB_H
#define PC_USERDB_H
#include <stddef.h>

/*
 * The user database: a passwd-file as Dovecot reads it,
 *   user@domain:{CRYPT}$y$...:uid:gid:gecos:home:shell:extra_fields
 * extra fields (space-separated): scram_sha_256={SCRAM-SHA-256}ITER,SALT,
 * STOREDKEY,SERVERKEY (as doveadm pw -s SCRAM-SHA-256 prints it), while
 * CRAM-MD5 is enabled cram_md5=HEX, and while pop3_apop = yes
 * apop={PLAIN.BASE64}B64: the password itself, base64 only so that spaces
 * and colons fit the line (Dovecot's scheme name; Dovecot stores {PLAIN}
 * for APOP). APOP needs the password recoverable: whoever reads the file
 * reads the password of every user stored with it.
 * Users are named by their full address, which is also their login.
 * A loaded userdb is read-only (share it between threads); reload by
 * loading again.
 */
struct userdb;

/* "file:/etc/portcullis/users"; a missing file is an empty userdb (no users) */
struct userdb *userdb_load(const char *url, const char **error_r);
/* for a server's start: the same, but a file that exists and cannot be opened
 * is an empty userdb (userdb_is_usable() says why; userdb_reload() takes a
 * valid file later) rather than an error; NULL only for a bad url */
struct userdb *userdb_open(const char *url, const char **error_r);
void userdb_free(struct userdb **db);
int userdb_has_user(const struct userdb *db, const char *local, const char *domain);
/*
 * The canonical name of the user local@domain, looked up case-insensitively
 * (names are stored lower case, as Dovecot's auth_username_format = %Lu
 * would make them): the stored "user@domain", or NULL. Mailbox paths and
 * delivery use this name only.
 */
const char *userdb_resolve(const struct userdb *db, const char *local, const char *domain);
/* the stored hash ("{CRYPT}$y$..."), or NULL */
const char *userdb_password(const struct userdb *db, const char *user);
size_t userdb_count(const struct userdb *db);
const char *userdb_user_at(const struct userdb *db, size_t i);
/* the file changed since it was loaded */
int userdb_changed(const struct userdb *db);
/* 1 when db came from a file fit to replace a running userdb; 0 with *why_r
 * when the file was missing, empty, unreadable or had no valid user line */
int userdb_is_usable(const struct userdb *db, const char **why_r);
/*
 * Reload *db when its file changed. 1: replaced (*db is the new one); 0:
 * unchanged; -1: the file is missing, empty, unreadable or garbled, *db stays
 * in force and *error_r says why (the same file is not parsed again until it
 * changes). A userdb loaded without a file stays empty until a valid one
 * appears. Loop-owned: *db must not be in use by another thread.
 */
int userdb_reload(struct userdb **db, const char *url, const char **error_r);

/* admin side: add or replace (hash made here with yescrypt), delete */
#define USERDB_CRAM 1u	/* also the CRAM-MD5 secret (only while CRAM-MD5 is enabled) */
#define USERDB_APOP 2u	/* also the APOP secret (only while pop3_apop = yes) */
/* always stores SCRAM-SHA-256 keys (extra field scram_sha_256=); secrets:
 * USERDB_* bits; a secret not asked for is not kept (the line is replaced) */
int userdb_set_password(const char *url, const char *user, const char *password, int create,
    unsigned secrets, const char **error_r) __attribute__((warn_unused_result));
/* "{SCRAM-SHA-256}ITER,SALT,STOREDKEY,SERVERKEY" (Dovecot's format), or NULL
 * for a user whose password was set before SCRAM (the next passwd adds it) */
const char *userdb_scram_secret(const struct userdb *db, const char *user);
/* the CRAM-MD5 secret, or NULL when none is stored */
const char *userdb_cram_secret(const struct userdb *db, const char *user);
/* the APOP secret (for apop_verify() of common/apop.h), or NULL when none is
 * stored (APOP then fails for the user, as for a wrong digest) */
const char *userdb_apop_secret(const struct userdb *db, const char *user);
int userdb_delete(const char *url, const char *user, int *found_r, const char **error_r)
    __attribute__((warn_unused_result));
/* 1 when password matches the hash (NULL: unknown user, same cost, 0) */
int userdb_hash_verify(const char *hash, const char *password);
/* 1 when password matches the stored hash */
int userdb_verify(const struct userdb *db, const char *user, const char *password);
/*
 * Where a user lives (issue 12): extra fields on the user's line, as
 * Dovecot's passdb has them: proxy=y host=ADDRESS [port=N]
 * [tls=no|starttls|yes] [destuser=NAME]. host is a numeric IPv4/IPv6
 * address, or a DNS name the proxy resolves on its loop (the resolver
 * setting); TLS to it is verified against that address (an IP
 * subjectAltName) or that name. A user without proxy=y is served from the
 * local store.
 */
enum userdb_proxy_tls { USERDB_TLS_NO, USERDB_TLS_STARTTLS, USERDB_TLS_YES };
struct userdb_proxy {
	char host[256];			/* numeric address or a DNS name (resolver) */
	unsigned port;			/* 0: the door's default (143, 110) */
	enum userdb_proxy_tls tls;
	char destuser[256];		/* "": the login the client gave */
};
/* 1 when v is a syntactically valid DNS name (host= may be one) */
int userdb_is_hostname(const char *v);
/* 1: proxied (*r filled); 0: served locally (or unknown user); -1: the
 * line says proxy=y but its fields are wrong (logged at load: refuse the
 * login for now rather than serve the user from the wrong place) */
int userdb_proxy(const struct userdb *db, const char *user, struct userdb_proxy *r);
/* the proxy fields of the user's line as stored ("proxy=y host=..."), ""
 * for none, NULL for an unknown user */
const char *userdb_proxy_fields(const struct userdb *db, const char *user);
/* parse the proxy keys among space-separated extra fields: 1 proxied, 0
 * not, -1 with *error_r (which key and why) */
int userdb_proxy_parse(const char *fields, struct userdb_proxy *r, const char **error_r);
/* the admin side (portcullis user set): each "KEY=VALUE" of kv sets one
 * proxy key, "KEY=" removes it; the result is checked as a whole before the
 * file is touched. A missing user gets a line with no password (it can log
 * in only through mail_proxy_auth = backend). Other fields are kept. */
int userdb_set_fields(const char *url, const char *user, char *const *kv, size_t n,
    const char **error_r) __attribute__((warn_unused_result));

/* user@domain with a safe local part and domain */
int userdb_name_is_valid(const char *user);

#endif
