/*
 * userdb - users and password hashes in a passwd-file (Dovecot's format).
 *
 *   userdb_load()           parse; a bad line is logged with FILE:LINE and skipped
 *   userdb_reload()         load again if the file changed; a missing, empty,
 *                           unreadable or garbled file keeps the last good one
 *   userdb_resolve()        local@domain -> the stored (canonical) name, case-insensitively
 *   userdb_has_user()       is local@domain a user
 *   userdb_verify()         check a password with libcrypt (constant-time compare)
 *   userdb_set_password()   add/replace a user (yescrypt hash, SCRAM-SHA-256 keys,
 *                           the CRAM-MD5 secret while CRAM-MD5 is enabled, the
 *                           APOP secret while pop3_apop = yes), atomically
 *   userdb_apop_secret()    the APOP secret (the password, decoded from apop=)
 *   userdb_delete()         remove a user, atomically
 *   userdb_proxy()          where a proxied user lives (proxy=y host=...)
 *   userdb_set_fields()     set/remove those fields (portcullis user set)
 *
 * Writes: exclusive flock on FILE.lock, temporary file, fsync, rename, fsync
 * of the directory. The file holds hashes: it is created 0600. Lines it
 * cannot parse are kept. A file the writer leaves without users keeps a
 * comment line, so that "no users" is never a zero-length file (which the
 * reload reads as a file caught mid-write, not as "no users").
 */
#include <crypt.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <stdint.h>
#include <unistd.h>

#include "common/base64.h"
#include "common/fsutil.h"
#include "common/log.h"
#include "common/pclimits.h"
#include "common/xmalloc.h"
#include "common/sasl.h"
#include "storage-adapter/crammd5.h"
#include "storage-adapter/userdb.h"

/* a line of ours: a long name, the hash, SCRAM and CRAM-MD5 keys and an APOP
 * secret of a 1,024-character password (1,368 in base64) */
#define USERDB_LINE_MAX 4096
#define APOP_SCHEME "{PLAIN.BASE64}"

struct uentry {
	char *user;	/* lower case */
	char *pass;
	char *cram;	/* CRAM-MD5 secret (64 hex) or NULL */
	char *scram;	/* "{SCRAM-SHA-256}ITER,SALT,STOREDKEY,SERVERKEY" or NULL */
	char *apop;	/* the APOP secret (the password, decoded) or NULL */
	char *pfields;	/* the proxy fields as stored, NULL none */
	int pstate;	/* 1 proxied (px), 0 local, -1 proxy=y with bad fields */
	struct userdb_proxy px;
};

struct userdb {
	char *path;
	struct uentry *v;
	size_t n;
	struct stat st;
	int exists;
	unsigned nbad;		/* lines skipped */
	int read_error;		/* errno of a failed read, 0 none */
	/* userdb_reload(): the file as last refused, so that it is not parsed
	 * (and its bad lines logged) again until it changes */
	struct stat refused;
	int refused_set;	/* 1: refused holds a stat; 2: the file was missing */
	char why[300];
};

#define USERDB_HEADER "# Portcullis users (Dovecot passwd-file): " \
	"user@domain:{CRYPT}hash::::::scram_sha_256={SCRAM-SHA-256}... [cram_md5=HEX] " \
	"[apop={PLAIN.BASE64}...]; " \
	"see portcullis user\n"


static char errbuf[600];

static const char *
url_path(const char *url, const char **error_r)
{
	if (strncmp(url, "file:", 5) != 0 || url[5] == '\0') {
		snprintf(errbuf, sizeof(errbuf), "users = %.200s: expected file:/path/to/users", url);
		*error_r = errbuf;
		return NULL;
	}
	return url + 5;
}

int
userdb_name_is_valid(const char *user)
{
	const char *at = strrchr(user, '@');
	size_t n = strlen(user);

	if (at == NULL || at == user || at[1] == '\0' || n > 254)
		return 0;
	for (const char *p = user; *p; p++) {
		unsigned char c = (unsigned char)*p;

		if (c <= 0x20 || c >= 0x7f || c == ':' || c == '/' || c == '\\' || c == '"')
			return 0;
		if (c == '@' && p != at)
			return 0;
	}
	return user[0] != '.' && at[1] != '.';
}

static int
cmp_user(const void *a, const void *b)
{
	return strcmp(((const struct uentry *)a)->user, ((const struct uentry *)b)->user);
}

