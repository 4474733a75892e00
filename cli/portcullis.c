/*
 * portcullis - the admin command.
 *
 *   portcullis [-c FILE] [-o k=v]... kill|accept add ENTRY [--ttl TIME|never] [--reason TEXT]
 *                 (a re-add keeps what is not given and prints old -> new)
 *   portcullis [-c FILE] [-o k=v]... kill|accept del ENTRY
 *   portcullis [-c FILE] [-o k=v]... kill|accept list
 *   portcullis [-c FILE] [-o k=v]... kill|accept import FILE|- [--ttl TIME] [--reason TEXT]
 *   portcullis [-c FILE] [-o k=v]... kill|accept export [--full]
 *   portcullis [-c FILE] [-o k=v]... lists migrate FROM-URL TO-URL
 *   portcullis [-c FILE] [-o k=v]... lists reseed | lists accept-empty
 *                 (after a shared store lost its lists: push this node's
 *                 copy back, or take what the store holds)
 *   portcullis [-c FILE] [-o k=v]... user add|passwd USER@DOMAIN [--password-stdin]
 *   portcullis [-c FILE] [-o k=v]... user del USER@DOMAIN | user list
 *   portcullis [-c FILE] [-o k=v]... explain --client IP [--hostname NAME] [--helo H]
 *                 [--auth USER] --from ADDR --rcpt ADDR... [--header NAME]...
 *                 [--country CC]   (instead of geoip_database's answer)
 *   portcullis [-c FILE] [-o k=v]... reload
 *
 * Writes go to the list store named by `lists`; a running portcullisd picks
 * them up within a second. A bad ENTRY is refused and nothing is written.
 * `reload` sends SIGHUP to the daemon in pid_file and waits for its verdict
 * in state_dir/reload-status (exit 1 when the daemon refused the configuration).
 *   portcullis --help | --version | COMMAND --help   (no configuration needed)
 *
 * Exit: 0 done (explain: accepted), 1 refused by explain, 2 error (a usage
 * error says what is wrong, then prints the usage).
 */
#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "common/authmech.h"
#include "common/conf.h"
#include "common/log.h"
#include "common/mailaddr.h"
#include "common/owner.h"
#include "common/pclimits.h"
#include "common/stats.h"
#include "common/version.h"
#include "common/xmalloc.h"
#include "rules/engine.h"
#include "rules/policy.h"
#include "storage-adapter/liststore.h"
#include "storage-adapter/userdb.h"

int cmd_rules(int argc, char **argv);	/* cli/rules_cmd.c */
int cmd_rules_admin(struct conf *conf, int argc, char **argv);	/* cli/rules_admin.c */
int rules_explain(const struct conf *c, const char *msgpath, const char *from,
    char **rcpts, size_t nrcpt, const char *client_ip, const char *hostname, const char *helo,
    const char *auth, const char *country, int *refused_r);
int rules_feed_headers(const char *msgpath, struct engine_session *es);

#define DEFAULT_CONF "/etc/portcullis/portcullis.conf"

/* the usage text: each command's lines start with its first word */
static const char *const usage_lines[] = {
	"kill|accept add ENTRY [--ttl TIME|never] [--reason TEXT] [--force]",
	"kill|accept del ENTRY",
	"kill|accept list",
	"kill|accept import FILE|- [--ttl TIME] [--reason TEXT] [--skip-bad]",
	"kill|accept export [--full]",
	"lists migrate FROM-URL TO-URL",
	"lists reseed|accept-empty",
	"user add|passwd USER@DOMAIN [--password-stdin]",
	"user del USER@DOMAIN",
	"user set USER@DOMAIN KEY=VALUE...   (proxy=y host=ADDRESS [port=N] [tls=no|starttls|yes]\n"
	"          [destuser=NAME]; KEY= removes the key)",
	"user show USER@DOMAIN",
	"user list",
	"stats [--prometheus] [--per-node | --node NAME]",
	"reload    (the running portcullisd re-reads its configuration; waits for the verdict)",
	"rules check FILE",
	"rules set server|domain DOMAIN|user USER@DOMAIN FILE",
	"rules show|del server|domain DOMAIN|user USER@DOMAIN",
	"rules list",
	"explain --client IP [--hostname NAME] [--helo NAME] [--auth USER]\n"
	"          --from ADDR --rcpt ADDR [--rcpt ADDR]... [--header NAME]...\n"
	"          [--country CC] [--message FILE]",
};
static const char *command_words = "";	/* "kill add": for usage errors */

/* the usage of every command, or of those whose first word is cmd */
static void
usage_to(FILE *fp, const char *cmd)
{
	size_t cl = cmd ? strlen(cmd) : 0;

	if (cmd != NULL && (strcmp(cmd, "kill") == 0 || strcmp(cmd, "accept") == 0))
		cmd = "kill|accept", cl = strlen(cmd);
	fprintf(fp, "usage: portcullis [-c FILE] [-o key=value]... COMMAND\n"
	    "       portcullis --help | --version | COMMAND --help\n");
	for (size_t i = 0; i < sizeof(usage_lines) / sizeof(usage_lines[0]); i++)
		if (cmd == NULL || cl == 0 ||
		    (strncmp(usage_lines[i], cmd, cl) == 0 && usage_lines[i][cl] == ' '))
			fprintf(fp, "  %s\n", usage_lines[i]);
	if (cmd == NULL || cl == 0 || strcmp(cmd, "kill|accept") == 0)
		fprintf(fp, "ENTRY: 192.0.2.1, 192.0.2.0/24, 2001:db8::/32, host:mx.example.com,\n"
		    "       host:.example.com, user@example.com, @example.com, country:FR\n"
		    "TIME: seconds, or with a unit: 90s, 10m, 2h, 7d, 1w\n"
		    "--force: an accept entry wider than an IPv4 /8 or an IPv6 /16\n");
}

/* a command the usage names ("kill|accept add ..." names kill and accept) */
static int
command_is_known(const char *w)
{
	size_t wl = strlen(w);

	for (size_t i = 0; i < sizeof(usage_lines) / sizeof(usage_lines[0]); i++) {
		const char *p = usage_lines[i], *end = p + strcspn(p, " ");

		while (p < end) {
			size_t l = strcspn(p, "| ");

			if (l == wl && strncmp(p, w, l) == 0)
				return 1;
			p += l + (p[l] == '|');
		}
	}
	return 0;
}

