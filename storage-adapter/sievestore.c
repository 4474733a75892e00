/*
 * sievestore.c - the Sieve script files under sieve_dir, their compiled
 * snapshot and the thread that keeps it in step. Contract in sievestore.h.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/conf.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "rules/sieve_ast.h"
#include "storage-adapter/sievestore.h"

int
sieve_level_parse(const char *s, enum sieve_level *l_r)
{
	if (strcmp(s, "server") == 0)
		*l_r = SIEVE_LEVEL_SERVER;
	else if (strcmp(s, "domain") == 0)
		*l_r = SIEVE_LEVEL_DOMAIN;
	else if (strcmp(s, "user") == 0)
		*l_r = SIEVE_LEVEL_USER;
	else
		return -1;
	return 0;
}

const char *
sieve_level_name(enum sieve_level l)
{
	return l == SIEVE_LEVEL_SERVER ? "server" : l == SIEVE_LEVEL_DOMAIN ? "domain" : "user";
}

static const char *
level_subdir(enum sieve_level l)
{
	return l == SIEVE_LEVEL_DOMAIN ? "domains" : "users";
}

/* a domain or user@domain usable as a file name: printable, no '/', no dot first */
static int
name_ok(enum sieve_level l, const char *n)
{
	size_t len = strlen(n);
	const char *at = strchr(n, '@');

	if (len == 0 || len > 255 || n[0] == '.' || n[0] == '-')
		return 0;
	for (const char *p = n; *p; p++)
		if (*p <= 0x20 || *p >= 0x7f || *p == '/' || *p == '\\')
			return 0;
	if (l == SIEVE_LEVEL_USER)
		return at != NULL && at != n && at[1] != '\0' && strchr(at + 1, '@') == NULL;
	return at == NULL;
}

int
sievestore_path(const char *dir, enum sieve_level l, const char *name, char **path_r,
    const char **error_r)
{
	char *low;

	if (l == SIEVE_LEVEL_SERVER) {
		*path_r = xasprintf("%s/server.sieve", dir);
		return 0;
	}
	if (name == NULL || !name_ok(l, name)) {
		*error_r = l == SIEVE_LEVEL_USER ? "expected USER@DOMAIN" : "expected a DOMAIN";
		return -1;
	}
	low = xstrdup(name);
	for (char *p = low; *p; p++)
		if (*p >= 'A' && *p <= 'Z' && (l == SIEVE_LEVEL_DOMAIN || p > strchr(low, '@')))
			*p = (char)(*p + 32);
	*path_r = xasprintf("%s/%s/%s.sieve", dir, level_subdir(l), low);
	free(low);
	return 0;
}

static int
read_file(const char *path, size_t cap, char **text_r, size_t *len_r)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	size_t len;

	if (f == NULL)
		return -1;
	buf = xmalloc(cap + 2);
	len = fread(buf, 1, cap + 1, f);
	if (ferror(f)) {
		fclose(f);
		free(buf);
		errno = EIO;
		return -1;
	}
	fclose(f);
	buf[len] = '\0';
	*text_r = buf;
	*len_r = len;
	return 0;
}

int
sievestore_read(const char *dir, enum sieve_level l, const char *name, char **text_r,
    size_t *len_r, const char **error_r)
{
	char *path;
	int rc;

	if (sievestore_path(dir, l, name, &path, error_r) < 0)
		return -1;
	rc = read_file(path, SIEVE_MAX_SCRIPT_SIZE, text_r, len_r);
	if (rc < 0)
		*error_r = errno == ENOENT ? "no such script" : "cannot read the script";
	free(path);
	return rc;
}

static int
fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc;

	if (fd < 0)
		return -1;
	rc = fsync(fd);
	close(fd);
	return rc;
}

static void
mkdir_p(const char *d)
{
	char *c = xstrdup(d);

	for (char *p = c + 1; *p; p++)
		if (*p == '/') {
			*p = '\0';
			(void)mkdir(c, 0755);
			*p = '/';
		}
	(void)mkdir(c, 0755);
	free(c);
}

