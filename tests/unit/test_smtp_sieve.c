/*
 * smtp_sieve: the gateway's spool under Sieve scripts. A table of client
 * messages and scripts; each message is spooled in odd pieces, the scripts
 * run, and the copy filed into quarantine_dir is compared byte for byte:
 * what the header edits leave (kept fields copied as they were, folding
 * included), and that the body follows untouched. And the session side:
 * which recipients get 452 4.5.3 (one domain script per transaction), and
 * which messages are marked for the scripts.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/conf.h"
#include "common/xmalloc.h"
#include "rules/listset.h"
#include "rules/policy.h"
#include "smtp-gateway/smtp_sieve.h"
#include "storage-adapter/sievestore.h"
#include "tests/unit/unit.h"

#define REQ "require [\"fileinto\", \"editheader\", \"reject\"];\n"

static const struct {
	const char *name;
	const char *script;
	const char *msg;
	int action;		/* enum sieve_door_action */
	const char *want;	/* the quarantined copy; NULL: none */
} rows[] = {
	{ "add on top and at the bottom, delete, folded field kept as written",
	  REQ "addheader \"X-Top\" \"t\"; addheader :last \"X-Bottom\" \"b\";"
	  " deleteheader \"X-Del\"; fileinto \"Quarantine\";",
	  "A: 1\r\nX-Del: gone\r\nB: folded\r\n\tsecond\r\n\r\nbody\r\n.line\r\n",
	  SIEVE_DOOR_QUARANTINE,
	  "X-Top: t\r\nA: 1\r\nB: folded\r\n\tsecond\r\nX-Bottom: b\r\n\r\nbody\r\n.line\r\n" },
	{ "no edit: an exact copy",
	  REQ "fileinto \"Quarantine\";",
	  "A: 1\r\nB: \xe9t\xe9\r\n\r\n\r\nbody\r\n",
	  SIEVE_DOOR_QUARANTINE,
	  "A: 1\r\nB: \xe9t\xe9\r\n\r\n\r\nbody\r\n" },
	{ "header only, no empty line",
	  REQ "addheader :last \"X-Z\" \"z\"; fileinto \"Quarantine\";",
	  "A: 1\r\nB: 2\r\n",
	  SIEVE_DOOR_QUARANTINE,
	  "A: 1\r\nB: 2\r\nX-Z: z\r\n" },
	{ "a line that is not a field begins the body",
	  REQ "deleteheader \"B\"; fileinto \"Quarantine\";",
	  "A: 1\r\nB: 2\r\nnot a field\r\nrest\r\n",
	  SIEVE_DOOR_QUARANTINE,
	  "A: 1\r\nnot a field\r\nrest\r\n" },
	{ "of two equal fields the first deleted by :index keeps one",
	  "require [\"fileinto\", \"editheader\", \"index\"];\n"
	  "deleteheader :index 1 \"C\"; fileinto \"Quarantine\";",
	  "C: same\r\nA: 1\r\nC: same\r\n\r\nx\r\n",
	  SIEVE_DOOR_QUARANTINE,
	  "A: 1\r\nC: same\r\n\r\nx\r\n" },
	{ "reject: nothing filed",
	  REQ "reject \"no\";",
	  "A: 1\r\n\r\nx\r\n",
	  SIEVE_DOOR_REJECT, NULL },
};

static char *
only_file(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char *path = NULL;
	int n = 0;

	CU_ASSERT_PTR_NOT_NULL_FATAL(d);
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		n++;
		free(path);
		path = xasprintf("%s/%s", dir, e->d_name);
	}
	closedir(d);
	CU_ASSERT(n <= 1);
	return path;
}

static char *
slurp(const char *path, size_t *len_r)
{
	FILE *f = fopen(path, "rb");
	char *buf = xmalloc(1 << 20);

	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	*len_r = fread(buf, 1, 1 << 20, f);
	fclose(f);
	return buf;
}