/* say what is wrong, then how it is used; exit 2 */
static void
usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void
usage_error(const char *fmt, ...)
{
	va_list ap;
	char first[32];

	fprintf(stderr, "portcullis: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	snprintf(first, sizeof(first), "%.*s", (int)strcspn(command_words, " "), command_words);
	usage_to(stderr, first);
	exit(2);
}

/* a usage error the caller did not name: name the command at least */
static void
usage(void)
{
	if (command_words[0] != '\0')
		usage_error("wrong or missing arguments for \"%s\"", command_words);
	usage_error("which command?");
}

static void
die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void
die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "portcullis: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

static struct liststore *
open_store(const struct conf *c)
{
	const char *err;
	struct liststore *s = liststore_open_conf(c, &err);

	if (s == NULL)
		die("%s", err);
	return s;
}

static void fmt_time(long long t, char *buf, size_t cap);

/*
 * Every entry of list k (expired ones included) for reading: from the store,
 * or, when a shared store cannot answer, from this node's copy of it
 * (lists_cache), saying so and since when on stderr. *from_cache_r: 1 then.
 */
static int
read_list(const struct conf *c, struct liststore *s, enum list_kind k, struct entry_vec *v,
    int *from_cache_r)
{
	char *path, when[40], why[600];
	struct liststore *cache;
	struct stat st;
	const char *err;

	*from_cache_r = 0;
	if (liststore_load(s, k, v, &err) == 0)
		return 0;
	if (strcmp(liststore_scheme(s), "file") == 0)
		die("%s", err);
	snprintf(why, sizeof(why), "%s", err);
	entry_vec_clear(v);
	path = xasprintf("%s/%s.list", conf_get(c, "lists_cache"), list_kind_name(k));
	if (stat(path, &st) < 0) {
		free(path);
		die("%s (and no local copy in %s)", why, conf_get(c, "lists_cache"));
	}
	free(path);
	{
		char *url = xasprintf("file:%s", conf_get(c, "lists_cache"));

		cache = liststore_open(url, &err);
		free(url);
	}
	if (cache == NULL || liststore_load(cache, k, v, &err) < 0)
		die("%s (and the local copy: %s)", why, err);
	liststore_free(&cache);
	fmt_time((long long)st.st_mtime, when, sizeof(when));
	fprintf(stderr, "portcullis: %s; the %s list below is this node's copy (%s), as of %s\n",
	    why, list_kind_name(k), conf_get(c, "lists_cache"), when);
	*from_cache_r = 1;
	return 0;
}

/* the store and every entry of list k in it (expired ones included) */
static struct liststore *
load_list(const struct conf *c, enum list_kind k, struct entry_vec *v, int cache_ok)
{
	struct liststore *s = open_store(c);
	const char *err;
	int cached;

	if (cache_ok)
		(void)read_list(c, s, k, v, &cached);
	else if (liststore_load(s, k, v, &err) < 0)
		die("%s", err);
	return s;
}

static void
fmt_time(long long t, char *buf, size_t cap)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (t == 0) {
		snprintf(buf, cap, "never");
		return;
	}
	localtime_r(&tt, &tm);
	strftime(buf, cap, "%Y-%m-%dT%H:%M:%S%z", &tm);
}

static int
cmd_list(const struct conf *c, enum list_kind k, int argc, char **argv)
{
	struct liststore *s;
	struct entry_vec v = { 0 };
	long long now = (long long)time(NULL);
	size_t shown = 0;

	(void)argv;
	if (argc != 0)
		usage();
	s = load_list(c, k, &v, 1);
	for (size_t i = 0; i < v.n; i++) {
		const struct list_entry *e = &v.v[i];
		char added[40], expires[40];

		if (listentry_is_expired(e, now))
			continue;
		fmt_time(e->added, added, sizeof(added));
		fmt_time(e->expires, expires, sizeof(expires));
		printf("%-40s origin=%s added=%s expires=%s%s%s\n", e->key,
		    listentry_origin_name(e->origin), e->added ? added : "unknown", expires,
		    e->reason ? " reason=" : "", e->reason ? e->reason : "");
		shown++;
	}
	if (isatty(1))
		fprintf(stderr, "%zu %s entr%s\n", shown, list_kind_name(k), shown == 1 ? "y" : "ies");
	entry_vec_clear(&v);
	liststore_free(&s);
	return 0;
}

/* --ttl TIME or --reason TEXT at argv[*i]: 1 (and *i moved on), 0 if neither */
static int
ttl_reason_option(int argc, char **argv, int *i, long *ttl_r, const char **reason_r)
{
	if (strcmp(argv[*i], "--ttl") == 0 && *i + 1 < argc) {
		++*i;
		if (conf_parse_time(argv[*i], ttl_r) < 0 || *ttl_r <= 0 || *ttl_r > (long)MAX_TTL)
			die("--ttl \"%.40s\": expected a positive time such as 3600, 30m, 2h, 7d; "
			    "nothing written", argv[*i]);
		return 1;
	}
	if (strcmp(argv[*i], "--reason") == 0 && *i + 1 < argc) {
		*reason_r = argv[++*i];
		if (!listentry_reason_is_valid(*reason_r))
			die("--reason: one line of at most %d printable characters; nothing written",
			    MAX_REASON_LEN);
		return 1;
	}
	return 0;
}

/*
 * An accept entry lets every address it covers relay and pass the kill list:
 * one wider than an IPv4 /8 or an IPv6 /16 (0.0.0.0/0, ::/0 above all) is an
 * open relay more often than an intent, so it takes --force.
 */
static int
entry_is_too_wide(const struct list_entry *e)
{
	return e->kind == ENTRY_ADDR &&
	    e->cidr.len < (e->cidr.addr.family == 4 ? 8 : 16);
}


/* "reason \"a\" -> \"b\"" style notes of what a re-add changed, into buf */
static void
note_change(char *buf, size_t cap, const char *what, const char *from, const char *to)
{
	size_t n = strlen(buf);

	snprintf(buf + n, cap - n, "%s%s %s -> %s", n ? ", " : "", what, from, to);
}

static void
fmt_expiry(long long t, char *buf, size_t cap)
{
	if (t == 0)
		snprintf(buf, cap, "never");
	else
		fmt_time(t, buf, cap);
}

static void
fmt_reason(const char *r, char *buf, size_t cap)
{
	if (r == NULL || *r == '\0')
		snprintf(buf, cap, "(none)");
	else
		snprintf(buf, cap, "\"%s\"", r);
}

/*
 * add ENTRY [--ttl TIME|never] [--reason TEXT]. A re-add of an entry that is
 * there keeps every attribute the command line does not give (expiry,
 * reason, origin, time added) and says what changed, old -> new.
 */
