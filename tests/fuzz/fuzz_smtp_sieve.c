/*
 * libFuzzer target: the gateway's header rewrite under Sieve
 * (smtp-gateway/smtp_sieve.c). The input is a client's message; it is
 * spooled in two pieces, a server script adds a field on top, deletes
 * Subject and quarantines it, and the quarantined copy is checked: there
 * is exactly one, and it starts with the added field. Nothing crashes,
 * nothing leaks.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/xmalloc.h"
#include "smtp-gateway/smtp_sieve.h"
#include "storage-adapter/sievestore.h"

static char *qdir, *qnew;
static struct sieve_limits lim;
static const struct sieve_rules *rules;

static void
setup(void)
{
	char tmpl[] = "/tmp/pc-fuzz-smtpsieve-XXXXXX";
	char *dir = mkdtemp(tmpl), *sdir, *spath;
	const char *err;
	FILE *f;

	if (dir == NULL)
		abort();
	log_set_level(LOG_LVL_ERROR);
	qdir = xasprintf("%s/q", dir);
	qnew = xasprintf("%s/new", qdir);
	sdir = xasprintf("%s/s", dir);
	spath = xasprintf("%s/server.sieve", sdir);
	if (smtp_sieve_dirs(qdir, &err) < 0 || mkdir(sdir, 0700) < 0 ||
	    (f = fopen(spath, "w")) == NULL)
		abort();
	fputs("require [\"fileinto\", \"editheader\"];\n"
	    "addheader \"X-Fuzz\" \"on top\";\ndeleteheader \"Subject\";\n"
	    "fileinto \"Quarantine\";\n", f);
	fclose(f);
	sieve_limits_default(&lim);
	rules = sievestore_load(sdir, &lim, NULL);
	if (rules == NULL || rules->server == NULL)
		abort();
	free(sdir);
	free(spath);
}

/* the one file in qnew (removed), or NULL */
static char *
take_file(size_t *len_r)
{
	DIR *d = opendir(qnew);
	struct dirent *e;
	char *data = NULL;

	while (d != NULL && (e = readdir(d)) != NULL) {
		char *p;
		FILE *f;
		long n;

		if (e->d_name[0] == '.')
			continue;
		p = xasprintf("%s/%s", qnew, e->d_name);
		f = fopen(p, "rb");
		if (f == NULL || data != NULL)
			abort();
		fseek(f, 0, SEEK_END);
		n = ftell(f);
		rewind(f);
		data = xmalloc((size_t)n + 1);
		*len_r = fread(data, 1, (size_t)n, f);
		fclose(f);
		unlink(p);
		free(p);
	}
	if (d != NULL)
		closedir(d);
	return data;
}

int
LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	struct smtp_sieve_conf k = { 0 };
	struct smtp_msg m;
	struct smtp_sieve *sv = NULL;
	char *rcpt[] = { "u@example.com", NULL };
	int local[] = { 0 };
	const char *err;
	size_t split = n > 0 ? d[0] % (n + 1) : 0, len = 0;
	char *out;

	if (qdir == NULL)
		setup();
	k.quarantine_dir = qdir;
	k.myhostname = "mx.test";
	k.limits = &lim;
	memset(&m, 0, sizeof(m));
	m.sender = "a@example.org";
	m.rcpt = rcpt;
	m.rcpt_local = local;
	m.nrcpt = 1;
	m.downstream = 1;
	m.sieve = rules;
	m.sieve_rcpt = rcpt[0];
	if (smtp_sieve_open(&k, &m, 0, "", &sv, &err) < 0 ||
	    smtp_sieve_write(sv, (const char *)d, split, &err) < 0 ||
	    smtp_sieve_write(sv, (const char *)d + split, n - split, &err) < 0)
		abort();
	smtp_sieve_run(sv, &m);
	if (smtp_sieve_result(sv)->action != SIEVE_DOOR_QUARANTINE ||
	    smtp_sieve_result(sv)->tempfail)
		abort();
	smtp_sieve_free(&sv);
	out = take_file(&len);
	if (out == NULL)
		abort();
	if (n < SMTP_SIEVE_MAX_HEADER && (len < 16 || memcmp(out, "X-Fuzz: on top\r\n", 16) != 0))
		abort();
	free(out);
	return 0;
}