static void
test_rows(void)
{
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		char *dir = unit_tmpdir();
		char *qdir = xasprintf("%s/q", dir), *sdir = xasprintf("%s/s", dir);
		char *spath = xasprintf("%s/server.sieve", sdir), *qnew = xasprintf("%s/new", qdir);
		struct sieve_limits lim;
		const struct sieve_rules *r;
		struct smtp_sieve_conf k;
		struct smtp_msg m;
		struct smtp_sieve *sv = NULL;
		const char *err = NULL, *p = rows[i].msg;
		char *rcpt[] = { "u@example.com", NULL };
		int local[] = { 0 };
		char *got;
		FILE *f;

		CU_ASSERT_EQUAL_FATAL(smtp_sieve_dirs(qdir, &err), 0);
		CU_ASSERT_EQUAL_FATAL(mkdir(sdir, 0700), 0);
		f = fopen(spath, "w");
		CU_ASSERT_PTR_NOT_NULL_FATAL(f);
		fputs(rows[i].script, f);
		fclose(f);
		sieve_limits_default(&lim);
		r = sievestore_load(sdir, &lim, NULL);
		CU_ASSERT_PTR_NOT_NULL_FATAL(r->server);
		memset(&k, 0, sizeof(k));
		k.quarantine_dir = qdir;
		k.myhostname = "mx.test";
		k.limits = &lim;
		memset(&m, 0, sizeof(m));
		m.sender = "a@example.org";
		m.rcpt = rcpt;
		m.rcpt_local = local;
		m.nrcpt = 1;
		m.downstream = 1;
		m.sieve = r;
		m.sieve_rcpt = rcpt[0];
		CU_ASSERT_EQUAL_FATAL(smtp_sieve_open(&k, &m, 0, "", &sv, &err), 0);
		/* odd pieces, as the loop spools them */
		for (size_t n, left = strlen(p); left > 0; p += n, left -= n) {
			n = left < 3 ? left : 3;
			CU_ASSERT_EQUAL_FATAL(smtp_sieve_write(sv, p, n, &err), 0);
		}
		smtp_sieve_run(sv, &m);
		if (smtp_sieve_result(sv)->action != (enum sieve_door_action)rows[i].action ||
		    smtp_sieve_result(sv)->tempfail)
			fprintf(stderr, "\n%s: action %d tempfail %d %s\n", rows[i].name,
			    smtp_sieve_result(sv)->action, smtp_sieve_result(sv)->tempfail,
			    smtp_sieve_result(sv)->err);
		CU_ASSERT_EQUAL(smtp_sieve_result(sv)->action, rows[i].action);
		got = only_file(qnew);
		if (rows[i].want == NULL) {
			CU_ASSERT_PTR_NULL(got);
		} else {
			size_t len = 0;
			char *data;

			CU_ASSERT_PTR_NOT_NULL_FATAL(got);
			data = slurp(got, &len);
			if (len != strlen(rows[i].want) || memcmp(data, rows[i].want, len) != 0)
				fprintf(stderr, "\n%s: got [%.*s]\n", rows[i].name, (int)len, data);
			CU_ASSERT_EQUAL(len, strlen(rows[i].want));
			CU_ASSERT(memcmp(data, rows[i].want, len) == 0);
			free(data);
		}
		free(got);
		smtp_sieve_free(&sv);
		/* nothing left in tmp/ */
		{
			char *qtmp = xasprintf("%s/tmp", qdir), *left = only_file(qtmp);

			CU_ASSERT_PTR_NULL(left);
			free(left);
			free(qtmp);
		}
		sieve_rules_unref(&r);
		{
			char *cmd = xasprintf("rm -rf '%s'", dir);

			if (system(cmd) != 0)
				fprintf(stderr, "cannot remove %s\n", dir);
			free(cmd);
		}
		free(dir);
		free(qdir);
		free(sdir);
		free(spath);
		free(qnew);
	}
}

/* one command line in, the last reply code out (0: none) */
static int
feed(struct smtp_proto *sp, const char *line)
{
	size_t olen;
	const char *out;
	int code = 0;

	smtp_proto_input(sp, line, strlen(line), 1000);
	out = smtp_proto_output(sp, &olen);
	for (size_t i = 0; i + 3 < olen; ) {
		const char *eol = memchr(out + i, '\n', olen - i);

		if (out[i + 3] == ' ')
			code = atoi(out + i);
		i = eol ? (size_t)(eol - out) + 1 : olen;
	}
	smtp_proto_output_done(sp, olen);
	return code;
}