static int
cmd_add(const struct conf *c, enum list_kind k, int argc, char **argv)
{
	struct list_entry e, old;
	const char *err, *reason = NULL;
	long ttl = 0;
	int force = 0;
	int permanent = 0, found = 0;
	long long now = (long long)time(NULL);
	struct liststore *s;
	char changes[1024] = "";

	if (argc < 1)
		usage_error("%s add: which ENTRY?", list_kind_name(k));
	if (listentry_parse_key(argv[0], &e, &err) < 0)
		die("\"%.100s\": %s; nothing written", argv[0], err);
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--force") == 0) {
			force = 1;
			continue;
		}
		if (strcmp(argv[i], "--ttl") == 0 && i + 1 < argc && strcmp(argv[i + 1], "never") == 0) {
			permanent = 1;
			ttl = 0;
			i++;
			continue;
		}
		if (!ttl_reason_option(argc, argv, &i, &ttl, &reason))
			die("unexpected argument \"%.60s\" (expected --ttl TIME|never, --reason TEXT "
			    "or --force)", argv[i]);
		if (ttl != 0)
			permanent = 0;
	}
	if (k == LIST_ACCEPT && entry_is_too_wide(&e) && !force)
		die("accept %s would let every address in it relay and bypass the kill list "
		    "(wider than /%d); add --force if that is what you want; nothing written",
		    e.key, e.cidr.addr.family == 4 ? 8 : 16);
	s = open_store(c);
	memset(&old, 0, sizeof(old));
	if (liststore_get(s, k, e.key, &old, &found, &err) < 0)
		die("%s", err);
	if (found && listentry_is_expired(&old, now))
		found = 0;	/* an expired leftover: a new entry */
	if (!found) {
		e.added = now;
		e.expires = ttl ? now + ttl : 0;
		e.origin = ORIGIN_ADMIN;
		e.reason = reason ? xstrdup(reason) : NULL;
	} else {
		char a[64], b[128 + MAX_REASON_LEN];

		e.added = old.added;
		e.origin = old.origin;
		e.expires = ttl ? now + ttl : permanent ? 0 : old.expires;
		e.reason = reason ? (*reason ? xstrdup(reason) : NULL) :
		    old.reason ? xstrdup(old.reason) : NULL;
		if (e.expires != old.expires) {
			char x[64];

			fmt_expiry(old.expires, a, sizeof(a));
			fmt_expiry(e.expires, x, sizeof(x));
			note_change(changes, sizeof(changes), "expires", a, x);
		}
		if (strcmp(old.reason ? old.reason : "", e.reason ? e.reason : "") != 0) {
			char x[MAX_REASON_LEN + 8];

			fmt_reason(old.reason, b, sizeof(b));
			fmt_reason(e.reason, x, sizeof(x));
			note_change(changes, sizeof(changes), "reason", b, x);
		}
	}
	if (found && changes[0] == '\0') {
		char a[64], b[MAX_REASON_LEN + 8];

		fmt_expiry(old.expires, a, sizeof(a));
		fmt_reason(old.reason, b, sizeof(b));
		printf("%s: %s is there already, unchanged (origin %s, expires %s, reason %s)\n",
		    list_kind_name(k), e.key, listentry_origin_name(old.origin), a, b);
	} else {
		if (liststore_add(s, k, &e, &err) < 0)
			die("%s", err);
		if (found)
			printf("%s: updated %s: %s (origin %s and other attributes kept)\n",
			    list_kind_name(k), e.key, changes, listentry_origin_name(e.origin));
		else
			printf("%s: added %s%s\n", list_kind_name(k), e.key,
			    e.expires ? " (with expiry)" : "");
	}
	listentry_clear(&old);
	listentry_clear(&e);
	liststore_free(&s);
	return 0;
}

static int
cmd_del(const struct conf *c, enum list_kind k, int argc, char **argv)
{
	struct list_entry e;
	const char *err;
	struct liststore *s;
	int found = 0;

	if (argc != 1)
		usage();
	if (listentry_parse_key(argv[0], &e, &err) < 0)
		die("\"%.100s\": %s", argv[0], err);
	s = open_store(c);
	if (liststore_del(s, k, e.key, &found, &err) < 0)
		die("%s", err);
	liststore_free(&s);
	if (!found) {
		fprintf(stderr, "portcullis: %s: no entry %s\n", list_kind_name(k), e.key);
		listentry_clear(&e);
		return 1;
	}
	printf("%s: deleted %s\n", list_kind_name(k), e.key);
	listentry_clear(&e);
	return 0;
}

/* ---- import / export / migrate ---- */

struct progress {
	const char *what;
	size_t total;
	double start;
	int tty;
};

static double
mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
show_progress(void *arg, size_t done)
{
	struct progress *p = arg;
	double el = mono() - p->start;
	int width = 30, fill = p->total ? (int)((double)width * (double)done / (double)p->total) : width;

	if (!p->tty)
		return;
	fprintf(stderr, "\r%s [%.*s%*s] %3d%% %zu/%zu %.0f/s ", p->what, fill,
	    "##############################", width - fill, "",
	    p->total ? (int)(100.0 * (double)done / (double)p->total) : 100, done, p->total,
	    el > 0 ? (double)done / el : 0.0);
	if (done >= p->total)
		fputc('\n', stderr);
}

/*
 * One import line: "ENTRY [--ttl TIME] [--reason TEXT...]" (the reason runs
 * to the end of the line), or a list-file line "ENTRY added=.. expires=..".
 */
static int
parse_import_line(char *line, long deflt_ttl, const char *deflt_reason, long long now,
    struct list_entry *e, const char **error_r)
{
	char *p = line, *tok;
	long ttl = deflt_ttl;
	const char *reason = deflt_reason;

	if (strstr(line, " --") == NULL && strchr(line, '=') != NULL) {
		/* origin= before any reason= (which runs to the end of the line) */
		char *rs = strstr(line, " reason="), keep = '\0';
		int has_origin, has_added;

		if (rs != NULL) {
			keep = *rs;
			*rs = '\0';
		}
		has_origin = strstr(line, " origin=") != NULL;
		has_added = strstr(line, " added=") != NULL;
		if (rs != NULL)
			*rs = keep;
		if (listentry_parse_line(line, e, error_r) < 0)
			return -1;
		/* a backup (export --full) keeps what it says; the rest is ours */
		if (!has_origin)
			e->origin = ORIGIN_IMPORT;
		if (!has_added)
			e->added = now;
		return 0;
	}
	while (*p == ' ' || *p == '\t')
		p++;
	tok = p;
	p += strcspn(p, " \t");
	if (*p != '\0')
		*p++ = '\0';
	if (listentry_parse_key(tok, e, error_r) < 0)
		return -1;
	for (;;) {
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\0')
			break;
		if (strncmp(p, "--ttl", 5) == 0 && (p[5] == ' ' || p[5] == '\t')) {
			char *v = p + 6, *end;

			while (*v == ' ')
				v++;
			end = v + strcspn(v, " \t");
			if (*end != '\0')
				*end++ = '\0';
			if (conf_parse_time(v, &ttl) < 0 || ttl <= 0 || ttl > (long)MAX_TTL) {
				*error_r = "--ttl: expected a positive time such as 3600, 30m, 2h, 7d";
				goto bad;
			}
			p = end;
		} else if (strncmp(p, "--reason", 8) == 0 && (p[8] == ' ' || p[8] == '\t')) {
			reason = p + 9;
			while (*reason == ' ')
				reason++;
			break;
		} else {
			*error_r = "expected --ttl TIME or --reason TEXT after the entry";
			goto bad;
		}
	}
	if (reason != NULL && *reason != '\0') {
		if (!listentry_reason_is_valid(reason)) {
			*error_r = "reason: at most 200 printable characters";
			goto bad;
		}
		e->reason = xstrdup(reason);
	}
	e->added = now;
	e->expires = ttl ? now + ttl : 0;
	e->origin = ORIGIN_IMPORT;
	return 0;
bad:
	listentry_clear(e);
	return -1;
}

