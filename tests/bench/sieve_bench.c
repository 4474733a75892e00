/*
 * sieve-bench - Sieve evaluations per second for a 100-rule server script
 * on a 20 KB message, one core (issue 10 "Measured").
 *
 *   sieve-bench [SECONDS]     (default 2 per figure)
 *
 * The script: 100 rules cycling through header :contains, address :domain,
 * envelope :is, header :matches, size :over, exists and header :regex, none
 * of which matches (the worst case: every rule runs), then a keep. Figures:
 *   run     sieve_run() on a message parsed once (what each level costs)
 *   parse   sieve_msg_parse() of the 20 KB text, then sieve_run()
 *   body    the same script with 10 of its rules as body :contains (the
 *           body read and searched)
 *   gateway the three scripts of tests/bench/sieve_gateway_bench.py (server,
 *           domain, user: 100 rules each, none matching) on a 1 KB message
 *           as smtp-source sends it: one parse, then the three runs, as the
 *           gateway does per message (its extra CPU per message, less I/O)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/xmalloc.h"
#include "rules/sieve.h"

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *
make_script(int body)
{
	size_t cap = 64 * 1024, n = 0;
	char *s = xmalloc(cap);

	n += (size_t)snprintf(s + n, cap - n, "require [\"fileinto\", \"envelope\", \"reject\", "
	    "\"regex\"%s];\n", body ? ", \"body\"" : "");
	for (int i = 0; i < 100; i++) {
		const char *t;
		char buf[256];

		switch (body && i % 10 == 9 ? 7 : i % 7) {
		case 0: snprintf(buf, sizeof(buf), "header :contains \"subject\" \"lottery%d\"", i);
			break;
		case 1: snprintf(buf, sizeof(buf), "address :domain :is \"from\" \"spam%d.example\"", i);
			break;
		case 2: snprintf(buf, sizeof(buf), "envelope :is \"from\" \"bulk%d@spam.example\"", i);
			break;
		case 3: snprintf(buf, sizeof(buf), "header :matches \"x-mailer\" \"*Blaster%d*\"", i);
			break;
		case 4: snprintf(buf, sizeof(buf), "size :over %dM", 50 + i);
			break;
		case 5: snprintf(buf, sizeof(buf), "exists \"x-spam-flag-%d\"", i);
			break;
		case 6: snprintf(buf, sizeof(buf), "header :regex \"subject\" \"^(win|cash)%d[0-9]+$\"",
			    i);
			break;
		default: snprintf(buf, sizeof(buf), "body :contains \"unsubscribe-now-%d\"", i);
			break;
		}
		t = (i % 3 == 0) ? "fileinto \"Junk\"; stop;" : (i % 3 == 1) ?
		    "reject \"rule matched\";" : "discard; stop;";
		n += (size_t)snprintf(s + n, cap - n, "if %s { %s }\n", buf, t);
	}
	snprintf(s + n, cap - n, "keep;\n");
	return s;
}

static char *
make_message(size_t *len_r)
{
	size_t cap = 24 * 1024, n = 0;
	char *m = xmalloc(cap);

	n += (size_t)snprintf(m + n, cap - n,
	    "Received: from mx.example.org (mx.example.org [192.0.2.1])\r\n"
	    "\tby mx.example.com with ESMTPS id 4Xyz; Sun, 6 Dec 2026 21:00:00 +0000\r\n"
	    "Received: from client.example.org by mx.example.org; Sun, 6 Dec 2026 20:59:59 +0000\r\n"
	    "From: Bob Sender <bob@example.org>\r\n"
	    "To: Alice <alice@example.com>, team@example.com\r\n"
	    "Cc: carol@example.net\r\n"
	    "Subject: Quarterly report, draft 3\r\n"
	    "Date: Sun, 6 Dec 2026 20:59:58 +0000\r\n"
	    "Message-ID: <20261206205958.1234@example.org>\r\n"
	    "X-Mailer: Evolution 3.46\r\n"
	    "MIME-Version: 1.0\r\n"
	    "Content-Type: text/plain; charset=utf-8\r\n"
	    "\r\n");
	while (n < 20 * 1024 - 80)
		n += (size_t)snprintf(m + n, cap - n, "Line %05zu of the report, with some numbers "
		    "and words in it.\r\n", n);
	*len_r = n;
	return m;
}

/* tests/bench/sieve_gateway_bench.py's script() */
static char *
gw_script(const char *level)
{
	size_t cap = 64 * 1024, n = 0;
	char *s = xmalloc(cap);

	n += (size_t)snprintf(s + n, cap - n,
	    "require [\"fileinto\", \"envelope\", \"reject\", \"regex\", \"imap4flags\"];\n");
	for (int i = 0; i < 100; i++) {
		char t[256], a[128];

		switch (i % 7) {
		case 0: snprintf(t, sizeof(t), "header :contains \"subject\" \"%s-never-%d\"",
			    level, i);
			break;
		case 1: snprintf(t, sizeof(t), "address :domain :is \"from\" \"spam%d.%s.invalid\"",
			    i, level);
			break;
		case 2: snprintf(t, sizeof(t), "envelope :is \"from\" \"nobody%d@%s.invalid\"",
			    i, level);
			break;
		case 3: snprintf(t, sizeof(t), "header :matches \"x-mailer\" \"*spamtool-%d*\"", i);
			break;
		case 4: snprintf(t, sizeof(t), "size :over %dM", 50 + i);
			break;
		case 5: snprintf(t, sizeof(t), "exists \"x-%s-flag-%d\"", level, i);
			break;
		default: snprintf(t, sizeof(t),
			    "header :regex \"subject\" \"^\\\\[%s-%d\\\\] .*(viagra|lottery)\"", level, i);
			break;
		}
		if (level[0] == 'u' && i % 3 == 0)
			snprintf(a, sizeof(a), "addflag \"\\\\Flagged\"; fileinto \"Folder%d\"; stop;", i);
		else if (level[0] == 'u')
			snprintf(a, sizeof(a), "fileinto \"Folder%d\"; stop;", i);
		else if (level[0] == 'd')
			snprintf(a, sizeof(a), "%s", i % 2 ? "fileinto \"Quarantine\"; stop;" :
			    "discard; stop;");
		else
			snprintf(a, sizeof(a), "reject \"rule %d\";", i);
		n += (size_t)snprintf(s + n, cap - n, "if %s { %s }\n", t, a);
	}
	return s;
}