/* the value of "key=" among space-separated extra fields, copied; NULL if absent */
static char *
extra_field(const char *f, const char *key)
{
	size_t kl = strlen(key);

	while (f != NULL && *f != '\0') {
		f += strspn(f, " ");
		if (strncmp(f, key, kl) == 0) {
			f += kl;
			return xstrndup(f, strcspn(f, " "));
		}
		f += strcspn(f, " ");
	}
	return NULL;
}

/* ---- proxy fields ---- */

static const char *const proxy_keys[] = { "proxy", "host", "port", "tls", "destuser" };
#define NPROXY_KEYS (sizeof(proxy_keys) / sizeof(proxy_keys[0]))

/* the index of token tok's key (up to '=' or its end) in proxy_keys, or -1 */
static int
proxy_key(const char *tok, size_t len)
{
	size_t kl = strcspn(tok, "= ");

	if (kl > len)
		kl = len;
	for (size_t i = 0; i < NPROXY_KEYS; i++)
		if (strlen(proxy_keys[i]) == kl && strncmp(tok, proxy_keys[i], kl) == 0)
			return (int)i;
	return -1;
}

/* a DNS name: letters, digits and hyphens in dot-separated labels of 1-63,
 * no hyphen at a label's ends, at most 253 in all, not all digits and dots
 * (that would be a mistyped address), an optional final dot */
int
userdb_is_hostname(const char *v)
{
	size_t n = strlen(v), label = 0;
	int alpha = 0;

	if (n == 0 || n > 253 || v[0] == '.')
		return 0;
	for (size_t i = 0; i < n; i++) {
		char ch = v[i];

		if (ch == '.') {
			if (label == 0 || v[i - 1] == '-')
				return 0;
			label = 0;
			continue;
		}
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		    (ch >= '0' && ch <= '9') || ch == '-'))
			return 0;
		if (ch == '-' && label == 0)
			return 0;
		if (!(ch >= '0' && ch <= '9') && ch != '-')
			alpha = 1;
		if (++label > 63)
			return 0;
	}
	return alpha && v[n - 1] != '-';
}

static int
check_field(int k, const char *v, struct userdb_proxy *r, int *proxy_r, const char **error_r)
{
	switch (k) {
	case 0:
		if (strcmp(v, "") == 0 || strcasecmp(v, "y") == 0 || strcasecmp(v, "yes") == 0)
			*proxy_r = 1;
		else if (strcasecmp(v, "n") == 0 || strcasecmp(v, "no") == 0)
			*proxy_r = 0;
		else
			goto bad;
		return 0;
	case 1: {
		unsigned char a[16];

		if (strlen(v) >= sizeof(r->host) || (inet_pton(AF_INET, v, a) != 1 &&
		    inet_pton(AF_INET6, v, a) != 1 && !userdb_is_hostname(v))) {
			snprintf(errbuf, sizeof(errbuf), "host=%.80s: expected a numeric IPv4 or IPv6 "
			    "address or a DNS name", v);
			*error_r = errbuf;
			return -1;
		}
		snprintf(r->host, sizeof(r->host), "%s", v);
		return 0;
	}
	case 2: {
		char *end;
		unsigned long p = strtoul(v, &end, 10);

		if (v[0] < '0' || v[0] > '9' || *end != '\0' || p < 1 || p > 65535) {
			snprintf(errbuf, sizeof(errbuf), "port=%.40s: expected a port number 1-65535", v);
			*error_r = errbuf;
			return -1;
		}
		r->port = (unsigned)p;
		return 0;
	}
	case 3:
		if (strcmp(v, "no") == 0)
			r->tls = USERDB_TLS_NO;
		else if (strcmp(v, "starttls") == 0)
			r->tls = USERDB_TLS_STARTTLS;
		else if (strcmp(v, "yes") == 0)
			r->tls = USERDB_TLS_YES;
		else
			goto bad;
		return 0;
	case 4:
		if (v[0] == '\0' || strlen(v) >= sizeof(r->destuser))
			goto bad;
		for (const char *p = v; *p; p++)
			if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || *p == ':' ||
			    *p == '"' || *p == '\\')
				goto bad;
		snprintf(r->destuser, sizeof(r->destuser), "%s", v);
		return 0;
	}