int
sievestore_install(const char *dir, enum sieve_level l, const char *name, const char *text,
    size_t len, const char **error_r)
{
	static _Thread_local char err[300];
	char *path, *tmp, *pdir;
	int fd, rc = -1;

	if (sievestore_path(dir, l, name, &path, error_r) < 0)
		return -1;
	pdir = xstrdup(path);
	*strrchr(pdir, '/') = '\0';
	mkdir_p(pdir);
	tmp = xasprintf("%s/.%s.tmp.%ld", pdir, strrchr(path, '/') + 1, (long)getpid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		snprintf(err, sizeof(err), "cannot create %.200s: %s", tmp, strerror(errno));
		goto out;
	}
	for (size_t off = 0; off < len;) {
		ssize_t n = write(fd, text + off, len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			snprintf(err, sizeof(err), "cannot write %.200s: %s", tmp, strerror(errno));
			close(fd);
			unlink(tmp);
			goto out;
		}
		off += (size_t)n;
	}
	if (fsync(fd) < 0 || close(fd) < 0) {
		snprintf(err, sizeof(err), "cannot write %.200s: %s", tmp, strerror(errno));
		unlink(tmp);
		goto out;
	}
	if (rename(tmp, path) < 0) {
		snprintf(err, sizeof(err), "cannot rename to %.200s: %s", path, strerror(errno));
		unlink(tmp);
		goto out;
	}
	if (fsync_dir(pdir) < 0) {
		snprintf(err, sizeof(err), "cannot sync %.200s: %s", pdir, strerror(errno));
		goto out;
	}
	rc = 0;
out:
	if (rc < 0)
		*error_r = err;
	free(tmp);
	free(pdir);
	free(path);
	return rc;
}

