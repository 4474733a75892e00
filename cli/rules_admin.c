/*
 * rules_admin.c - the Sieve scripts of sieve_dir from the command line, and
 * what they do to one message (for `portcullis explain --message FILE`).
 *
 *   cmd_rules_admin(conf, argc, argv)   argv after "rules":
 *       set server FILE | set domain DOMAIN FILE | set user USER@DOMAIN FILE
 *           compile FILE as the daemon would (errors FILE:LINE:COLUMN, exit 1,
 *           nothing installed), then install it atomically
 *       show server | show domain DOMAIN | show user USER@DOMAIN
 *       del  server | del  domain DOMAIN | del  user USER@DOMAIN
 *       list
 *   rules_explain(...)   every level over a message file: per level, the
 *       actions and the script line that caused each
 *
 * `rules check FILE` lives in cli/rules_cmd.c (it needs no configuration).
 * Exit codes: 0 done, 1 refused or failed, 2 usage.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/conf.h"
#include "common/xmalloc.h"
#include "rules/engine.h"
#include "rules/sieve.h"
#include "rules/sieve_rules.h"
#include "storage-adapter/sievestore.h"

int cmd_rules_admin(struct conf *conf, int argc, char **argv);
int rules_explain(const struct conf *c, const char *msgpath, const char *from,
    char **rcpts, size_t nrcpt, const char *client_ip, const char *hostname, const char *helo,
    const char *auth, const char *country, int *refused_r);
int rules_feed_headers(const char *msgpath, struct engine_session *es);

static int
rules_usage(void)
{
	fprintf(stderr, "usage: portcullis rules check FILE\n"
	    "       portcullis rules set server|domain DOMAIN|user USER@DOMAIN FILE\n"
	    "       portcullis rules show|del server|domain DOMAIN|user USER@DOMAIN\n"
	    "       portcullis rules list\n");
	return 2;
}

static char *
slurp(const char *path, size_t cap, size_t *len_r)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	char *buf;

	if (f == NULL)
		return NULL;
	buf = xmalloc(cap + 2);
	*len_r = fread(buf, 1, cap + 1, f);
	if (ferror(f)) {
		free(buf);
		buf = NULL;
	} else {
		buf[*len_r] = '\0';
	}
	if (f != stdin)
		fclose(f);
	return buf;
}

/* "server" | "domain NAME" | "user NAME": consumed arguments, or -1 */
static int
parse_level(int argc, char **argv, enum sieve_level *l_r, const char **name_r)
{
	if (argc < 1 || sieve_level_parse(argv[0], l_r) < 0)
		return -1;
	if (*l_r == SIEVE_LEVEL_SERVER) {
		*name_r = NULL;
		return 1;
	}
	if (argc < 2)
		return -1;
	*name_r = argv[1];
	return 2;
}

static int
rules_set(const struct conf *c, enum sieve_level l, const char *name, const char *file)
{
	const char *dir = conf_get(c, "sieve_dir"), *err;
	struct sieve_limits lim;
	struct sieve_compile_opts o;
	struct sieve_errors errs = { 0 };
	struct sieve_script *s = NULL;
	char *text, *path;
	size_t len;
	int rc = 0;

	sievestore_limits_conf(c, &lim);
	if (sievestore_path(dir, l, name, &path, &err) < 0) {
		fprintf(stderr, "portcullis: rules set %s: %s\n", sieve_level_name(l), err);
		return 2;
	}
	text = slurp(file, lim.max_script_size, &len);
	if (text == NULL) {
		fprintf(stderr, "%s: cannot read: %s\n", file, strerror(errno));
		free(path);
		return 1;
	}
	if (len > lim.max_script_size) {
		fprintf(stderr, "%s: larger than sieve_max_script_size (%zu)\n", file,
		    lim.max_script_size);
		free(text);
		free(path);
		return 1;
	}
	sievestore_compile_opts(dir, &lim, &o);
	if (sieve_compile(file, text, len, &o, &s, &errs) < 0) {
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.msg[i]);
		fprintf(stderr, "%s: not installed (it does not compile)\n", file);
		rc = 1;
	} else if (sievestore_install(dir, l, name, text, len, &err) < 0) {
		fprintf(stderr, "portcullis: %s\n", err);
		rc = 1;
	} else {
		printf("installed %s%s%s: %s (in force within a second)\n", sieve_level_name(l),
		    name ? " " : "", name ? name : "", path);
	}
	sieve_script_free(&s);
	sieve_errors_clear(&errs);
	free(text);
	free(path);
	return rc;
}