static int
cmd_import(const struct conf *c, enum list_kind k, int argc, char **argv)
{
	const char *path, *reason = NULL, *err;
	long ttl = 0;
	int skip_bad = 0;
	FILE *fp;
	char *line = xmalloc(MAX_LIST_LINE + 2);
	struct entry_vec v = { 0 };
	unsigned lineno = 0, bad = 0;
	long long now = (long long)time(NULL);
	struct liststore *s;
	struct progress pr;
	double t0;

	if (argc < 1)
		usage();
	path = argv[0];
	for (int i = 1; i < argc; i++) {
		if (ttl_reason_option(argc, argv, &i, &ttl, &reason))
			continue;
		if (strcmp(argv[i], "--skip-bad") != 0)
			usage();
		skip_bad = 1;
	}
	fp = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
	if (fp == NULL)
		die("%s: %s", path, strerror(errno));
	for (;;) {
		int ch, n = 0, toolong = 0;
		struct list_entry e;

		while ((ch = getc_unlocked(fp)) != EOF && ch != '\n') {
			if (n < MAX_LIST_LINE)
				line[n++] = (char)ch;
			else
				toolong = 1;
		}
		if (ch == EOF && n == 0 && !toolong)
			break;
		lineno++;
		if (n > 0 && line[n - 1] == '\r')
			n--;
		line[n] = '\0';
		{
			const char *q = line;

			while (*q == ' ' || *q == '\t')
				q++;
			if (*q == '\0' || *q == '#')
				continue;
		}
		memset(&e, 0, sizeof(e));
		if (toolong) {
			err = "line too long";
		} else if (parse_import_line(line, ttl, reason, now, &e, &err) == 0) {
			if (v.n >= MAX_LIST_ENTRIES)
				die("%s:%u: more than %u entries", path, lineno, MAX_LIST_ENTRIES);
			entry_vec_push(&v, &e);
			continue;
		}
		if (++bad <= 20)
			fprintf(stderr, "portcullis: %s:%u: %s\n", path, lineno, err);
	}
	if (fp != stdin)
		fclose(fp);
	free(line);
	if (bad > 0 && !skip_bad) {
		if (bad > 20)
			fprintf(stderr, "portcullis: ... %u bad lines in all\n", bad);
		die("%u bad line(s): nothing imported (fix them, or give --skip-bad)", bad);
	}
	s = open_store(c);
	pr.what = "importing";
	pr.total = v.n;
	pr.start = t0 = mono();
	pr.tty = isatty(2);
	if (liststore_add_many(s, k, v.v, v.n, show_progress, &pr, &err) < 0)
		die("import stopped: %s", err);
	printf("%s: imported %zu entries in %.1f s%s\n", list_kind_name(k), v.n, mono() - t0,
	    bad ? " (bad lines skipped)" : "");
	entry_vec_clear(&v);
	liststore_free(&s);
	return 0;
}

static int
cmd_export(const struct conf *c, enum list_kind k, int argc, char **argv)
{
	struct liststore *s;
	struct entry_vec v = { 0 };
	long long now = (long long)time(NULL);
	int full = 0;

	if (argc == 1 && strcmp(argv[0], "--full") == 0)
		full = 1;
	else if (argc != 0)
		usage();
	s = load_list(c, k, &v, 0);
	for (size_t i = 0; i < v.n; i++) {
		const struct list_entry *e = &v.v[i];

		if (listentry_is_expired(e, now))
			continue;
		if (full) {
			/* the list-file form: added, expiry, origin kept for a restore */
			char *l = listentry_format_line(e);

			puts(l);
			free(l);
			continue;
		}
		fputs(e->key, stdout);
		if (e->expires)
			printf(" --ttl %lld", e->expires - now);
		if (e->reason)
			printf(" --reason %s", e->reason);
		putchar('\n');
	}
	entry_vec_clear(&v);
	liststore_free(&s);
	return fflush(stdout) == 0 ? 0 : 2;
}

static int
cmd_migrate(int argc, char **argv)
{
	struct liststore *from, *to;
	const char *err;
	long long now = (long long)time(NULL);

	if (argc != 2)
		usage();
	if ((from = liststore_open(argv[0], &err)) == NULL)
		die("%s", err);
	if ((to = liststore_open(argv[1], &err)) == NULL)
		die("%s", err);
	for (int k = 0; k < LIST_KINDS; k++) {
		struct entry_vec v = { 0 }, live = { 0 };
		struct progress pr;

		if (liststore_load(from, (enum list_kind)k, &v, &err) < 0)
			die("%s", err);
		for (size_t i = 0; i < v.n; i++)
			if (!listentry_is_expired(&v.v[i], now))
				entry_vec_push(&live, &v.v[i]);
		pr.what = list_kind_name((enum list_kind)k);
		pr.total = live.n;
		pr.start = mono();
		pr.tty = isatty(2);
		if (liststore_add_many(to, (enum list_kind)k, live.v, live.n, show_progress, &pr,
		    &err) < 0)
			die("%s list: copy stopped: %s", list_kind_name((enum list_kind)k), err);
		printf("%s: %zu entries copied (%zu expired left behind)\n",
		    list_kind_name((enum list_kind)k), live.n, v.n - live.n);
		entry_vec_clear(&v);
		entry_vec_clear(&live);
	}
	liststore_free(&from);
	liststore_free(&to);
	return 0;
}

/* ---- a shared store's generation mark ---- */

/* the daemon's local copy of a shared store (lists_cache) */
static struct liststore *
open_cache(const struct conf *c)
{
	char *url = xasprintf("file:%s", conf_get(c, "lists_cache"));
	const char *err;
	struct liststore *s = liststore_open(url, &err);

	free(url);
	if (s == NULL)
		die("lists_cache: %s", err);
	return s;
}

/* when the copy in lists_cache was written ("2026-..."), or "never" */
static void
cache_time(const struct conf *c, char *buf, size_t cap)
{
	char *path = xasprintf("%s/kill.list", conf_get(c, "lists_cache"));
	struct stat st;

	if (stat(path, &st) < 0)
		snprintf(buf, cap, "never");
	else
		fmt_time((long long)st.st_mtime, buf, cap);
	free(path);
}

/* the shared store, which must have lost its mark (else: refused, exit 1) */
static struct liststore *
open_unmarked(const struct conf *c, const char *what)
{
	struct liststore *s = open_store(c);
	char gen[64];
	const char *err;
	int found = 0;

	if (!liststore_has_meta(s) || strcmp(liststore_scheme(s), "file") == 0)
		die("lists %s: only for a shared store (lists = redis://...)", what);
	if (liststore_meta_get(s, LISTSTORE_GENERATION, gen, sizeof(gen), &found, &err) < 0)
		die("%s", err);
	if (found) {
		fprintf(stderr, "portcullis: lists %s: the lists in the store are marked (generation "
		    "%s); nothing to do\n", what, gen);
		exit(1);
	}
	return s;
}