int
sievestore_delete(const char *dir, enum sieve_level l, const char *name, const char **error_r)
{
	char *path, *pdir;
	int rc = 0;

	if (sievestore_path(dir, l, name, &path, error_r) < 0)
		return -1;
	if (unlink(path) < 0) {
		*error_r = errno == ENOENT ? "no such script" : "cannot remove the script";
		rc = -1;
	} else {
		pdir = xstrdup(path);
		*strrchr(pdir, '/') = '\0';
		(void)fsync_dir(pdir);
		free(pdir);
	}
	free(path);
	return rc;
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* names of NAME.sieve files in d, sorted */
static char **
scan(const char *d, size_t *n_r)
{
	DIR *dp = opendir(d);
	struct dirent *e;
	char **v = NULL;
	size_t n = 0;

	*n_r = 0;
	if (dp == NULL)
		return NULL;
	while ((e = readdir(dp)) != NULL && n < 100000) {
		size_t l = strlen(e->d_name);

		if (e->d_name[0] == '.' || l <= 6 || strcmp(e->d_name + l - 6, ".sieve") != 0)
			continue;
		v = xreallocarray(v, n + 1, sizeof(*v));
		v[n++] = xstrndup(e->d_name, l - 6);
	}
	closedir(dp);
	if (n > 0)
		qsort(v, n, sizeof(*v), cmp_str);
	*n_r = n;
	return v;
}

void
sievestore_list(const char *dir,
    void (*cb)(void *arg, enum sieve_level l, const char *name, const char *path), void *arg)
{
	char *p = xasprintf("%s/server.sieve", dir);
	struct stat st;

	if (stat(p, &st) == 0)
		cb(arg, SIEVE_LEVEL_SERVER, "", p);
	free(p);
	for (enum sieve_level l = SIEVE_LEVEL_DOMAIN; l <= SIEVE_LEVEL_USER; l++) {
		char *d = xasprintf("%s/%s", dir, level_subdir(l));
		size_t n;
		char **v = scan(d, &n);

		for (size_t i = 0; i < n; i++) {
			p = xasprintf("%s/%s.sieve", d, v[i]);
			cb(arg, l, v[i], p);
			free(p);
		}
		sieve_strv_free(v, n);
		free(d);
	}
}

void
sievestore_compile_opts(const char *dir, const struct sieve_limits *lim,
    struct sieve_compile_opts *o)
{
	static _Thread_local char global[4096];

	memset(o, 0, sizeof(*o));
	o->limits = lim;
	o->dir = dir;
	snprintf(global, sizeof(global), "%s/global", dir);
	o->global_dir = global;
}

/* ---- the compiled snapshot ---- */

static int
script_needs_body(const struct sieve_script *s, const char *text)
{
	for (size_t i = 0; i < s->ncaps; i++)
		if (strcmp(s->caps[i], "body") == 0)
			return 1;
	/* the size test needs the whole message too; a cheap, safe guess */
	return strstr(text, "size") != NULL || strstr(text, "SIZE") != NULL ||
	    strstr(text, "include") != NULL;
}

static unsigned long long
dir_sig(const char *d)
{
	size_t n;
	char **v = scan(d, &n);
	unsigned long long h = 1469598103934665603ULL;

	for (size_t i = 0; i < n; i++) {
		char *p = xasprintf("%s/%s.sieve", d, v[i]);
		struct stat st;

		if (stat(p, &st) == 0) {
			h = (h ^ (unsigned long long)st.st_mtim.tv_nsec) * 1099511628211ULL;
			h = (h ^ (unsigned long long)st.st_mtim.tv_sec) * 1099511628211ULL;
			h = (h ^ (unsigned long long)st.st_size) * 1099511628211ULL;
			h = (h ^ (unsigned long long)st.st_ino) * 1099511628211ULL;
		}
		for (const char *c = v[i]; *c; c++)
			h = (h ^ (unsigned char)*c) * 1099511628211ULL;
		free(p);
	}
	sieve_strv_free(v, n);
	return h;
}

static struct sieve_rules_script *
load_one(const char *dir, const struct sieve_limits *lim, const char *name, const char *path,
    const struct sieve_rules_script *old, int force)
{
	struct stat st;
	struct sieve_rules_script *rs;
	struct sieve_compile_opts o;
	struct sieve_errors err = { 0 };
	struct sieve_script *s = NULL;
	char *text;
	size_t len;

	if (stat(path, &st) < 0)
		return NULL;	/* gone: no script */
	if (old != NULL && !force && old->size == (long long)st.st_size &&
	    old->mtime_ns == (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec &&
	    old->ino == (unsigned long long)st.st_ino)
		return sieve_rules_script_ref((struct sieve_rules_script *)old);
	if (read_file(path, lim->max_script_size, &text, &len) < 0) {
		log_warn("sieve: cannot read %s: %s%s", path, strerror(errno),
		    old ? "; the previous version stays in force" : "");
		return sieve_rules_script_ref((struct sieve_rules_script *)old);
	}
	sievestore_compile_opts(dir, lim, &o);
	if (sieve_compile(path, text, len, &o, &s, &err) < 0) {
		for (size_t i = 0; i < err.n; i++)
			log_error("sieve: %s", err.msg[i]);
		log_error("sieve: %s refused (does not compile)%s", path,
		    old ? "; the previous version stays in force" : "; no script in force");
		sieve_errors_clear(&err);
		free(text);
		return sieve_rules_script_ref((struct sieve_rules_script *)old);
	}
	sieve_errors_clear(&err);
	rs = xcalloc(1, sizeof(*rs));
	atomic_init(&rs->refs, 1);
	rs->s = s;
	rs->path = xstrdup(path);
	rs->name = xstrdup(name);
	rs->size = (long long)st.st_size;
	rs->mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
	rs->ino = (unsigned long long)st.st_ino;
	rs->needs_body = script_needs_body(s, text);
	free(text);
	log_info("sieve: %s in force", path);
	return rs;
}

struct sieve_rules *
sievestore_load(const char *dir, const struct sieve_limits *lim, const struct sieve_rules *prev)
{
	struct sieve_rules *r = sieve_rules_new();
	char *gdir = xasprintf("%s/global", dir), *p, *ddir;
	int force;
	size_t n;
	char **v;

	r->global_sig = dir_sig(gdir);
	force = prev != NULL && prev->global_sig != r->global_sig;
	r->generation = prev != NULL ? prev->generation + 1 : 1;
	p = xasprintf("%s/server.sieve", dir);
	r->server = load_one(dir, lim, "", p, prev ? prev->server : NULL, force);
	free(p);
	ddir = xasprintf("%s/domains", dir);
	v = scan(ddir, &n);
	for (size_t i = 0; i < n; i++) {
		struct sieve_rules_script *s;

		for (char *c = v[i]; *c; c++)
			if (*c >= 'A' && *c <= 'Z')
				*c = (char)(*c + 32);
		if (r->ndom > 0 && strcmp(r->dom[r->ndom - 1]->name, v[i]) == 0)
			continue;
		p = xasprintf("%s/%s.sieve", ddir, v[i]);
		s = load_one(dir, lim, v[i], p, sieve_rules_domain(prev, v[i]), force);
		free(p);
		if (s == NULL)
			continue;
		r->dom = xreallocarray(r->dom, r->ndom + 1, sizeof(*r->dom));
		r->dom[r->ndom++] = s;
	}
	sieve_strv_free(v, n);
	free(ddir);
	free(gdir);
	return r;
}

/* one number that changes when any file of the snapshot changes */
static unsigned long long
tree_sig(const char *dir)
{
	char *p = xasprintf("%s/server.sieve", dir), *d;
	struct stat st;
	unsigned long long h = 0;

	if (stat(p, &st) == 0)
		h = ((unsigned long long)st.st_mtim.tv_nsec * 31 + (unsigned long long)st.st_mtim.tv_sec)
		    * 1099511628211ULL + (unsigned long long)st.st_size * 7 + st.st_ino;
	free(p);
	d = xasprintf("%s/domains", dir);
	h = h * 1315423911ULL ^ dir_sig(d);
	free(d);
	d = xasprintf("%s/global", dir);
	h = h * 2654435761ULL ^ dir_sig(d);
	free(d);
	return h;
}

struct sievewatch {
	char *dir;
	struct sieve_limits lim;
	struct sieve_rules_ref *ref;
	pthread_t th;
	atomic_int stop;
	unsigned long long sig;
};

static void *
watch_main(void *arg)
{
	struct sievewatch *w = arg;
	const struct timespec ts = { 0, 200 * 1000 * 1000 };

	while (!atomic_load(&w->stop)) {
		unsigned long long s;

		nanosleep(&ts, NULL);
		s = tree_sig(w->dir);
		if (s != w->sig) {
			const struct sieve_rules *prev = sieve_rules_ref_get(w->ref);

			w->sig = s;
			sieve_rules_ref_publish(w->ref, sievestore_load(w->dir, &w->lim, prev));
			sieve_rules_unref(&prev);
		}
	}
	return NULL;
}

struct sievewatch *
sievewatch_start(const char *dir, const struct sieve_limits *lim, struct sieve_rules_ref *ref,
    const char **error_r)
{
	struct sievewatch *w = xcalloc(1, sizeof(*w));

	w->dir = xstrdup(dir);
	w->lim = *lim;
	w->ref = ref;
	mkdir_p(dir);
	w->sig = tree_sig(dir);
	sieve_rules_ref_init(ref, sievestore_load(dir, lim, NULL));
	atomic_init(&w->stop, 0);
	if (pthread_create(&w->th, NULL, watch_main, w) != 0) {
		*error_r = "cannot start the sieve watcher thread";
		sieve_rules_ref_deinit(ref);
		free(w->dir);
		free(w);
		return NULL;
	}
	return w;
}

void
sievewatch_stop(struct sievewatch **wp)
{
	struct sievewatch *w = *wp;

	*wp = NULL;
	if (w == NULL)
		return;
	atomic_store(&w->stop, 1);
	pthread_join(w->th, NULL);
	free(w->dir);
	free(w);
}

void
sievestore_limits_conf(const struct conf *c, struct sieve_limits *l)
{
	sieve_limits_default(l);
	l->max_script_size = (size_t)conf_get_int(c, "sieve_max_script_size");
	l->max_nesting = (unsigned)conf_get_int(c, "sieve_max_nesting");
	l->max_actions = (unsigned)conf_get_int(c, "sieve_max_actions");
	l->max_redirects = (unsigned)conf_get_int(c, "sieve_max_redirects");
	l->max_include_depth = (unsigned)conf_get_int(c, "sieve_max_include_depth");
	l->max_cpu_steps = (unsigned long)conf_get_int(c, "sieve_max_cpu_steps");
}