static void
list_cb(void *arg, enum sieve_level l, const char *name, const char *path)
{
	(void)arg;
	printf("%-7s %-40s %s\n", sieve_level_name(l), *name ? name : "-", path);
}

int
cmd_rules_admin(struct conf *conf, int argc, char **argv)
{
	const char *dir = conf_get(conf, "sieve_dir"), *name, *err;
	enum sieve_level l;
	int n;

	if (argc < 1)
		return rules_usage();
	if (strcmp(argv[0], "list") == 0 && argc == 1) {
		sievestore_list(dir, list_cb, NULL);
		return 0;
	}
	n = parse_level(argc - 1, argv + 1, &l, &name);
	if (n < 0)
		return rules_usage();
	if (strcmp(argv[0], "set") == 0 && argc == n + 2)
		return rules_set(conf, l, name, argv[n + 1]);
	if (strcmp(argv[0], "show") == 0 && argc == n + 1) {
		char *text;
		size_t len;

		if (sievestore_read(dir, l, name, &text, &len, &err) < 0) {
			fprintf(stderr, "portcullis: rules show %s%s%s: %s\n", sieve_level_name(l),
			    name ? " " : "", name ? name : "", err);
			return 1;
		}
		fwrite(text, 1, len, stdout);
		free(text);
		return 0;
	}
	if (strcmp(argv[0], "del") == 0 && argc == n + 1) {
		if (sievestore_delete(dir, l, name, &err) < 0) {
			fprintf(stderr, "portcullis: rules del %s%s%s: %s\n", sieve_level_name(l),
			    name ? " " : "", name ? name : "", err);
			return 1;
		}
		printf("deleted %s%s%s\n", sieve_level_name(l), name ? " " : "", name ? name : "");
		return 0;
	}
	return rules_usage();
}

/* the domain of an address ("" when none), lower case */
static void
domain_of(const char *a, char *buf, size_t cap)
{
	const char *at = strrchr(a, '@');
	size_t n;

	buf[0] = '\0';
	if (at == NULL)
		return;
	n = strcspn(at + 1, ">");
	if (n >= cap)
		n = cap - 1;
	for (size_t i = 0; i < n; i++)
		buf[i] = (char)(at[1 + i] >= 'A' && at[1 + i] <= 'Z' ? at[1 + i] + 32 : at[1 + i]);
	buf[n] = '\0';
}

static char *
bare(const char *a)
{
	size_t n;

	while (*a == '<' || *a == ' ')
		a++;
	n = strcspn(a, ">");
	return xstrndup(a, n);
}