/* mark the store's lists with a new generation; every node reloads them */
static void
mark_and_announce(struct liststore *s, char *gen, size_t cap)
{
	const char *err;
	int set;

	liststore_new_generation(gen, cap);
	if (liststore_meta_set(s, LISTSTORE_GENERATION, gen, 0, &set, &err) < 0)
		die("%s", err);
	for (int k = 0; k < LIST_KINDS; k++)	/* an empty add_many announces a reload */
		if (liststore_add_many(s, (enum list_kind)k, NULL, 0, NULL, NULL, &err) < 0)
			die("%s", err);
}

/* lists reseed: push this node's copy (lists_cache) back into a store that lost its lists */
static int
cmd_reseed(const struct conf *c, int argc)
{
	struct liststore *s, *cache;
	long long now = (long long)time(NULL);
	size_t count[LIST_KINDS] = { 0, 0 };
	char when[40], gen[64];
	const char *err;

	if (argc != 0)
		usage();
	s = open_unmarked(c, "reseed");
	cache = open_cache(c);
	cache_time(c, when, sizeof(when));
	for (int k = 0; k < LIST_KINDS; k++) {
		struct entry_vec v = { 0 }, live = { 0 };

		if (liststore_load(cache, (enum list_kind)k, &v, &err) < 0)
			die("lists_cache: %s", err);
		for (size_t i = 0; i < v.n; i++)
			if (!listentry_is_expired(&v.v[i], now))
				entry_vec_push(&live, &v.v[i]);
		if (liststore_add_many(s, (enum list_kind)k, live.v, live.n, NULL, NULL, &err) < 0)
			die("lists reseed: %s list: %s", list_kind_name((enum list_kind)k), err);
		count[k] = live.n;
		entry_vec_clear(&v);
		entry_vec_clear(&live);
	}
	mark_and_announce(s, gen, sizeof(gen));
	printf("lists reseed: %zu kill and %zu accept entries pushed from %s (this node's copy of "
	    "%s); generation %s\n", count[LIST_KILL], count[LIST_ACCEPT],
	    conf_get(c, "lists_cache"), when, gen);
	liststore_free(&cache);
	liststore_free(&s);
	return 0;
}

/* lists accept-empty: what the store holds now (after a loss) is the lists */
static int
cmd_accept_empty(const struct conf *c, int argc)
{
	struct liststore *s;
	size_t count[LIST_KINDS] = { 0, 0 };
	char gen[64];
	const char *err;

	if (argc != 0)
		usage();
	s = open_unmarked(c, "accept-empty");
	for (int k = 0; k < LIST_KINDS; k++) {
		struct entry_vec v = { 0 };

		if (liststore_load(s, (enum list_kind)k, &v, &err) < 0)
			die("%s", err);
		count[k] = v.n;
		entry_vec_clear(&v);
	}
	mark_and_announce(s, gen, sizeof(gen));
	printf("lists accept-empty: every node now enforces the store's lists as they are (%zu "
	    "kill, %zu accept entries); generation %s\n", count[LIST_KILL], count[LIST_ACCEPT],
	    gen);
	liststore_free(&s);
	return 0;
}

/* ---- users ---- */

/* one line from stdin, or twice from the terminal with echo off */
static char *
read_password(int from_stdin)
{
	char a[1100], b[1100];
	struct termios old, quiet;
	FILE *tty;
	size_t n;

	if (from_stdin) {
		if (fgets(a, sizeof(a), stdin) == NULL)
			die("--password-stdin: no password on standard input");
		a[strcspn(a, "\r\n")] = '\0';
		return xstrdup(a);
	}
	tty = fopen("/dev/tty", "r+");
	if (tty == NULL)
		die("no terminal to ask for the password: give it with --password-stdin");
	if (tcgetattr(fileno(tty), &old) < 0)
		die("cannot read the terminal settings: give the password with --password-stdin");
	quiet = old;
	quiet.c_lflag &= ~(tcflag_t)ECHO;
	fputs("Password: ", tty);
	fflush(tty);
	tcsetattr(fileno(tty), TCSAFLUSH, &quiet);
	if (fgets(a, sizeof(a), tty) == NULL)
		a[0] = '\0';
	fputs("\nPassword again: ", tty);
	fflush(tty);
	if (fgets(b, sizeof(b), tty) == NULL)
		b[0] = '\0';
	tcsetattr(fileno(tty), TCSAFLUSH, &old);
	fputs("\n", tty);
	fclose(tty);
	a[strcspn(a, "\r\n")] = '\0';
	b[strcspn(b, "\r\n")] = '\0';
	if (strcmp(a, b) != 0)
		die("the passwords differ; nothing changed");
	n = strlen(a);
	(void)n;
	return xstrdup(a);
}

static const char *
port_text(unsigned port)
{
	static char b[16];

	snprintf(b, sizeof(b), "%u", port);
	return b;
}

static int
cmd_user(const struct conf *c, int argc, char **argv)
{
	const char *url = conf_get(c, "users"), *err;

	if (argc < 1)
		usage();
	if (strcmp(argv[0], "list") == 0 && argc == 1) {
		struct userdb *db = userdb_load(url, &err);

		if (db == NULL)
			die("%s", err);
		for (size_t i = 0; i < userdb_count(db); i++)
			printf("%s\n", userdb_user_at(db, i));
		userdb_free(&db);
		return 0;
	}
	if (argc < 2)
		usage();
	if (strcmp(argv[0], "add") == 0 || strcmp(argv[0], "passwd") == 0) {
		int from_stdin = argc == 3 && strcmp(argv[2], "--password-stdin") == 0;
		int add = strcmp(argv[0], "add") == 0;
		unsigned mechs;
		char *pw;

		if (argc > 3 || (argc == 3 && !from_stdin))
			usage();
		if (!userdb_name_is_valid(argv[1]))
			die("\"%.100s\" is not a user@domain address", argv[1]);
		if (add) {
			struct userdb *db = userdb_load(url, &err);

			if (db == NULL)
				die("%s", err);
			if (userdb_password(db, argv[1]) != NULL)
				die("user %s exists already (use user passwd to change the password)", argv[1]);
			userdb_free(&db);
		}
		if (authmech_parse(c, &mechs, &err) < 0)
			die("%s", err);
		pw = read_password(from_stdin);
		/* each recoverable secret only while its mechanism is on (README) */
		if (userdb_set_password(url, argv[1], pw, add,
		    ((mechs & AUTH_MECH_CRAM) ? USERDB_CRAM : 0) |
		    (conf_get_bool(c, "pop3_apop") ? USERDB_APOP : 0), &err) < 0) {
			explicit_bzero(pw, strlen(pw));
			free(pw);
			die("%s", err);
		}
		explicit_bzero(pw, strlen(pw));
		free(pw);
		printf("user %s: %s\n", argv[1], add ? "added" : "password changed");
		return 0;
	}
	if (strcmp(argv[0], "set") == 0 && argc >= 3) {
		if (userdb_set_fields(url, argv[1], argv + 2, (size_t)argc - 2, &err) < 0)
			die("user %s: %s", argv[1], err);
		printf("user %s: set\n", argv[1]);
		return 0;
	}
	if (strcmp(argv[0], "show") == 0 && argc == 2) {
		struct userdb *db = userdb_load(url, &err);
		struct userdb_proxy px;
		const char *f, *pw;
		int r;

		if (db == NULL)
			die("%s", err);
		f = userdb_proxy_fields(db, argv[1]);
		if (f == NULL) {
			userdb_free(&db);
			fprintf(stderr, "portcullis: no user %s\n", argv[1]);
			return 1;
		}
		pw = userdb_password(db, argv[1]);
		r = userdb_proxy(db, argv[1], &px);
		printf("user: %s\npassword: %s\n", argv[1], pw && pw[0] ? "set" : "none");
		if (r > 0)
			printf("served by: backend %s port %s tls %s%s%s\n", px.host,
			    px.port ? port_text(px.port) : "default", px.tls == USERDB_TLS_YES ? "yes" :
			    px.tls == USERDB_TLS_STARTTLS ? "starttls" : "no",
			    px.destuser[0] ? " as " : "", px.destuser);
		else if (r < 0)
			printf("served by: nobody (the proxy fields are wrong: logins fail)\n");
		else
			printf("served by: the local store\n");
		printf("fields: %s\n", f);
		userdb_free(&db);
		return 0;
	}
	if (strcmp(argv[0], "del") == 0 && argc == 2) {
		int found = 0;

		if (userdb_delete(url, argv[1], &found, &err) < 0)
			die("%s", err);
		if (!found) {
			fprintf(stderr, "portcullis: no user %s\n", argv[1]);
			return 1;
		}
		printf("user %s: deleted\n", argv[1]);
		return 0;
	}
	usage();
	return 2;
}