bad:
	snprintf(errbuf, sizeof(errbuf), "%s=%.80s: expected %s", proxy_keys[k], v,
	    k == 0 ? "y or n" : k == 3 ? "no, starttls or yes" :
	    "a login name (printable, no spaces, colons, quotes or backslashes)");
	*error_r = errbuf;
	return -1;
}

int
userdb_proxy_parse(const char *f, struct userdb_proxy *r, const char **error_r)
{
	int proxy = 0, seen_host = 0;
	char v[300];

	memset(r, 0, sizeof(*r));
	while (f != NULL && *f != '\0') {
		size_t len;
		int k;

		f += strspn(f, " ");
		len = strcspn(f, " ");
		if (len == 0)
			break;
		k = proxy_key(f, len);
		if (k >= 0) {
			const char *eq = memchr(f, '=', len);
			size_t vl = eq ? len - (size_t)(eq + 1 - f) : 0;

			if (vl >= sizeof(v))
				vl = sizeof(v) - 1;
			memcpy(v, eq ? eq + 1 : "", vl);
			v[vl] = '\0';
			if (k != 0 && eq == NULL) {
				snprintf(errbuf, sizeof(errbuf), "%s: expected %s=VALUE", proxy_keys[k],
				    proxy_keys[k]);
				*error_r = errbuf;
				return -1;
			}
			if (check_field(k, v, r, &proxy, error_r) < 0)
				return -1;
			seen_host |= k == 1;
		}
		f += len;
	}
	if (proxy && !seen_host) {
		*error_r = "proxy=y needs host=ADDRESS";
		return -1;
	}
	return proxy;
}

/* the proxy tokens of the extra fields f, copied ("" none) */
static char *
proxy_tokens(const char *f)
{
	size_t cap = f ? strlen(f) + 1 : 1, o = 0;
	char *out = xmalloc(cap);

	while (f != NULL && *f != '\0') {
		size_t len;

		f += strspn(f, " ");
		len = strcspn(f, " ");
		if (len == 0)
			break;
		if (proxy_key(f, len) >= 0) {
			if (o > 0)
				out[o++] = ' ';
			memcpy(out + o, f, len);
			o += len;
		}
		f += len;
	}
	out[o] = '\0';
	return out;
}

