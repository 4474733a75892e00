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
#include <sys/file.h>
#include <sys/stat.h>
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
		}
		if (!userdb_name_is_valid(line)) {
			log_warn("%s:%u: \"%.64s\" is not a user@domain name; skipped", path, lineno, line);
			free(db->v[db->n].cram);
			free(db->v[db->n].scram);
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
};

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
	if (!r->found && r->newline != NULL) {
		if (!r->create) {
			snprintf(errbuf, sizeof(errbuf), "no user %s", r->user);
			*error_r = errbuf;
			return -1;
		}
		fprintf(out, "%s\n", r->newline);
	}
	if (ftell(out) == 0)	/* the last user went: say so, never a zero-length file */
		fputs(USERDB_HEADER, out);
	return 0;
}

/* rewrite the file under the lock: replace/add user's line, or drop it */
static int
rewrite(const char *path, const char *user, const char *newline, int create, int *found_r,
    const char **error_r)
{
	char *lock = xasprintf("%s.lock", path);
	struct rewrite_ctx r = { NULL, user, newline, create, 0 };
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
	rc = rewrite(path, user, line, create, NULL, error_r);
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