static void
print_verdict(const char *stage, const char *arg, const struct verdict *v)
{
	printf("%-15s %-28.28s %-9s", stage, arg ? arg : "",
	    v->warned ? "warn" : engine_action_name(v->action));
	if (v->tag != NULL)
		printf(" %s %s %s [%s]%s", v->code, v->dsn, v->text, v->tag,
		    v->warned ? " (policy_mode = warn: passed)" : "");
	printf("\n%15s rule: %s%s\n", "", v->rule,
	    v->ban_seconds ? " -> client would be put on the kill list" : "");
}

/* the address as the engine judged it: the one the gateway logs, stores, sends on */
static void
print_judged(const struct mailaddr *a)
{
	char fmt[MAILADDR_TEXT_MAX];

	if (a != NULL)
		printf("%15s address: <%s>\n", "", mailaddr_format(a, fmt));
}

static int
cmd_explain(const struct conf *c, int argc, char **argv)
{
	const char *client = NULL, *hostname = NULL, *helo = NULL, *auth = NULL;
	const char *from = NULL, *country = NULL, *err, *message = NULL;
	char **rcpts = xcalloc((size_t)argc + 1, sizeof(char *));
	char **headers = xcalloc((size_t)argc + 1, sizeof(char *));
	size_t nrcpt = 0, nhdr = 0;
	struct policy *pol;
	struct liststore *s;
	struct entry_vec lists[LIST_KINDS] = { { 0 } };
	struct snapshot *snap;
	struct engine_session *es;
	struct ipaddr addr;
	struct verdict v;
	long long now = (long long)time(NULL);
	int refused = 0, accepted_rcpts = 0;

	for (int i = 0; i < argc; i++) {
		const char *o = argv[i];

		if (i + 1 >= argc)
			usage();
		if (strcmp(o, "--client") == 0) client = argv[++i];
		else if (strcmp(o, "--hostname") == 0) hostname = argv[++i];
		else if (strcmp(o, "--helo") == 0) helo = argv[++i];
		else if (strcmp(o, "--auth") == 0) auth = argv[++i];
		else if (strcmp(o, "--from") == 0) from = argv[++i];
		else if (strcmp(o, "--rcpt") == 0) rcpts[nrcpt++] = argv[++i];
		else if (strcmp(o, "--header") == 0) headers[nhdr++] = argv[++i];
		else if (strcmp(o, "--country") == 0) country = argv[++i];
		else if (strcmp(o, "--message") == 0) message = argv[++i];
		else usage();
	}
	if (client == NULL || from == NULL || nrcpt == 0)
		usage();
	if (cidr_addr_parse(client, &addr) < 0)
		die("--client \"%.60s\" is not an IP address", client);
	if (country != NULL && !(strlen(country) == 2 && isalpha((unsigned char)country[0]) &&
	    isalpha((unsigned char)country[1])))
		die("--country \"%.60s\" is not a two-letter country code", country);
	if (policy_new(c, &pol, &err) < 0)
		die("%s", err);
	s = open_store(c);
	for (int k = 0; k < LIST_KINDS; k++) {
		int cached;

		(void)read_list(c, s, (enum list_kind)k, &lists[k], &cached);
	}
	snap = snapshot_new(listset_build(&lists[LIST_KILL], now),
	    listset_build(&lists[LIST_ACCEPT], now));
	es = engine_session_new(pol);

	if (country != NULL)	/* instead of geoip_database's answer */
		engine_session_set_country(es, country);
	engine_connect(es, snap, &addr, hostname, now, &v);
	print_verdict("CONNECT", engine_client_text(es), &v);
	printf("%15s country=%s%s\n", "", engine_session_country(es) ?
	    engine_session_country(es) : "unknown", country != NULL ? " (--country)" :
	    pol->geoip == NULL ? " (no geoip_database)" : "");
	if (helo != NULL) {
		engine_helo(es, snap, helo, 5 + strlen(helo) + 2, now, &v);
		print_verdict("HELO", helo, &v);
		refused |= v.action == VERDICT_REJECT || v.action == VERDICT_TEMPFAIL;
	}
	if (!refused) {
		engine_mail(es, snap, from, 10 + strlen(from) + 4, auth, now, &v);
		print_verdict("MAIL", *from ? from : "<>", &v);
		print_judged(engine_sender_address(es));
		refused |= v.action == VERDICT_REJECT || v.action == VERDICT_TEMPFAIL;
	}
	for (size_t i = 0; !refused && i < nrcpt; i++) {
		engine_rcpt(es, snap, rcpts[i], 8 + strlen(rcpts[i]) + 4, now, &v);
		print_verdict("RCPT", rcpts[i], &v);
		print_judged(engine_rcpt_address(es, NULL));
		if (v.action == VERDICT_CONTINUE)
			accepted_rcpts++;
	}
	if (!refused && accepted_rcpts == 0)
		refused = 1;
	if (!refused) {
		if (nhdr == 0 && message != NULL) {
			if (rules_feed_headers(message, es) < 0)
				die("--message %.200s: cannot read it", message);
			engine_eom(es, &v);
			print_verdict("END-OF-MESSAGE", "", &v);
			refused |= v.action == VERDICT_REJECT || v.action == VERDICT_TEMPFAIL;
		} else if (nhdr == 0) {
			printf("%-15s %-28s %-9s\n%15s rule: no --header given; give --header From to "
			    "check relay_require_headers\n", "END-OF-MESSAGE", "", "skipped", "");
		} else {
			for (size_t i = 0; i < nhdr; i++)
				engine_header(es, headers[i], &v);
			engine_eom(es, &v);
			print_verdict("END-OF-MESSAGE", "", &v);
			refused |= v.action == VERDICT_REJECT || v.action == VERDICT_TEMPFAIL;
		}
	}
	/* the Sieve levels (cli/rules_admin.c) */
	if (!refused && message == NULL) {
		printf("%-15s not run: give --message FILE to run the Sieve rules\n", "RULES");
	} else if (!refused) {
		char ip[64];
		int rrej = 0;

		if (rules_explain(c, message, from, rcpts, nrcpt, cidr_addr_format(&addr, ip),
		    hostname, helo, auth, engine_session_country(es), &rrej) < 0)
			die("--message %.200s: cannot read it", message);
		refused |= rrej;
	}
	printf("result: %s\n", refused ? "refused" :
	    accepted_rcpts < (int)nrcpt ? "accepted for some recipients" : "accepted");
	engine_session_free(&es);
	snapshot_free(&snap);
	for (int k = 0; k < LIST_KINDS; k++)
		entry_vec_clear(&lists[k]);
	liststore_free(&s);
	policy_free(&pol);
	free(rcpts);
	free(headers);
	return refused ? 1 : 0;
}