/* what smtp-source -l 1024 sends, with the gateway's Received: field */
static char *
gw_message(size_t *len_r)
{
	size_t cap = 4096, n = 0;
	char *m = xmalloc(cap);

	n += (size_t)snprintf(m + n, cap - n,
	    "Received: from bench.example (localhost [127.0.0.1])\r\n"
	    "\tby gw.example.com (Portcullis) with ESMTP id 4Xyz0123\r\n"
	    "\tfor <user@example.com>; Mon, 7 Dec 2026 01:00:00 +0000\r\n"
	    "From: <a@example.org>\r\n"
	    "To: <user@example.com>\r\n"
	    "Date: Mon, 7 Dec 2026 01:00:00 +0000 (UTC)\r\n"
	    "Message-Id: <20261207010000.ABCDEF0123@bench.example>\r\n"
	    "\r\n");
	while (n < 1024 + 200)
		n += (size_t)snprintf(m + n, cap - n, "La de da de da %zu.\r\n", n);
	*len_r = n;
	return m;
}

static __attribute__((noinline)) double
bench_gateway(struct sieve_script *const *lv, const char *text, size_t len, double secs)
{
	struct sieve_limits lim;
	struct sieve_run_opts o = { 0 };
	unsigned long n = 0;
	double t0 = now_s(), t;

	sieve_limits_default(&lim);
	o.limits = &lim;
	do {
		for (int k = 0; k < 50; k++) {
			struct sieve_msg *m = sieve_msg_parse(text, len);
			struct sieve_result *res = NULL;
			struct sieve_errors err = { 0 };

			sieve_msg_set_env(m, "from", "a@example.org");
			sieve_msg_set_env(m, "to", "user@example.com");
			sieve_msg_set_item(m, "remote-ip", "127.0.0.1");
			sieve_msg_set_item(m, "phase", "during");
			for (int l = 0; l < 3; l++) {
				if (l == 2) {
					sieve_result_free(&res);
					sieve_msg_set_item(m, "phase", "post");
				}
				if (sieve_run(lv[l], m, &o, &res, &err) < 0 || res == NULL ||
				    !res->implicit_keep) {
					fprintf(stderr, "sieve-bench: gateway run failed: %s\n",
					    err.n ? err.msg[0] : "no keep");
					exit(1);
				}
			}
			sieve_result_free(&res);
			sieve_errors_clear(&err);
			sieve_msg_free(&m);
			n++;
		}
		t = now_s() - t0;
	} while (t < secs);
	return (double)n / t;
}

