/*
 * smtp_sieve: the gateway's spool under Sieve scripts. A table of client
 * messages and scripts; each message is spooled in odd pieces, the scripts
 * run, and the copy filed into quarantine_dir is compared byte for byte:
 * what the header edits leave (kept fields copied as they were, folding
 * included), and that the body follows untouched.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/xmalloc.h"
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

static CU_TestInfo tests[] = {
	{ "quarantined copies as the scripts left them", test_rows },
	{ NULL, NULL },
};

void
test_smtp_sieve_register(void)
{
	unit_suite("smtp_sieve", tests);
}