/* this node's counters, from $state_dir/stats, as today: 0, or -1 with *error_r */
static int
stats_local(const struct conf *c, int prom, const char **error_r)
{
	char *path = xasprintf("%s/stats", conf_get(c, "state_dir"));
	char *text = NULL;
	size_t len = 0;
	FILE *fp;
	int rc = stats_open_readonly(path, error_r);

	free(path);
	if (rc < 0)
		return -1;
	fp = open_memstream(&text, &len);
	if (fp == NULL || stats_write_prometheus(fp) < 0)
		die("cannot read the counters");
	fclose(fp);
	if (prom) {
		fwrite(text, 1, len, stdout);
	} else {	/* one "series value" line each, without the format's comments */
		for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
			if (line[0] != '#')
				printf("%s\n", strncmp(line, "portcullis_", 11) == 0 ? line + 11 : line);
	}
	free(text);
	stats_close();
	return 0;
}

static int
series_by_name(const void *a, const void *b)
{
	return strcmp(((const struct stats_series *)a)->name, ((const struct stats_series *)b)->name);
}

static int
node_by_name(const void *a, const void *b)
{
	return strcmp(((const struct stats_node *)a)->node, ((const struct stats_node *)b)->node);
}

/* series sorted; node: "NODE " before each line (plain) or a comment (prom) */
static void
stats_print(const char *node, struct stats_series *v, size_t n, int prom)
{
	qsort(v, n, sizeof(*v), series_by_name);
	if (node != NULL && prom)
		printf("# node %s\n", node);
	for (size_t i = 0; i < n; i++) {
		if (prom)
			printf("portcullis_%s %llu\n", v[i].name, v[i].value);
		else if (node != NULL)
			printf("%s %s %llu\n", node, v[i].name, v[i].value);
		else
			printf("%s %llu\n", v[i].name, v[i].value);
	}
}

/*
 * The counters. A file store: this node's (state_dir/stats). A redis://
 * store: the sum over the live nodes (PREFIXstats:NODE), or one node
 * (--node NAME), or each (--per-node); Redis down: this node's, and a
 * note on stderr.
 */
static int
cmd_stats(const struct conf *c, int argc, char **argv)
{
	const char *err, *only = NULL;
	int prom = 0, per_node = 0, rc = 0;
	struct liststore *s;
	struct stats_node *nodes;
	size_t nn;

	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--prometheus") == 0)
			prom = 1;
		else if (strcmp(argv[i], "--per-node") == 0)
			per_node = 1;
		else if (strcmp(argv[i], "--node") == 0 && i + 1 < argc)
			only = argv[++i];
		else
			usage();
	}
	if (per_node && only != NULL)
		usage_error("stats: --node and --per-node do not go together");
	if (strncmp(conf_get(c, "lists"), "redis://", 8) != 0 &&
	    strncmp(conf_get(c, "lists"), "redis+unix://", 13) != 0) {
		if (per_node || only != NULL)
			usage_error("stats: --node and --per-node need a redis:// lists store "
			    "(a file store keeps this node's counters only)");
		if (stats_local(c, prom, &err) < 0)
			die("%s", err);
		return 0;
	}
	s = liststore_open_conf(c, &err);
	if (s == NULL || liststore_stats_fetch(s, &nodes, &nn, &err) < 0) {
		fprintf(stderr, "portcullis: %s\nportcullis: these are this node's counters only\n",
		    err);
		if (s != NULL)
			liststore_free(&s);
		if (stats_local(c, prom, &err) < 0)
			die("%s", err);
		return 0;
	}
	liststore_free(&s);
	qsort(nodes, nn, sizeof(*nodes), node_by_name);
	if (only != NULL) {
		size_t i;

		for (i = 0; i < nn && strcmp(nodes[i].node, only) != 0; i++)
			;
		if (i == nn) {
			fprintf(stderr, "portcullis: no live node \"%.64s\" in Redis\n", only);
			rc = 1;
		} else {
			stats_print(NULL, nodes[i].v, nodes[i].n, prom);
		}
	} else if (per_node) {
		for (size_t i = 0; i < nn; i++)
			stats_print(nodes[i].node, nodes[i].v, nodes[i].n, prom);
	} else {	/* the sum: every series of every node, sorted, runs added up */
		struct stats_series *all;
		size_t n = 0, m = 0;

		for (size_t i = 0; i < nn; i++)
			n += nodes[i].n;
		all = xcalloc(n + 1, sizeof(*all));
		for (size_t i = 0; i < nn; i++)
			for (size_t j = 0; j < nodes[i].n; j++)
				all[m++] = nodes[i].v[j];
		qsort(all, n, sizeof(*all), series_by_name);
		m = 0;
		for (size_t i = 0; i < n; i++) {
			if (m > 0 && strcmp(all[m - 1].name, all[i].name) == 0)
				all[m - 1].value += all[i].value;
			else
				all[m++] = all[i];
		}
		if (nn == 0)
			fprintf(stderr, "portcullis: no live node has shared its counters yet\n");
		stats_print(NULL, all, m, prom);
		free(all);
	}
	stats_nodes_free(nodes, nn);
	return rc;
}

/* state_dir/reload-status as the daemon wrote it: -1 until whole */
static int
reload_status_read(const char *path, unsigned long *gen_r, int *ok_r, char *msg, size_t cap)
{
	char buf[4096], res[16];
	FILE *fp = fopen(path, "r");
	size_t n;
	char *body, *end;

	if (fp == NULL)
		return -1;
	n = fread(buf, 1, sizeof(buf) - 1, fp);
	fclose(fp);
	buf[n] = '\0';
	if (sscanf(buf, "generation %lu\nresult %15s\n", gen_r, res) != 2)
		return -1;
	body = strchr(strchr(buf, '\n') + 1, '\n');
	end = strstr(buf, "\nend\n");
	if (body == NULL || end == NULL || end < body)
		return -1;
	*end = '\0';
	snprintf(msg, cap, "%s", body + 1);
	*ok_r = strcmp(res, "ok") == 0;
	return 0;
}

