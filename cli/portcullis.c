/*
 * portcullis - the admin command.
 *
 *   portcullis [-c FILE] [-o k=v]... kill|accept add ENTRY [--ttl TIME] [--reason TEXT]
 *   portcullis [-c FILE] [-o k=v]... kill|accept del ENTRY
 *   portcullis [-c FILE] [-o k=v]... kill|accept list
 *   portcullis [-c FILE] [-o k=v]... explain --client IP [--hostname NAME] [--helo H]
 *                 [--auth USER] --from ADDR --rcpt ADDR... [--header NAME]...
 *
 * Writes go to the list store named by `lists`; a running portcullisd picks
 * them up within a second. A bad ENTRY is refused and nothing is written.
 * Exit: 0 done (explain: accepted), 1 refused by explain, 2 error.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/conf.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "rules/engine.h"
#include "rules/policy.h"
#include "storage-adapter/liststore.h"

#define DEFAULT_CONF "/etc/portcullis/portcullis.conf"

static void
usage(void)
{
	fprintf(stderr,
	    "usage: portcullis [-c FILE] [-o key=value]... COMMAND\n"
	    "  kill|accept add ENTRY [--ttl TIME] [--reason TEXT]\n"
	    "  kill|accept del ENTRY\n"
	    "  kill|accept list\n"
	    "  explain --client IP [--hostname NAME] [--helo NAME] [--auth USER]\n"
	    "          --from ADDR --rcpt ADDR [--rcpt ADDR]... [--header NAME]...\n"
	    "ENTRY: 192.0.2.1, 192.0.2.0/24, 2001:db8::/32, host:mx.example.com,\n"
	    "       host:.example.com, user@example.com, @example.com\n"
	    "TIME: seconds, or with a unit: 90s, 10m, 2h, 7d, 1w\n");
	exit(2);
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
	struct liststore *s = liststore_open(conf_get(c, "lists"), &err);

	if (s == NULL)
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
	const char *err;
	size_t shown = 0;

	(void)argv;
	if (argc != 0)
		usage();
	s = open_store(c);
	if (liststore_load(s, k, &v, &err) < 0)
		die("%s", err);
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

static int
cmd_add(const struct conf *c, enum list_kind k, int argc, char **argv)
{
	struct list_entry e;
	const char *err, *reason = NULL;
	long ttl = 0;
	struct liststore *s;

	if (argc < 1)
		usage();
	if (listentry_parse_key(argv[0], &e, &err) < 0)
		die("\"%.100s\": %s; nothing written", argv[0], err);
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--ttl") == 0 && i + 1 < argc) {
			if (conf_parse_time(argv[++i], &ttl) < 0 || ttl <= 0 || ttl > (long)MAX_TTL)
				die("--ttl \"%.40s\": expected a positive time such as 3600, 30m, 2h, 7d; nothing written",
				    argv[i]);
		} else if (strcmp(argv[i], "--reason") == 0 && i + 1 < argc) {
			reason = argv[++i];
			if (!listentry_reason_is_valid(reason))
				die("--reason: one line of at most %d printable characters; nothing written",
				    MAX_REASON_LEN);
		} else {
			die("unexpected argument \"%.60s\" (expected --ttl TIME or --reason TEXT)", argv[i]);
		}
	}
	e.added = (long long)time(NULL);
	e.expires = ttl ? e.added + ttl : 0;
	e.origin = ORIGIN_ADMIN;
	e.reason = reason ? xstrdup(reason) : NULL;
	s = open_store(c);
	if (liststore_add(s, k, &e, &err) < 0)
		die("%s", err);
	printf("%s: added %s%s\n", list_kind_name(k), e.key, ttl ? " (with expiry)" : "");
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

static int
cmd_explain(const struct conf *c, int argc, char **argv)
{
	const char *client = NULL, *hostname = NULL, *helo = NULL, *auth = NULL;
	const char *from = NULL, *err;
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
		else usage();
	}
	if (client == NULL || from == NULL || nrcpt == 0)
		usage();
	if (cidr_addr_parse(client, &addr) < 0)
		die("--client \"%.60s\" is not an IP address", client);
	if (policy_new(c, &pol, &err) < 0)
		die("%s", err);
	s = open_store(c);
	for (int k = 0; k < LIST_KINDS; k++)
		if (liststore_load(s, (enum list_kind)k, &lists[k], &err) < 0)
			die("%s", err);
	snap = snapshot_new(listset_build(&lists[LIST_KILL], now),
	    listset_build(&lists[LIST_ACCEPT], now));
	es = engine_session_new(pol);

	engine_connect(es, snap, &addr, hostname, now, &v);
	print_verdict("CONNECT", engine_client_text(es), &v);
	if (helo != NULL) {
		engine_helo(es, snap, helo, 5 + strlen(helo) + 2, now, &v);
		print_verdict("HELO", helo, &v);
		refused |= v.action == VERDICT_REJECT || v.action == VERDICT_TEMPFAIL;
	}
	if (!refused) {
		engine_mail(es, snap, from, 10 + strlen(from) + 4, auth, now, &v);
		print_verdict("MAIL", *from ? from : "<>", &v);
		refused |= v.action == VERDICT_REJECT || v.action == VERDICT_TEMPFAIL;
	}
	for (size_t i = 0; !refused && i < nrcpt; i++) {
		engine_rcpt(es, snap, rcpts[i], 8 + strlen(rcpts[i]) + 4, now, &v);
		print_verdict("RCPT", rcpts[i], &v);
		if (v.action == VERDICT_CONTINUE)
			accepted_rcpts++;
	}
	if (!refused && accepted_rcpts == 0)
		refused = 1;
	if (!refused) {
		if (nhdr == 0) {
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

int
main(int argc, char **argv)
{
	const char *conffile = DEFAULT_CONF, *err;
	struct conf *conf = conf_new();
	char **overrides = xcalloc((size_t)argc + 1, sizeof(char *));
	size_t nover = 0;
	enum list_kind k;
	int i = 1, rc;

	log_open("portcullis", 1);
	log_set_level(LOG_LVL_WARN);
	while (i < argc && argv[i][0] == '-') {
		if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
			conffile = argv[i + 1];
		else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc)
			overrides[nover++] = argv[i + 1];
		else
			usage();
		i += 2;
	}
	if (i >= argc)
		usage();
	if (conf_load_file(conf, conffile, &err) < 0)
		die("%s", err);
	for (size_t j = 0; j < nover; j++)
		if (conf_set_override(conf, overrides[j], &err) < 0)
			die("%s", err);
	free(overrides);
	if (conf_finish(conf, &err) < 0)
		die("%s", err);

	if (strcmp(argv[i], "explain") == 0) {
		rc = cmd_explain(conf, argc - i - 1, argv + i + 1);
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
		else
			usage();
	} else {
		usage();
	}
	conf_free(&conf);
	return rc;
}