static double
bench(const struct sieve_script *s, const char *text, size_t len, int parse, double secs)
{
	struct sieve_limits lim;
	struct sieve_run_opts o = { 0 };
	struct sieve_msg *m = NULL;
	unsigned long n = 0;
	double t0 = now_s(), t;

	sieve_limits_default(&lim);
	o.limits = &lim;
	do {
		for (int k = 0; k < 50; k++) {
			struct sieve_result *res = NULL;
			struct sieve_errors err = { 0 };

			if (m == NULL || parse) {
				sieve_msg_free(&m);
				m = sieve_msg_parse(text, len);
				sieve_msg_set_env(m, "from", "bob@example.org");
				sieve_msg_set_env(m, "to", "alice@example.com");
			}
			if (sieve_run(s, m, &o, &res, &err) < 0 || res == NULL || !res->n) {
				fprintf(stderr, "sieve-bench: run failed: %s\n",
				    err.n ? err.msg[0] : "no keep");
				exit(1);
			}
			sieve_result_free(&res);
			sieve_errors_clear(&err);
			n++;
		}
		t = now_s() - t0;
	} while (t < secs);
	sieve_msg_free(&m);
	return (double)n / t;
}

int
main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 2.0;
	size_t len;
	char *text = make_message(&len);
	struct sieve_script *s[2];
	const char *what[2] = { "100 rules (headers, envelope, size)", "100 rules, 10 of them body" };

	for (int b = 0; b < 2; b++) {
		char *src = make_script(b);
		struct sieve_errors err = { 0 };

		if (sieve_compile("server.sieve", src, strlen(src), NULL, &s[b], &err) < 0) {
			fprintf(stderr, "sieve-bench: %s\n", err.n ? err.msg[0] : "compile failed");
			return 1;
		}
		free(src);
	}
	printf("sieve-bench: %zu-byte message, one core, %.1f s per figure\n", len, secs);
	printf("  %-40s %10.0f evaluations/s (message parsed once)\n", what[0],
	    bench(s[0], text, len, 0, secs));
	printf("  %-40s %10.0f evaluations/s (parse + run)\n", what[0],
	    bench(s[0], text, len, 1, secs));
	printf("  %-40s %10.0f evaluations/s (parse + run)\n", what[1],
	    bench(s[1], text, len, 1, secs));
	sieve_script_free(&s[0]);
	sieve_script_free(&s[1]);
	free(text);

	struct sieve_script *gw[3];
	const char *lvn[3] = { "server", "domain", "user" };

	for (int l = 0; l < 3; l++) {
		char *src = gw_script(lvn[l]);
		struct sieve_errors err = { 0 };

		if (sieve_compile("gw.sieve", src, strlen(src), NULL, &gw[l], &err) < 0) {
			fprintf(stderr, "sieve-bench: %s\n", err.n ? err.msg[0] : "compile failed");
			return 1;
		}
		free(src);
	}
	text = gw_message(&len);
	double r = bench_gateway(gw, text, len, secs);
	printf("  %-40s %10.0f messages/s, %.1f us each (parse + 3 runs, %zu B)\n",
	    "gateway bench's server+domain+user", r, 1e6 / r, len);
	for (int l = 0; l < 3; l++)
		sieve_script_free(&gw[l]);
	free(text);
	return 0;
}