/* SIGHUP to the daemon, then wait (60 s at most) for what it made of it */
static int
cmd_reload(const struct conf *c, int argc, char **argv)
{
	char *status = xasprintf("%s/reload-status", conf_get(c, "state_dir"));
	const char *pidfile = conf_get(c, "pid_file");
	unsigned long gen0 = 0, gen;
	char msg[4096];
	long pid = 0;
	int ok;
	FILE *fp;

	(void)argv;
	if (argc != 0)
		usage();
	fp = fopen(pidfile, "r");
	if (fp == NULL || fscanf(fp, "%ld", &pid) != 1 || pid <= 1)
		die("cannot read a pid from pid_file %s: is portcullisd running?", pidfile);
	fclose(fp);
	(void)reload_status_read(status, &gen0, &ok, msg, sizeof(msg));
	if (kill((pid_t)pid, SIGHUP) < 0)
		die("cannot signal portcullisd (pid %ld): %s", pid, strerror(errno));
	for (int waited = 0; waited < 60000; waited += 50) {
		struct timespec ts = { 0, 50 * 1000 * 1000 };

		if (reload_status_read(status, &gen, &ok, msg, sizeof(msg)) == 0 && gen > gen0) {
			free(status);
			if (ok) {
				printf("portcullis: reloaded\n%s", msg);
				return 0;
			}
			fprintf(stderr, "portcullis: reload refused, the running configuration stays: %s",
			    msg);
			return 1;
		}
		nanosleep(&ts, NULL);
	}
	die("no answer from portcullisd (pid %ld) within 60 s: see its log", pid);
	return 2;
}

int
main(int argc, char **argv)
{
	const char *conffile = DEFAULT_CONF, *err;
	struct conf *conf = NULL;
	/* static: still reachable when --help or a usage error exits early */
	static char **overrides;
	size_t nover = 0;
	enum list_kind k;
	int i = 1, rc;

	log_open("portcullis", 1);
	log_set_level(LOG_LVL_WARN);
	overrides = xcalloc((size_t)argc + 1, sizeof(char *));
	while (i < argc && argv[i][0] == '-') {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage_to(stdout, NULL);
			return 0;
		}
		if (strcmp(argv[i], "--version") == 0) {
			printf("portcullis %s\n", PORTCULLIS_VERSION);
			return 0;
		}
		if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "-o") == 0) && i + 1 >= argc)
			usage_error("option %s needs an argument", argv[i]);
		if (strcmp(argv[i], "-c") == 0)
			conffile = argv[i + 1];
		else if (strcmp(argv[i], "-o") == 0)
			overrides[nover++] = argv[i + 1];
		else
			usage_error("unknown option %.40s", argv[i]);
		i += 2;
	}
	if (i >= argc)
		usage_error("which command?");
	/* cli/rules_cmd.c: "rules check FILE" needs no configuration */
	if (strcmp(argv[i], "rules") == 0 && i + 1 < argc && strcmp(argv[i + 1], "check") == 0) {
		rc = cmd_rules(argc - i - 1, argv + i + 1);
		free(overrides);
		return rc;
	}
	/* "kill add": what a usage error names */
	command_words = i + 1 < argc && argv[i + 1][0] != '-' ?
	    xasprintf("%s %s", argv[i], argv[i + 1]) : argv[i];
	/* COMMAND --help needs no configuration file */
	for (int j = i; j < argc; j++)
		if (strcmp(argv[j], "--help") == 0 || strcmp(argv[j], "-h") == 0) {
			usage_to(stdout, argv[i]);
			return 0;
		}
	if (!command_is_known(argv[i]))
		usage_error("unknown command \"%.40s\"", argv[i]);
	if (list_kind_parse(argv[i], &k) == 0 && i + 1 >= argc)
		usage_error("%s what? (add, del, list, import or export)", argv[i]);
	conf = conf_new();
	if (conf_load_file(conf, conffile, &err) < 0)
		die("%s", err);
	for (size_t j = 0; j < nover; j++)
		if (conf_set_override(conf, overrides[j], &err) < 0)
			die("%s", err);
	free(overrides);
	if (conf_finish(conf, &err) < 0)
		die("%s", err);

	if (strcmp(argv[i], "reload") == 0) {
		rc = cmd_reload(conf, argc - i - 1, argv + i + 1);
	} else if (strcmp(argv[i], "rules") == 0) {
		rc = cmd_rules_admin(conf, argc - i - 1, argv + i + 1);	/* cli/rules_admin.c */
	} else if (strcmp(argv[i], "explain") == 0) {
		rc = cmd_explain(conf, argc - i - 1, argv + i + 1);
	} else if (strcmp(argv[i], "stats") == 0) {
		rc = cmd_stats(conf, argc - i - 1, argv + i + 1);
	} else if (strcmp(argv[i], "user") == 0) {
		rc = cmd_user(conf, argc - i - 1, argv + i + 1);
	} else if (strcmp(argv[i], "lists") == 0 && i + 1 < argc &&
	    strcmp(argv[i + 1], "migrate") == 0) {
		struct liststore_options o = { conf_get(conf, "lists_prefix"),
		    conf_get(conf, "lists_password_file"), 60 };

		liststore_set_options(&o);
		rc = cmd_migrate(argc - i - 2, argv + i + 2);
	} else if (strcmp(argv[i], "lists") == 0 && i + 1 < argc &&
	    strcmp(argv[i + 1], "reseed") == 0) {
		rc = cmd_reseed(conf, argc - i - 2);
	} else if (strcmp(argv[i], "lists") == 0 && i + 1 < argc &&
	    strcmp(argv[i + 1], "accept-empty") == 0) {
		rc = cmd_accept_empty(conf, argc - i - 2);
	} else if (list_kind_parse(argv[i], &k) == 0 && i + 1 < argc) {
		const char *verb = argv[i + 1];
		int n = argc - i - 2;
		char **rest = argv + i + 2;

		if (strcmp(verb, "add") == 0)
			rc = cmd_add(conf, k, n, rest);
		else if (strcmp(verb, "del") == 0)
			rc = cmd_del(conf, k, n, rest);
		else if (strcmp(verb, "list") == 0)
			rc = cmd_list(conf, k, n, rest);
		else if (strcmp(verb, "import") == 0)
			rc = cmd_import(conf, k, n, rest);
		else if (strcmp(verb, "export") == 0)
			rc = cmd_export(conf, k, n, rest);
		else
			usage_error("%s: unknown action \"%.40s\" (expected add, del, list, import "
			    "or export)", argv[i], verb);
	} else if (command_is_known(argv[i])) {
		usage();
	} else {
		usage_error("unknown command \"%.40s\"", argv[i]);
	}
	/* files root just wrote must stay writable by the daemon's run_user */
	owner_fix_files(conf);
	conf_free(&conf);
	return rc;
}