int
rules_explain(const struct conf *c, const char *msgpath, const char *from, char **rcpts,
    size_t nrcpt, const char *client_ip, const char *hostname, const char *helo, const char *auth,
    const char *country, int *refused_r)
{
	const char *dir = conf_get(c, "sieve_dir");
	struct sieve_limits lim;
	struct sieve_rules *r;
	const struct sieve_rules *cr;
	struct sieve_msg *m;
	struct sieve_door_result d;
	char dom[256], *text, *f, *t;
	size_t len;
	static const char *const names[] = { "pass", "reject", "discard", "quarantine" };

	sievestore_limits_conf(c, &lim);
	text = slurp(msgpath, 64 * 1024 * 1024, &len);
	if (text == NULL) {
		fprintf(stderr, "portcullis: --message %s: %s\n", msgpath, strerror(errno));
		return -1;
	}
	r = sievestore_load(dir, &lim, NULL);
	m = sieve_msg_parse(text, len);
	f = bare(from);
	t = bare(rcpts[0]);
	sieve_msg_set_env(m, "from", f);
	sieve_msg_set_env(m, "to", t);
	sieve_rules_msg_facts(m, client_ip, hostname, helo, auth, country);
	domain_of(t, dom, sizeof(dom));
	printf("%-15s sieve_dir %s; the recipient domain: %s\n", "RULES", dir, *dom ? dom : "none");
	/* one domain's rules per transaction: the others are sent again */
	for (size_t i = 1; i < nrcpt; i++) {
		char od[256], *b = bare(rcpts[i]);

		domain_of(b, od, sizeof(od));
		if (sieve_rules_domain(r, od) != sieve_rules_domain(r, dom))
			printf("%15s RCPT %s: 452 4.5.3 Too many recipients: %s is under other rules, "
			    "send to it in a new transaction [sieve-domains]\n", "", b,
			    *od ? od : "this recipient");
		free(b);
	}
	sieve_rules_eval(r, dom, m, &lim, &d);
	for (size_t i = 0; i < d.ntrace; i++)
		printf("%15s %s\n", "", d.trace[i]);
	if (d.action == SIEVE_DOOR_REJECT)
		printf("%15s verdict: reject 550 5.7.1 %s (tag sieve-reject, %s)\n", "", d.text,
		    d.where);
	else
		printf("%15s verdict: %s%s%s%s\n", "", names[d.action], d.tag ? " (tag " : "",
		    d.tag ? d.tag : "", d.tag ? ")" : "");
	for (size_t i = 0; i < d.nredirect; i++)
		printf("%15s added recipient: <%s>%s\n", "", d.redirect[i],
		    d.drop_original ? " (the original recipients dropped)" : "");
	if (d.hdr != NULL)
		printf("%15s header edited: %zu fields after the scripts\n", "", d.nhdr);
	*refused_r = d.action == SIEVE_DOOR_REJECT;
	/* the user's script runs at delivery into the store: shown for the first recipient */
	if (d.action == SIEVE_DOOR_PASS) {
		char *path;
		const char *err;

		if (sievestore_path(dir, SIEVE_LEVEL_USER, t, &path, &err) == 0) {
			struct sieve_compile_opts o;
			struct sieve_script *s = NULL;
			struct sieve_errors errs = { 0 };
			struct sieve_result *res = NULL;
			struct sieve_run_opts ro = { .limits = &lim };
			FILE *fp = fopen(path, "rb");

			if (fp == NULL) {
				printf("%15s user: no script (%s)\n", "", path);
			} else {
				fclose(fp);
				sievestore_compile_opts(dir, &lim, &o);
				if (sieve_compile_file(path, &o, &s, &errs) < 0) {
					for (size_t i = 0; i < errs.n; i++)
						printf("%15s user: does not compile: %s\n", "", errs.msg[i]);
				} else if (sieve_run(s, m, &ro, &res, &errs) < 0) {
					for (size_t i = 0; i < errs.n; i++)
						printf("%15s user %s: run failed: %s\n", "", path, errs.msg[i]);
				} else {
					for (size_t i = 0; i < res->n; i++)
						printf("%15s user %s: %s%s%s%s (line %u)\n", "", path,
						    sieve_action_name(&res->a[i]),
						    res->a[i].target ? " \"" : "",
						    res->a[i].target ? res->a[i].target : "",
						    res->a[i].target ? "\"" : "", res->a[i].line);
					if (res->implicit_keep)
						printf("%15s user %s: implicit keep\n", "", path);
				}
				sieve_result_free(&res);
				sieve_script_free(&s);
				sieve_errors_clear(&errs);
			}
			free(path);
		}
	}
	sieve_door_result_free(&d);
	sieve_msg_free(&m);
	cr = r;
	sieve_rules_unref(&cr);
	free(f);
	free(t);
	free(text);
	return 0;
}

/* the header names of a message file into the engine (relay_require_headers) */
int
rules_feed_headers(const char *msgpath, struct engine_session *es)
{
	size_t len;
	char *text = slurp(msgpath, 64 * 1024 * 1024, &len);
	struct sieve_msg *m;
	struct verdict v;
	int n;

	if (text == NULL)
		return -1;
	m = sieve_msg_parse(text, len);
	for (size_t i = 0; i < m->nhdr; i++)
		engine_header(es, m->hdr[i].name, &v);
	n = (int)m->nhdr;
	sieve_msg_free(&m);
	free(text);
	return n;
}