static void
put_script(const char *dir, const char *rel, const char *text)
{
	char *p = xasprintf("%s/%s", dir, rel);
	FILE *f;

	f = fopen(p, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs(text, f);
	fclose(f);
	free(p);
}

static void
test_rcpt_domains(void)
{
	static const struct {
		const char *name;
		int server;		/* a server script exists */
		const char *rcpts;	/* space separated */
		const char *want;	/* RCPT replies */
		const char *domain;	/* the message's domain for the scripts; NULL: none run */
	} t[] = {
		{ "one domain under a script", 0, "a@sub.example.com b@sub.example.com", "250 250",
		  "sub.example.com" },
		{ "a second domain script: 452", 0, "a@sub.example.com b@other.example.com",
		  "250 452", "sub.example.com" },
		{ "no script, then a script: 452", 0, "a@example.com b@sub.example.com", "250 452",
		  NULL },
		{ "a script, then none: 452", 0, "a@sub.example.com b@example.com", "250 452",
		  "sub.example.com" },
		{ "server script only: any domains together", 1, "a@example.com b@plain.example.com",
		  "250 250", "example.com" },
		{ "server script, domain scripts still split", 1, "a@example.com b@sub.example.com",
		  "250 452", "example.com" },
		{ "no scripts for these domains: nothing runs", 0, "a@example.com b@example.com",
		  "250 250", NULL },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char *dir = unit_tmpdir(), *ddir = xasprintf("%s/domains", dir);
		char *rc = xstrdup(t[i].rcpts), *save = NULL, got[64] = "";
		struct sieve_limits lim;
		struct sieve_rules_ref ref;
		struct conf *c = conf_new();
		struct policy *pol;
		struct snapref snaps;
		struct entry_vec none = { 0 };
		struct smtp_params p;
		struct smtp_proto *sp;
		struct ipaddr a;
		struct smtp_msg *m;
		const char *err;

		CU_ASSERT_EQUAL_FATAL(mkdir(ddir, 0700), 0);
		put_script(ddir, "sub.example.com.sieve", "keep;\n");
		put_script(ddir, "other.example.com.sieve", "keep;\n");
		if (t[i].server)
			put_script(dir, "server.sieve", "keep;\n");
		sieve_limits_default(&lim);
		sieve_rules_ref_init(&ref, sievestore_load(dir, &lim, NULL));
		CU_ASSERT_FATAL(conf_load_string(c, "t", "mydomains = example.com sub.example.com "
		    "other.example.com plain.example.com\nrelay_networks = 192.0.2.0/24\nrelayhost = [192.0.2.9]:25\n",
		    &err) == 0 && conf_finish(c, &err) == 0 && policy_new(c, &pol, &err) == 0);
		snapref_init(&snaps, snapshot_new(listset_build(&none, 0), listset_build(&none, 0)));
		memset(&p, 0, sizeof(p));
		p.pol = pol;
		p.snaps = &snaps;
		p.myhostname = "mx.example.com";
		p.banner = "mx.example.com ESMTP";
		p.have_relayhost = 1;
		p.sieve = &ref;
		CU_ASSERT_FATAL(cidr_addr_parse("192.0.2.1", &a) == 0);	/* may relay */
		sp = smtp_proto_new(&p);
		smtp_proto_start(sp, &a, NULL, 1000);
		CU_ASSERT(feed(sp, "EHLO c.example\r\n") == 250);
		CU_ASSERT(feed(sp, "MAIL FROM:<s@o.example>\r\n") == 250);
		for (char *r = strtok_r(rc, " ", &save); r != NULL; r = strtok_r(NULL, " ", &save)) {
			char *line = xasprintf("RCPT TO:<%s>\r\n", r);

			snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%d",
			    got[0] ? " " : "", feed(sp, line));
			free(line);
		}
		if (strcmp(got, t[i].want) != 0)
			fprintf(stderr, "\n  %s: RCPT replies %s, want %s\n", t[i].name, got,
			    t[i].want);
		CU_ASSERT_STRING_EQUAL(got, t[i].want);
		CU_ASSERT(feed(sp, "DATA\r\n") == 354);
		CU_ASSERT(feed(sp, "Subject: x\r\n\r\nx\r\n.\r\n") == 0);
		m = smtp_proto_pending(sp);
		CU_ASSERT_PTR_NOT_NULL_FATAL(m);
		CU_ASSERT_EQUAL(m->sieve != NULL, t[i].domain != NULL || t[i].server);
		if (t[i].domain != NULL && m->sieve != NULL)
			CU_ASSERT_STRING_EQUAL(m->sieve_domain, t[i].domain);
		smtp_proto_free(&sp);
		snapref_deinit(&snaps);
		policy_free(&pol);
		conf_free(&c);
		sieve_rules_ref_deinit(&ref);
		{
			char *cmd = xasprintf("rm -rf '%s'", dir);

			if (system(cmd) != 0)
				fprintf(stderr, "cannot remove %s\n", dir);
			free(cmd);
		}
		free(rc);
		free(ddir);
		free(dir);
	}
}

static CU_TestInfo tests[] = {
	{ "quarantined copies as the scripts left them", test_rows },
	{ "one domain script per transaction (452 4.5.3)", test_rcpt_domains },
	{ NULL, NULL },
};

void
test_smtp_sieve_register(void)
{
	unit_suite("smtp_sieve", tests);
}