static void
secret_free(char *s)
{
	if (s != NULL) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

/* the APOP secret of "apop={PLAIN.BASE64}B64", decoded; NULL when absent
 * or not in that form (logged, never the value) */
static char *
apop_field(const char *f, const char *path, unsigned lineno)
{
	char *v = extra_field(f, "apop="), *out;
	size_t sl = strlen(APOP_SCHEME), n, len;

	if (v == NULL)
		return NULL;
	n = strlen(v);
	out = xmalloc(BASE64_DECODED_MAX(n) + 1);
	if (strncmp(v, APOP_SCHEME, sl) != 0 ||
	    base64_decode(v + sl, n - sl, out, BASE64_DECODED_MAX(n) + 1, &len) < 0 ||
	    len == 0 || memchr(out, '\0', len) != NULL) {
		log_warn("%s:%u: apop is not " APOP_SCHEME "BASE64 of a password; ignored", path,
		    lineno);
		explicit_bzero(out, BASE64_DECODED_MAX(n) + 1);
		free(out);
		out = NULL;
	}
	explicit_bzero(v, n);
	free(v);
	return out;
}

/* keep: a file that cannot be opened gives an empty db that says why */
static struct userdb *
load(const char *url, int keep, const char **error_r)
{
	const char *path = url_path(url, error_r);
	struct userdb *db;
	FILE *fp;
	char line[USERDB_LINE_MAX + 2];
	unsigned lineno = 0;
	size_t cap = 0;

	if (path == NULL)
		return NULL;
	db = xcalloc(1, sizeof(*db));
	db->path = xstrdup(path);
	fp = fopen(path, "r");
	if (fp == NULL) {
		if (errno == ENOENT)
			return db;
		if (keep) {
			db->read_error = errno;
			db->exists = 1;	/* there is a file: userdb_reload() tries it again */
			return db;
		}
		snprintf(errbuf, sizeof(errbuf), "cannot open %s: %s", path, strerror(errno));
		*error_r = errbuf;
		userdb_free(&db);
		return NULL;
	}
	if (fstat(fileno(fp), &db->st) == 0)
		db->exists = 1;
	while (fgets(line, sizeof(line), fp) != NULL) {
		size_t l = strlen(line);
		char *colon, *pass, *end;

		lineno++;
		if (l > 0 && line[l - 1] != '\n' && !feof(fp)) {
			int c;

			while ((c = getc(fp)) != EOF && c != '\n')
				;
			log_warn("%s:%u: line too long; skipped", path, lineno);
			db->nbad++;
			continue;
		}
		line[strcspn(line, "\r\n")] = '\0';
		if (line[0] == '\0' || line[0] == '#')
			continue;
		colon = strchr(line, ':');
		if (colon == NULL) {
			log_warn("%s:%u: expected user@domain:password:...; skipped", path, lineno);
			db->nbad++;
			continue;
		}
		*colon = '\0';
		pass = colon + 1;
		end = strchr(pass, ':');
		if (end != NULL)
			*end = '\0';
		/* field 8 holds extra fields "key=value ...";
		 * ours: scram_sha_256={SCRAM-SHA-256}... cram_md5=HEX */
		{
			char *f = end ? end + 1 : NULL, *cram, *scram, *apop;

			for (int k = 0; f != NULL && k < 5; k++) {
				f = strchr(f, ':');
				if (f != NULL)
					f++;
			}
			cram = extra_field(f, "cram_md5=");
			scram = extra_field(f, "scram_sha_256=");
			apop = apop_field(f, path, lineno);
			if (cram != NULL && strlen(cram) != CRAMMD5_SECRET_HEX) {
				free(cram);
				cram = NULL;
			}
			if (scram != NULL) {
				char a[64], b[64], c[64];
				unsigned it;

				if (strlen(scram) >= sizeof(((struct sasl_user *)0)->scram) ||
				    sasl_scram_parse(scram, &it, a, b, c) < 0) {
					log_warn("%s:%u: scram_sha_256 is not {SCRAM-SHA-256}ITER,SALT,"
					    "STOREDKEY,SERVERKEY; ignored", path, lineno);
					free(scram);
					scram = NULL;
				}
			}
			if (db->n == cap) {
				cap = cap ? cap * 2 : 16;
				db->v = xreallocarray(db->v, cap, sizeof(*db->v));
			}
			db->v[db->n].cram = cram;
			db->v[db->n].scram = scram;
			db->v[db->n].apop = apop;
			db->v[db->n].pfields = NULL;
			db->v[db->n].pstate = 0;
			{
				char *pf = proxy_tokens(f);
				const char *perr;

				if (pf[0] != '\0') {
					db->v[db->n].pfields = pf;
					db->v[db->n].pstate = userdb_proxy_parse(pf, &db->v[db->n].px, &perr);
					if (db->v[db->n].pstate < 0)
						log_warn("%s:%u: %s; the user's logins fail until it is "
						    "fixed", path, lineno, perr);
				} else {
					free(pf);
				}
			}
		}
		if (!userdb_name_is_valid(line)) {
			log_warn("%s:%u: \"%.64s\" is not a user@domain name; skipped", path, lineno, line);
			free(db->v[db->n].cram);
			free(db->v[db->n].scram);
			free(db->v[db->n].pfields);
			secret_free(db->v[db->n].apop);
			db->nbad++;
			continue;
		}
		for (char *q = line; *q; q++)
			*q = (char)tolower((unsigned char)*q);
		db->v[db->n].user = xstrdup(line);
		db->v[db->n].pass = xstrdup(pass);
		db->n++;
	}
	if (ferror(fp))
		db->read_error = errno ? errno : EIO;
	fclose(fp);
	if (db->n > 1)
		qsort(db->v, db->n, sizeof(*db->v), cmp_user);
	return db;
}

struct userdb *
userdb_load(const char *url, const char **error_r)
{
	return load(url, 0, error_r);
}

struct userdb *
userdb_open(const char *url, const char **error_r)
{
	return load(url, 1, error_r);
}

void
userdb_free(struct userdb **dbp)
{
	struct userdb *db = *dbp;

	if (db == NULL)
		return;
	for (size_t i = 0; i < db->n; i++) {
		free(db->v[i].user);
		free(db->v[i].pass);
		free(db->v[i].cram);
		free(db->v[i].scram);
		free(db->v[i].pfields);
		secret_free(db->v[i].apop);
	}
	free(db->v);
	free(db->path);
	free(db);
	*dbp = NULL;
}

static const struct uentry *
find(const struct userdb *db, const char *user)
{
	char key[320];
	size_t i;
	struct uentry k;

	for (i = 0; user[i] && i + 1 < sizeof(key); i++)
		key[i] = (char)tolower((unsigned char)user[i]);
	key[i] = '\0';
	k.user = key;
	return db->n ? bsearch(&k, db->v, db->n, sizeof(*db->v), cmp_user) : NULL;
}

const char *
userdb_resolve(const struct userdb *db, const char *local, const char *domain)
{
	char user[600];
	const struct uentry *e;

	if ((size_t)snprintf(user, sizeof(user), "%s@%s", local, domain) >= sizeof(user))
		return NULL;
	e = find(db, user);
	return e ? e->user : NULL;
}

int
userdb_has_user(const struct userdb *db, const char *local, const char *domain)
{
	return userdb_resolve(db, local, domain) != NULL;
}

const char *
userdb_password(const struct userdb *db, const char *user)
{
	const struct uentry *e = find(db, user);

	return e ? e->pass : NULL;
}

const char *
userdb_scram_secret(const struct userdb *db, const char *user)
{
	const struct uentry *e = find(db, user);

	return e ? e->scram : NULL;
}

const char *
userdb_cram_secret(const struct userdb *db, const char *user)
{
	const struct uentry *e = find(db, user);

	return e ? e->cram : NULL;
}

const char *
userdb_apop_secret(const struct userdb *db, const char *user)
{
	const struct uentry *e = find(db, user);

	return e ? e->apop : NULL;
}

int
userdb_proxy(const struct userdb *db, const char *user, struct userdb_proxy *r)
{
	const struct uentry *e = find(db, user);

	if (e == NULL || e->pstate == 0)
		return 0;
	if (e->pstate > 0)
		*r = e->px;
	return e->pstate;
}

const char *
userdb_proxy_fields(const struct userdb *db, const char *user)
{
	const struct uentry *e = find(db, user);

	return e == NULL ? NULL : e->pfields ? e->pfields : "";
}

size_t
userdb_count(const struct userdb *db)
{
	return db->n;
}

const char *
userdb_user_at(const struct userdb *db, size_t i)
{
	return db->v[i].user;
}

int
userdb_changed(const struct userdb *db)
{
	struct stat st;

	if (stat(db->path, &st) < 0)
		return db->exists;
	return !db->exists || st.st_ino != db->st.st_ino || st.st_size != db->st.st_size ||
	    st.st_mtim.tv_sec != db->st.st_mtim.tv_sec || st.st_mtim.tv_nsec != db->st.st_mtim.tv_nsec;
}

int
userdb_is_usable(const struct userdb *db, const char **why_r)
{
	static char why[400];

	if (!db->exists)
		snprintf(why, sizeof(why), "%s is missing", db->path);
	else if (db->read_error != 0)
		snprintf(why, sizeof(why), "cannot read %s: %s", db->path, strerror(db->read_error));
	else if (db->st.st_size == 0)
		snprintf(why, sizeof(why), "%s is empty", db->path);
	else if (db->n == 0 && db->nbad > 0)
		snprintf(why, sizeof(why), "%s has no valid user line (%u bad)", db->path, db->nbad);
	else
		return 1;
	*why_r = why;
	return 0;
}

static int
same_file(const struct stat *a, const struct stat *b)
{
	return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
	    a->st_mode == b->st_mode &&
	    a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

int
userdb_reload(struct userdb **dbp, const char *url, const char **error_r)
{
	struct userdb *db = *dbp, *nd;
	struct stat st;
	const char *err;

	if (stat(db->path, &st) < 0) {
		if (!db->exists)
			return 0;	/* started without a file: still "no users" */
		if (db->refused_set != 2) {
			snprintf(db->why, sizeof(db->why), "%s: %s", db->path, strerror(errno));
			db->refused_set = 2;
		}
		*error_r = db->why;
		return -1;
	}
	if (db->exists && same_file(&st, &db->st) && db->refused_set == 0)
		return 0;
	if (db->exists && same_file(&st, &db->st)) {
		db->refused_set = 0;	/* back to the file in force */
		return 0;
	}
	if (db->refused_set == 1 && same_file(&st, &db->refused)) {
		*error_r = db->why;
		return -1;
	}
	nd = userdb_load(url, &err);
	if (nd == NULL || !userdb_is_usable(nd, &err)) {
		snprintf(db->why, sizeof(db->why), "%s", err);
		db->refused = st;
		db->refused_set = 1;
		userdb_free(&nd);
		*error_r = db->why;
		return -1;
	}
	userdb_free(dbp);
	*dbp = nd;
	return 1;
}

int
userdb_verify(const struct userdb *db, const char *user, const char *password)
{
	return userdb_hash_verify(userdb_password(db, user), password);
}

int
userdb_hash_verify(const char *h, const char *password)
{
	/* a yescrypt hash of nothing in particular: unknown users cost the same */
	static const char dummy[] = "$y$j9T$vC4UjHIaizJVkSwO5L3Rq/$VELnDYnOCd784rBh.79KK/CiqIuoGzWZt1fs0a.XcU1";
	struct crypt_data *cd;
	const char *out;
	size_t n;
	int ok;

	int known = h != NULL;

	if (h == NULL)
		h = dummy;
	if (strncmp(h, "{CRYPT}", 7) == 0)
		h += 7;
	cd = xcalloc(1, sizeof(*cd));
	out = crypt_r(password, h, cd);
	n = strlen(h);
	ok = out != NULL && out[0] != '*' && strlen(out) == n;
	if (ok) {
		unsigned char diff = 0;

		for (size_t i = 0; i < n; i++)
			diff |= (unsigned char)(out[i] ^ h[i]);
		ok = diff == 0;
	}
	free(cd);
	return ok && known;
}

/* one rewrite: the old file (NULL: none yet) copied with user's line
 * replaced, added or dropped */
struct rewrite_ctx {
	FILE *in;
	const char *user, *newline;
	int create, found;
	/* or the new line made from the old one (NULL: none), freed here */
	char *(*edit)(const char *old, void *arg);
	void *edit_arg;
};

/* the extra fields of a line (after the 7th colon), or NULL */
static const char *
line_extra(const char *line)
{
	const char *f = line;

	for (int k = 0; f != NULL && k < 7; k++) {
		f = strchr(f, ':');
		if (f != NULL)
			f++;
	}
	return f;
}

static void
put_edited(FILE *out, struct rewrite_ctx *r, const char *old)
{
	char *nl = r->edit(old, r->edit_arg);

	fprintf(out, "%s\n", nl);
	explicit_bzero(nl, strlen(nl));
	free(nl);
}

static int
rewrite_lines(FILE *out, void *ctx, const char **error_r)
{
	struct rewrite_ctx *r = ctx;
	char line[USERDB_LINE_MAX + 2];
	size_t ul = strlen(r->user);

	if (r->in == NULL)
		fputs(USERDB_HEADER, out);
	while (r->in != NULL && fgets(line, sizeof(line), r->in) != NULL) {
		if (strncasecmp(line, r->user, ul) == 0 && line[ul] == ':') {
			r->found = 1;
			if (r->edit != NULL) {
				line[strcspn(line, "\r\n")] = '\0';
				put_edited(out, r, line);
				continue;
			}
			if (r->newline != NULL)
				fprintf(out, "%s\n", r->newline);
			continue;
		}
		fputs(line, out);
		if (line[0] && line[strlen(line) - 1] != '\n')
			fputc('\n', out);
	}
	if (r->in != NULL && ferror(r->in)) {
		snprintf(errbuf, sizeof(errbuf), "read error: %s", strerror(errno));
		*error_r = errbuf;
		return -1;
	}
	if (!r->found && (r->newline != NULL || r->edit != NULL)) {
		if (!r->create) {
			snprintf(errbuf, sizeof(errbuf), "no user %s", r->user);
			*error_r = errbuf;
			return -1;
		}
		if (r->edit != NULL)
			put_edited(out, r, NULL);
		else
			fprintf(out, "%s\n", r->newline);
	}
	if (ftell(out) == 0)	/* the last user went: say so, never a zero-length file */
		fputs(USERDB_HEADER, out);
	return 0;
}

/* rewrite the file under the lock: replace/add user's line, or drop it */
static int
rewrite_edit(const char *path, const char *user, const char *newline, int create, int *found_r,
    char *(*edit)(const char *old, void *arg), void *edit_arg, const char **error_r)
{
	char *lock = xasprintf("%s.lock", path);
	struct rewrite_ctx r = { NULL, user, newline, create, 0, edit, edit_arg };
	const char *err;
	int lfd, rc = -1;

	{
		/* the first user may come before the daemon made its state_dir */
		char *dir = xstrdup(path), *slash = strrchr(dir, '/');

		if (slash != NULL && slash != dir) {
			*slash = '\0';
			(void)fsutil_mkdir_p(dir, 0750, 0755);
		}
		free(dir);
	}
	lfd = open(lock, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
	if (lfd < 0 || flock(lfd, LOCK_EX) < 0) {
		snprintf(errbuf, sizeof(errbuf), "cannot lock %s: %s", lock, strerror(errno));
		*error_r = errbuf;
		goto done;
	}
	r.in = fopen(path, "r");
	if (r.in == NULL && errno != ENOENT) {
		snprintf(errbuf, sizeof(errbuf), "cannot open %s: %s", path, strerror(errno));
		*error_r = errbuf;
		goto done;
	}
	if (fsutil_replace_with(path, 0600, rewrite_lines, &r, &err) < 0) {
		if (err != errbuf)
			snprintf(errbuf, sizeof(errbuf), "%s", err);
		*error_r = errbuf;
		goto done;
	}
	if (found_r)
		*found_r = r.found;
	rc = 0;
done:
	if (r.in)
		fclose(r.in);
	if (lfd >= 0)
		close(lfd);
	free(lock);
	return rc;
}

static int
rewrite(const char *path, const char *user, const char *newline, int create, int *found_r,
    const char **error_r)
{
	return rewrite_edit(path, user, newline, create, found_r, NULL, NULL, error_r);
}

/* a new password line keeps the proxy fields of the old one */
static char *
keep_proxy(const char *old, void *arg)
{
	const char *nl = arg;
	char *pf = proxy_tokens(old ? line_extra(old) : NULL), *out;

	out = xasprintf("%s%s%s", nl, pf[0] ? " " : "", pf);
	free(pf);
	return out;
}

struct set_fields {
	char *const *kv;
	size_t n;
};

/* the old line with the proxy keys of kv set or removed (NULL: a new line) */
static char *
edit_fields(const char *old, void *arg)
{
	const struct set_fields *sf = arg;
	const char *extra = old ? line_extra(old) : NULL;
	size_t cap = (old ? strlen(old) : 0) + 16, o;
	char *out;

	for (size_t i = 0; i < sf->n; i++)
		cap += strlen(sf->kv[i]) + 1;
	out = xmalloc(cap + 16);
	if (old == NULL) {
		o = (size_t)sprintf(out, "%s:::::::", ((const char *)sf->kv[sf->n]));
	} else if (extra == NULL) {
		/* fewer than 8 fields: pad them */
		int colons = 0;

		for (const char *p = old; *p; p++)
			colons += *p == ':';
		o = (size_t)sprintf(out, "%s", old);
		while (colons++ < 7)
			out[o++] = ':';
	} else {
		o = (size_t)(extra - old);
		memcpy(out, old, o);
	}
	/* the old extra fields but those kv names */
	for (const char *f = extra; f != NULL && *f != '\0';) {
		size_t len, i;
		int k;

		f += strspn(f, " ");
		len = strcspn(f, " ");
		if (len == 0)
			break;
		k = proxy_key(f, len);
		for (i = 0; k >= 0 && i < sf->n; i++)
			if (proxy_key(sf->kv[i], strlen(sf->kv[i])) == k)
				break;
		if (k < 0 || i == sf->n) {
			if (out[o - 1] != ':')
				out[o++] = ' ';
			memcpy(out + o, f, len);
			o += len;
		}
		f += len;
	}
	for (size_t i = 0; i < sf->n; i++) {
		const char *eq = strchr(sf->kv[i], '=');

		if (eq != NULL && eq[1] == '\0')
			continue;	/* KEY=: removed */
		if (out[o - 1] != ':')
			out[o++] = ' ';
		o += (size_t)sprintf(out + o, "%s", sf->kv[i]);
	}
	out[o] = '\0';
	return out;
}

int
userdb_set_fields(const char *url, const char *user, char *const *kv, size_t n,
    const char **error_r)
{
	const char *path = url_path(url, error_r);
	struct userdb *db;
	struct userdb_proxy px;
	struct set_fields sf;
	char **v;
	char *old, *line;
	const char *cur;
	int rc;

	if (path == NULL)
		return -1;
	if (!userdb_name_is_valid(user)) {
		snprintf(errbuf, sizeof(errbuf), "\"%.100s\" is not a user@domain name", user);
		*error_r = errbuf;
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		const char *eq = strchr(kv[i], '=');
		int k = proxy_key(kv[i], strlen(kv[i]));
		int dummy;

		if (eq == NULL || k < 0) {
			snprintf(errbuf, sizeof(errbuf), "%.80s: expected KEY=VALUE with KEY one of "
			    "proxy, host, port, tls, destuser", kv[i]);
			*error_r = errbuf;
			return -1;
		}
		if (eq[1] != '\0' && check_field(k, eq + 1, &px, &dummy, error_r) < 0)
			return -1;
	}
	/* the whole result must hold together (proxy=y needs host=) */
	db = userdb_load(url, error_r);
	if (db == NULL)
		return -1;
	cur = userdb_proxy_fields(db, user);
	old = xasprintf("x:::::::%s", cur ? cur : "");
	userdb_free(&db);
	v = xcalloc(n + 1, sizeof(*v));
	memcpy(v, kv, n * sizeof(*v));
	v[n] = (char *)(uintptr_t)user;
	sf.kv = v;
	sf.n = n;
	line = edit_fields(old, &sf);
	free(old);
	rc = userdb_proxy_parse(line_extra(line), &px, error_r);
	free(line);
	if (rc < 0) {
		free(v);
		return -1;
	}
	rc = rewrite_edit(path, user, NULL, 1, NULL, edit_fields, &sf, error_r);
	free(v);
	return rc;
}

int
userdb_set_password(const char *url, const char *user, const char *password, int create,
    unsigned secrets, const char **error_r)
{
	const char *path = url_path(url, error_r);
	char *salt, *line, scram[200], cram[CRAMMD5_SECRET_HEX + 40] = "";
	char apop[sizeof(APOP_SCHEME) + BASE64_ENCODED_LEN(1024) + 8] = "";
	struct crypt_data *cd;
	const char *hash;
	int rc;

	if (path == NULL)
		return -1;
	if (!userdb_name_is_valid(user)) {
		snprintf(errbuf, sizeof(errbuf), "\"%.100s\" is not a user@domain name", user);
		*error_r = errbuf;
		return -1;
	}
	if (strlen(password) == 0 || strlen(password) > 1024 || strchr(password, '\n')) {
		*error_r = "the password must be one line of 1 to 1024 characters";
		return -1;
	}
	salt = crypt_gensalt_ra("$y$", 0, NULL, 0);
	if (salt == NULL) {
		*error_r = "libcrypt cannot make a yescrypt salt";
		return -1;
	}
	cd = xcalloc(1, sizeof(*cd));
	hash = crypt_r(password, salt, cd);
	free(salt);
	if (hash == NULL || hash[0] == '*') {
		free(cd);
		*error_r = "libcrypt failed to hash the password";
		return -1;
	}
	/* SCRAM-SHA-256 keys for every user: they are not a plaintext equivalent */
	if (sasl_scram_make(password, SASL_SCRAM_ITER, NULL, 0, scram, sizeof(scram), error_r) < 0) {
		free(cd);
		return -1;
	}
	if (secrets & USERDB_CRAM) {
		char secret[CRAMMD5_SECRET_HEX + 1];

		crammd5_secret(password, secret);
		snprintf(cram, sizeof(cram), " cram_md5=%s", secret);
		explicit_bzero(secret, sizeof(secret));
	}
	if (secrets & USERDB_APOP) {
		/* the password itself, recoverable: what APOP needs (README) */
		size_t k = (size_t)snprintf(apop, sizeof(apop), " apop=" APOP_SCHEME);

		base64_encode(password, strlen(password), apop + k);	/* <= 1,024: it fits */
	}
	line = xasprintf("%s:{CRYPT}%s::::::scram_sha_256=%s%s%s", user, hash, scram, cram, apop);
	explicit_bzero(cram, sizeof(cram));
	explicit_bzero(apop, sizeof(apop));
	free(cd);
	for (char *q = line; *q != ':'; q++)
		*q = (char)tolower((unsigned char)*q);
	rc = rewrite_edit(path, user, NULL, create, NULL, keep_proxy, line, error_r);
	explicit_bzero(line, strlen(line));
	free(line);
	return rc;
}

int
userdb_delete(const char *url, const char *user, int *found_r, const char **error_r)
{
	const char *path = url_path(url, error_r);

	if (path == NULL)
		return -1;
	return rewrite(path, user, NULL, 0, found_r, error_r);
}
