/*
 * test_sieve_deliver - a user's Sieve script at delivery
 * (storage-adapter/sieve_deliver.c) against a real temporary mail store:
 * the files each folder holds (their Maildir flag suffixes), the outgoing
 * messages planned (redirect, vacation, RFC 5429 refusal), vacation
 * tracking per sender, and the INBOX fallback when the relayhost refuses.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/xmalloc.h"
#include "storage-adapter/maildir.h"
#include "storage-adapter/sieve_deliver.h"
#include "storage-adapter/sievestore.h"
#include "tests/unit/unit.h"

#define USER "alice@example.com"

static const char *msg_plain =
    "From: Bob <bob@example.org>\r\n"
    "To: Alice <alice@example.com>\r\n"
    "Subject: hello\r\n"
    "Message-ID: <m1@example.org>\r\n"
    "\r\n"
    "body text\r\n";

/* a spooled message: an unlinked temp file */
static int
spool(const char *dir, const char *text)
{
	char *p = xasprintf("%s/spool.XXXXXX", dir);
	int fd = mkstemp(p);

	CU_ASSERT_FATAL(fd >= 0);
	unlink(p);
	free(p);
	CU_ASSERT_EQUAL(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	return fd;
}

static struct sieve_script *
compile(const char *src)
{
	struct sieve_script *s = NULL;
	struct sieve_errors err = { 0 };

	if (src == NULL)
		return NULL;
	if (sieve_compile("user.sieve", src, strlen(src), NULL, &s, &err) < 0) {
		fprintf(stderr, "compile: %s\n", err.n ? err.msg[0] : "?");
		CU_FAIL("script does not compile");
	}
	sieve_errors_clear(&err);
	return s;
}

static int
strp_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* "new:" or "cur::2,FS" per file of a folder, sorted, space separated */
static char *
folder_files(const char *root, const char *folder)
{
	char *names[64];
	size_t n = 0, len = 1;
	char *out;
	static const char *const sub[] = { "new", "cur" };

	for (int k = 0; k < 2; k++) {
		char *d = strcmp(folder, "INBOX") == 0 ?
		    xasprintf("%s/example.com/alice/Maildir/%s", root, sub[k]) :
		    xasprintf("%s/example.com/alice/Maildir/.%s/%s", root, folder, sub[k]);
		DIR *dp = opendir(d);
		struct dirent *de;

		free(d);
		if (dp == NULL)
			continue;
		while ((de = readdir(dp)) != NULL && n < 64) {
			const char *c;

			if (de->d_name[0] == '.')
				continue;
			c = strchr(de->d_name, ':');
			names[n] = xasprintf("%s:%s", sub[k], c ? c : "");
			len += strlen(names[n++]) + 1;
		}
		closedir(dp);
	}
	qsort(names, n, sizeof(char *), strp_cmp);
	out = xcalloc(1, len);
	for (size_t i = 0; i < n; i++) {
		if (i)
			strcat(out, " ");
		strcat(out, names[i]);
		free(names[i]);
	}
	return out;
}

static const struct {
	const char *name;
	const char *script;	/* NULL: the user has none */
	const char *from;
	/* folder=files;... as folder_files() gives them, "" for an empty folder */
	const char *expect[4][2];
	size_t nout;
	enum sieve_deliver_out_kind kind;	/* of out[0] */
	const char *out_rcpt;
	int discarded;
} cases[] = {
	{ "no script", NULL, "bob@example.org", { { "INBOX", "new:" } }, 0, 0, NULL, 0 },
	{ "keep", "keep;", "bob@example.org", { { "INBOX", "new:" } }, 0, 0, NULL, 0 },
	{ "implicit keep", "if false { discard; }", "bob@example.org",
	  { { "INBOX", "new:" } }, 0, 0, NULL, 0 },
	{ "fileinto :create", "require [\"fileinto\", \"mailbox\"]; fileinto :create \"Work\";",
	  "bob@example.org", { { "Work", "cur::2," }, { "INBOX", "" } }, 0, 0, NULL, 0 },
	{ "fileinto sub-folder :create",
	  "require [\"fileinto\", \"mailbox\"]; fileinto :create \"Lists.dev\";",
	  "bob@example.org", { { "Lists.dev", "cur::2," }, { "INBOX", "" } }, 0, 0, NULL, 0 },
	{ "fileinto missing folder without :create: INBOX",
	  "require \"fileinto\"; fileinto \"Nowhere\";", "bob@example.org",
	  { { "INBOX", "new:" }, { "Nowhere", "" } }, 0, 0, NULL, 0 },
	{ "multiple fileinto", "require [\"fileinto\", \"mailbox\"]; fileinto :create \"A\"; "
	  "fileinto :create \"B\"; fileinto :create \"A\";", "bob@example.org",
	  { { "A", "cur::2," }, { "B", "cur::2," }, { "INBOX", "" } }, 0, 0, NULL, 0 },
	{ "fileinto and keep", "require [\"fileinto\", \"mailbox\"]; fileinto :create \"A\"; keep;",
	  "bob@example.org", { { "A", "cur::2," }, { "INBOX", "new:" } }, 0, 0, NULL, 0 },
	{ "discard", "discard;", "bob@example.org", { { "INBOX", "" } }, 0, 0, NULL, 1 },
	{ "addflag then keep: system flag and keyword",
	  "require \"imap4flags\"; addflag [\"\\\\Flagged\", \"$Label1\"]; keep;",
	  "bob@example.org", { { "INBOX", "cur::2,Fa" } }, 0, 0, NULL, 0 },
	{ "setflag on the implicit keep", "require \"imap4flags\"; setflag \"\\\\Seen\";",
	  "bob@example.org", { { "INBOX", "cur::2,S" } }, 0, 0, NULL, 0 },
	{ "fileinto :flags", "require [\"fileinto\", \"imap4flags\", \"mailbox\"]; "
	  "fileinto :create :flags [\"\\\\Seen\", \"\\\\Answered\"] \"Done\";",
	  "bob@example.org", { { "Done", "cur::2,RS" }, { "INBOX", "" } }, 0, 0, NULL, 0 },
	{ "redirect takes the message", "redirect \"carol@example.net\";", "bob@example.org",
	  { { "INBOX", "" } }, 1, SIEVE_OUT_REDIRECT, "carol@example.net", 1 },
	{ "redirect :copy keeps it", "require \"copy\"; redirect :copy \"carol@example.net\";",
	  "bob@example.org", { { "INBOX", "new:" } }, 1, SIEVE_OUT_REDIRECT,
	  "carol@example.net", 0 },
	{ "reject sends the refusal", "require \"reject\"; reject \"not wanted\";",
	  "bob@example.org", { { "INBOX", "" } }, 1, SIEVE_OUT_REFUSAL, "bob@example.org", 1 },
	{ "body test: the body is read when the script requires it",
	  "require [\"body\", \"fileinto\", \"mailbox\"]; "
	  "if body :contains \"body text\" { fileinto :create \"B\"; }",
	  "bob@example.org", { { "B", "cur::2," }, { "INBOX", "" } }, 0, 0, NULL, 0 },
	{ "size test sees the real size",
	  "require [\"fileinto\", \"mailbox\"]; "
	  "if size :over 100 { fileinto :create \"Big\"; }",
	  "bob@example.org", { { "Big", "cur::2," }, { "INBOX", "" } }, 0, 0, NULL, 0 },
	{ "reject of the null sender: no refusal", "require \"reject\"; reject \"no\";", "",
	  { { "INBOX", "" } }, 0, 0, NULL, 1 },
};

/* pre: 1 the message handed over parsed (the gateway's door), as the spool */
static void
test_table_with(int pre)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *root = unit_tmpdir();
		struct sieve_script *s = compile(cases[i].script);
		int fd = spool(root, msg_plain);
		struct sieve_msg *pm = sieve_msg_parse(msg_plain, strlen(msg_plain));
		struct sieve_deliver_msg dm = { pm, 1,
		    (long long)(strstr(msg_plain, "\r\n\r\n") + 4 - msg_plain), 0 };
		struct sieve_deliver_in in = {
			.store_root = root, .user = USER, .env_from = cases[i].from,
			.env_to = USER, .fd = pre ? -1 : fd, .pre = pre ? &dm : NULL, .script = s,
			.hostname = "mx.example.com",
		};
		struct sieve_deliver_plan *p;
		const char *error;

		pm->size = strlen(msg_plain);
		CU_ASSERT_EQUAL_FATAL(sieve_deliver_plan(&in, &p, &error), 0);
		p->fd = fd;	/* as the gateway does before the store */
		CU_ASSERT_EQUAL(sieve_deliver_store(p, &error), 0);
		CU_ASSERT_EQUAL(p->nout, cases[i].nout);
		CU_ASSERT_EQUAL(p->discarded, cases[i].discarded);
		if (p->nout != cases[i].nout || p->discarded != cases[i].discarded)
			fprintf(stderr, "case %s: nout %zu discarded %d (%s)\n", cases[i].name,
			    p->nout, p->discarded, p->log);
		if (cases[i].nout > 0 && p->nout > 0) {
			CU_ASSERT_EQUAL(p->out[0].kind, cases[i].kind);
			CU_ASSERT_STRING_EQUAL(p->out[0].rcpt_to, cases[i].out_rcpt);
			if (cases[i].kind == SIEVE_OUT_REDIRECT) {
				/* the original message, from the original sender */
				CU_ASSERT_PTR_NULL(p->out[0].text);
				CU_ASSERT_STRING_EQUAL(p->out[0].mail_from, cases[i].from);
			}
		}
		for (size_t k = 0; k < 4 && cases[i].expect[k][0] != NULL; k++) {
			char *got = folder_files(root, cases[i].expect[k][0]);

			if (strcmp(got, cases[i].expect[k][1]) != 0) {
				fprintf(stderr, "case %s: folder %s: got \"%s\", want \"%s\"\n",
				    cases[i].name, cases[i].expect[k][0], got, cases[i].expect[k][1]);
				CU_FAIL("folder content");
			}
			free(got);
		}
		sieve_deliver_plan_free(&p);
		sieve_script_free(&s);
		/* the door's message is untouched (no envelope left on it) */
		CU_ASSERT_PTR_NULL(pm->env_from);
		CU_ASSERT_EQUAL(pm->nhdr, 4);
		sieve_msg_free(&pm);
		close(fd);
		free(root);
	}
}

static void
test_table(void)
{
	test_table_with(0);
}

static void
test_table_pre(void)
{
	test_table_with(1);
}

static void
test_keywords_file(void)
{
	char *root = unit_tmpdir(), *p, buf[256] = "";
	struct sieve_script *s = compile("require \"imap4flags\"; keep :flags \"Work\";");
	int fd = spool(root, msg_plain);
	struct sieve_deliver_in in = { .store_root = root, .user = USER, .env_from = "b@x.org",
	    .env_to = USER, .fd = fd, .script = s };
	struct sieve_deliver_plan *pl;
	const char *error;
	FILE *f;

	CU_ASSERT_EQUAL_FATAL(sieve_deliver_plan(&in, &pl, &error), 0);
	CU_ASSERT_EQUAL(sieve_deliver_store(pl, &error), 0);
	p = xasprintf("%s/example.com/alice/Maildir/dovecot-keywords", root);
	f = fopen(p, "r");
	CU_ASSERT_PTR_NOT_NULL(f);
	if (f != NULL) {
		CU_ASSERT_EQUAL(fread(buf, 1, sizeof(buf) - 1, f) > 0, 1);
		fclose(f);
	}
	CU_ASSERT_PTR_NOT_NULL(strstr(buf, "0 Work"));
	free(p);
	sieve_deliver_plan_free(&pl);
	sieve_script_free(&s);
	close(fd);
	free(root);
}

static void
test_reject_text(void)
{
	char *root = unit_tmpdir();
	struct sieve_script *s = compile("require \"reject\"; reject \"I do not\nwant this\";");
	int fd = spool(root, msg_plain);
	struct sieve_deliver_in in = { .store_root = root, .user = USER,
	    .env_from = "<bob@example.org>", .env_to = USER, .fd = fd, .script = s,
	    .hostname = "mx.example.com" };
	struct sieve_deliver_plan *p;
	const char *error, *t;

	CU_ASSERT_EQUAL_FATAL(sieve_deliver_plan(&in, &p, &error), 0);
	CU_ASSERT_EQUAL_FATAL(p->nout, 1);
	t = p->out[0].text;
	CU_ASSERT_STRING_EQUAL(p->out[0].mail_from, "");
	CU_ASSERT_STRING_EQUAL(p->out[0].rcpt_to, "bob@example.org");
	CU_ASSERT_PTR_NOT_NULL(strstr(t, "To: <bob@example.org>\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(t, "report-type=disposition-notification"));
	CU_ASSERT_PTR_NOT_NULL(strstr(t, "Auto-Submitted: auto-replied (rejected)\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(t, "I do not\r\nwant this\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(t, "Final-Recipient: rfc822; " USER "\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(t,
	    "Disposition: automatic-action/MDN-sent-automatically; deleted\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(t, "Original-Message-ID: <m1@example.org>\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(t, "Content-Type: text/rfc822-headers\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(t, "Subject: hello\r\n"));
	CU_ASSERT_PTR_NULL(strstr(t, "body text"));	/* headers only */
	CU_ASSERT_EQUAL(sieve_deliver_store(p, &error), 0);
	{
		char *got = folder_files(root, "INBOX");

		CU_ASSERT_STRING_EQUAL(got, "");
		free(got);
	}
	sieve_deliver_plan_free(&p);
	sieve_script_free(&s);
	close(fd);
	free(root);
}

/* one delivery with the vacation script: the number of replies planned */
static size_t
vacation_once(const char *root, const char *script, const char *from, const char *text,
    long now, char **reply_r)
{
	struct sieve_script *s = compile(script);
	int fd = spool(root, text);
	struct sieve_deliver_in in = { .store_root = root, .user = USER, .env_from = from,
	    .env_to = USER, .fd = fd, .script = s, .state_dir = root, .now = now,
	    .hostname = "mx.example.com" };
	struct sieve_deliver_plan *p;
	const char *error;
	size_t n;

	CU_ASSERT_EQUAL_FATAL(sieve_deliver_plan(&in, &p, &error), 0);
	n = p->nout;
	if (n > 0) {
		CU_ASSERT_EQUAL(p->out[0].kind, SIEVE_OUT_VACATION);
		CU_ASSERT_STRING_EQUAL(p->out[0].mail_from, "");
		if (reply_r != NULL)
			*reply_r = xasprintf("%s\n%s", p->out[0].rcpt_to, p->out[0].text);
	}
	CU_ASSERT_EQUAL(sieve_deliver_store(p, &error), 0);
	sieve_deliver_sent(p);
	sieve_deliver_plan_free(&p);
	sieve_script_free(&s);
	close(fd);
	return n;
}

static void
test_vacation(void)
{
	static const char *vac = "require \"vacation\"; vacation :days 1 \"I am away\";";
	static const char *vsec = "require [\"vacation\", \"vacation-seconds\"]; "
	    "vacation :seconds 60 :subject \"Away\" :from \"alice@example.com\" \"gone\";";
	char *root = unit_tmpdir(), *reply = NULL, *got;
	char *list = xasprintf("List-Id: <dev.example.org>\r\n%s", msg_plain);
	char *bulk = xasprintf("Precedence: bulk\r\n%s", msg_plain);
	char *auto_ = xasprintf("Auto-Submitted: auto-generated\r\n%s", msg_plain);
	long t = 1800000000;

	/* first message from bob: a reply, with the RFC 5230 headers */
	CU_ASSERT_EQUAL(vacation_once(root, vac, "bob@example.org", msg_plain, t, &reply), 1);
	CU_ASSERT_PTR_NOT_NULL_FATAL(reply);
	CU_ASSERT_EQUAL(strncmp(reply, "bob@example.org\n", 16), 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(reply, "In-Reply-To: <m1@example.org>\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(reply, "References: <m1@example.org>\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(reply, "Auto-Submitted: auto-replied"));
	CU_ASSERT_PTR_NOT_NULL(strstr(reply, "Subject: Auto: hello\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(reply, "Message-ID: <"));
	CU_ASSERT_PTR_NOT_NULL(strstr(reply, "\r\n\r\nI am away"));
	free(reply);
	/* the message itself is kept */
	got = folder_files(root, "INBOX");
	CU_ASSERT_STRING_EQUAL(got, "new:");
	free(got);
	/* bob again within the day: no reply; after it: one */
	CU_ASSERT_EQUAL(vacation_once(root, vac, "bob@example.org", msg_plain, t + 3600, NULL), 0);
	CU_ASSERT_EQUAL(vacation_once(root, vac, "bob@example.org", msg_plain, t + 86401, NULL), 1);
	/* another sender: a reply of its own */
	CU_ASSERT_EQUAL(vacation_once(root, vac, "dave@example.org", msg_plain, t + 60, NULL), 1);
	/* never to the null sender or to list, bulk or automatic mail */
	CU_ASSERT_EQUAL(vacation_once(root, vac, "", msg_plain, t, NULL), 0);
	CU_ASSERT_EQUAL(vacation_once(root, vac, "eve@example.org", list, t, NULL), 0);
	CU_ASSERT_EQUAL(vacation_once(root, vac, "eve@example.org", bulk, t, NULL), 0);
	CU_ASSERT_EQUAL(vacation_once(root, vac, "eve@example.org", auto_, t, NULL), 0);
	CU_ASSERT_EQUAL(vacation_once(root, vac, "MAILER-DAEMON@example.org", msg_plain, t,
	    NULL), 0);
	/* :seconds, :subject, :from */
	CU_ASSERT_EQUAL(vacation_once(root, vsec, "frank@example.org", msg_plain, t, &reply), 1);
	if (reply != NULL) {
		CU_ASSERT_PTR_NOT_NULL(strstr(reply, "Subject: Away\r\n"));
		CU_ASSERT_PTR_NOT_NULL(strstr(reply, "From: alice@example.com\r\n"));
		free(reply);
	}
	CU_ASSERT_EQUAL(vacation_once(root, vsec, "frank@example.org", msg_plain, t + 30, NULL), 0);
	CU_ASSERT_EQUAL(vacation_once(root, vsec, "frank@example.org", msg_plain, t + 61, NULL), 1);
	free(list);
	free(bulk);
	free(auto_);
	free(root);
}

/* the relayhost refused the redirect: the message is kept in the INBOX */
static void
test_fallback(void)
{
	char *root = unit_tmpdir(), *got;
	struct sieve_script *s = compile("redirect \"carol@example.net\";");
	int fd = spool(root, msg_plain);
	struct sieve_deliver_in in = { .store_root = root, .user = USER,
	    .env_from = "bob@example.org", .env_to = USER, .fd = fd, .script = s };
	struct sieve_deliver_plan *p;
	const char *error;

	CU_ASSERT_EQUAL_FATAL(sieve_deliver_plan(&in, &p, &error), 0);
	CU_ASSERT_EQUAL(p->nout, 1);
	CU_ASSERT_EQUAL(p->ncopy, 0);
	CU_ASSERT_EQUAL(sieve_deliver_fallback(p, &p->out[0], "451 4.3.0 try later", &error), 0);
	got = folder_files(root, "INBOX");
	CU_ASSERT_STRING_EQUAL(got, "new:");
	free(got);
	sieve_deliver_plan_free(&p);
	sieve_script_free(&s);
	close(fd);
	free(root);
}

/* redirect loops: X-Sieve-Redirected-From naming the user, or too many hops */
static const struct {
	const char *name;
	const char *extra;	/* header lines put on top of msg_plain */
	size_t nout;		/* redirects planned */
	const char *inbox;	/* folder_files("INBOX") after the store */
} loop_cases[] = {
	{ "no header: redirected", "", 1, "" },
	{ "another user redirected it: redirected",
	  "X-Sieve-Redirected-From: <bob@example.com>\r\n", 1, "" },
	{ "this user redirected it before: kept",
	  "X-Sieve-Redirected-From: <alice@example.com>\r\n", 0, "new:" },
	{ "this user, other case and no brackets: kept",
	  "X-Sieve-Redirected-From: Alice@Example.COM\r\n", 0, "new:" },
	{ "a longer address is another user: redirected",
	  "X-Sieve-Redirected-From: <alice@example.com.evil>\r\n", 1, "" },
	{ "eight hops: kept",
	  "X-Sieve-Redirected-From: <a1@x.test>\r\nX-Sieve-Redirected-From: <a2@x.test>\r\n"
	  "X-Sieve-Redirected-From: <a3@x.test>\r\nX-Sieve-Redirected-From: <a4@x.test>\r\n"
	  "X-Sieve-Redirected-From: <a5@x.test>\r\nX-Sieve-Redirected-From: <a6@x.test>\r\n"
	  "X-Sieve-Redirected-From: <a7@x.test>\r\nX-Sieve-Redirected-From: <a8@x.test>\r\n",
	  0, "new:" },
};

static void
test_redirect_loop(void)
{
	for (size_t i = 0; i < sizeof(loop_cases) / sizeof(loop_cases[0]); i++) {
		char *root = unit_tmpdir(), *got;
		char *text = xasprintf("%s%s", loop_cases[i].extra, msg_plain);
		struct sieve_script *s = compile("redirect \"carol@example.net\";");
		int fd = spool(root, text);
		struct sieve_deliver_in in = { .store_root = root, .user = USER,
		    .env_from = "bob@example.org", .env_to = USER, .fd = fd, .script = s };
		struct sieve_deliver_plan *p;
		const char *error;

		CU_ASSERT_EQUAL_FATAL(sieve_deliver_plan(&in, &p, &error), 0);
		CU_ASSERT_EQUAL(p->nout, loop_cases[i].nout);
		CU_ASSERT_EQUAL(sieve_deliver_store(p, &error), 0);
		got = folder_files(root, "INBOX");
		if (p->nout != loop_cases[i].nout || strcmp(got, loop_cases[i].inbox) != 0)
			fprintf(stderr, "case %s: nout %zu, INBOX \"%s\" (%s)\n", loop_cases[i].name,
			    p->nout, got, p->log);
		CU_ASSERT_STRING_EQUAL(got, loop_cases[i].inbox);
		free(got);
		sieve_deliver_plan_free(&p);
		sieve_script_free(&s);
		close(fd);
		free(text);
		free(root);
	}
}

/* a header section past the first read (SIEVE_DELIVER_FIRST_READ): the
 * header at its end is seen, and the stored copy is whole */
static void
test_long_header(void)
{
	for (size_t total = SIEVE_DELIVER_FIRST_READ - 40; total < SIEVE_DELIVER_FIRST_READ + 80;
	    total += 7) {
		char *root = unit_tmpdir(), *got, *text = xmalloc(total + 512);
		size_t n = 0;
		struct sieve_script *s = compile("require [\"fileinto\", \"mailbox\"]; "
		    "if header :is \"X-Last\" \"yes\" { fileinto :create \"Found\"; }");
		int fd;
		struct sieve_deliver_plan *p;
		const char *error;

		/* filler lines, then X-Last: so the empty line falls around the edge */
		while (n + 40 < total)
			n += (size_t)sprintf(text + n, "X-Filler: %026zu\r\n", n);
		n += (size_t)sprintf(text + n, "X-Last: yes\r\n\r\nbody\r\n");
		fd = spool(root, text);
		struct sieve_deliver_in in = { .store_root = root, .user = USER,
		    .env_from = "bob@example.org", .env_to = USER, .fd = fd, .script = s };
		CU_ASSERT_EQUAL_FATAL(sieve_deliver_plan(&in, &p, &error), 0);
		CU_ASSERT_EQUAL(sieve_deliver_store(p, &error), 0);
		got = folder_files(root, "Found");
		if (strcmp(got, "cur::2,") != 0)
			fprintf(stderr, "header of %zu bytes: Found \"%s\" (%s)\n", n, got, p->log);
		CU_ASSERT_STRING_EQUAL(got, "cur::2,");
		free(got);
		sieve_deliver_plan_free(&p);
		sieve_script_free(&s);
		close(fd);
		free(text);
		free(root);
	}
}

/* the user's script file: none is fine, a broken one is an error */
static void
test_load_user(void)
{
	char *dir = unit_tmpdir(), *p;
	struct sieve_script *s = (struct sieve_script *)1;
	const char *error;
	FILE *f;

	CU_ASSERT_EQUAL(sieve_deliver_load_user(dir, USER, NULL, &s, &error), 0);
	CU_ASSERT_PTR_NULL(s);
	p = xasprintf("%s/users", dir);
	CU_ASSERT_EQUAL(mkdir(p, 0700), 0);
	free(p);
	p = xasprintf("%s/users/" USER ".sieve", dir);
	f = fopen(p, "w");
	fputs("keep;\n", f);
	fclose(f);
	CU_ASSERT_EQUAL(sieve_deliver_load_user(dir, USER, NULL, &s, &error), 0);
	CU_ASSERT_PTR_NOT_NULL(s);
	sieve_script_free(&s);
	f = fopen(p, "w");
	fputs("kep;\n", f);
	fclose(f);
	CU_ASSERT_EQUAL(sieve_deliver_load_user(dir, USER, NULL, &s, &error), -1);
	free(p);
	free(dir);
}

static void
spit(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs(text, f);
	fclose(f);
}

/* server and domain scripts run first (Pigeonhole's sieve_before) */
static const struct {
	const char *name;
	const char *server, *domain, *user;
	const char *expect[3][2];
	size_t nout;
} levels[] = {
	{ "server flag seen by the user's keep",
	  "require \"imap4flags\"; addflag \"\\\\Seen\";", NULL, "keep;",
	  { { "INBOX", "cur::2,S" } }, 0 },
	{ "domain fileinto is done at delivery; the user level does not run",
	  NULL, "require [\"fileinto\", \"mailbox\"]; fileinto :create \"Archive\";",
	  "require \"vacation\"; vacation \"away\";",
	  { { "Archive", "cur::2," }, { "INBOX", "" } }, 0 },
	{ "server redirect :copy is the door's: not sent again",
	  "require \"copy\"; redirect :copy \"audit@example.com\";", NULL, NULL,
	  { { "INBOX", "new:" } }, 0 },
	{ "server keep and user fileinto: both copies",
	  "keep;", NULL, "require [\"fileinto\", \"mailbox\"]; fileinto :create \"Mine\";",
	  { { "INBOX", "new:" }, { "Mine", "cur::2," } }, 0 },
	{ "user vacation after an implicit keep upstairs",
	  "if false { discard; }", "if false { discard; }",
	  "require \"vacation\"; vacation \"away\";", { { "INBOX", "new:" } }, 1 },
};

static void
test_levels(void)
{
	for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
		char *root = unit_tmpdir(), *dir = xasprintf("%s/sieve", root), *p;
		struct sieve_limits lim;
		struct sieve_rules *r;
		struct sieve_script *us = compile(levels[i].user);
		int fd = spool(root, msg_plain);
		struct sieve_deliver_plan *pl;
		const char *error;

		CU_ASSERT_EQUAL(mkdir(dir, 0700), 0);
		p = xasprintf("%s/domains", dir);
		CU_ASSERT_EQUAL(mkdir(p, 0700), 0);
		free(p);
		if (levels[i].server != NULL) {
			p = xasprintf("%s/server.sieve", dir);
			spit(p, levels[i].server);
			free(p);
		}
		if (levels[i].domain != NULL) {
			p = xasprintf("%s/domains/example.com.sieve", dir);
			spit(p, levels[i].domain);
			free(p);
		}
		sieve_limits_default(&lim);
		r = sievestore_load(dir, &lim, NULL);
		{
			struct sieve_deliver_in in = { .store_root = root, .user = USER,
			    .env_from = "bob@example.org", .env_to = USER, .fd = fd, .script = us,
			    .rules = r, .domain = "example.com", .state_dir = root };

			CU_ASSERT_EQUAL_FATAL(sieve_deliver_plan(&in, &pl, &error), 0);
		}
		CU_ASSERT_EQUAL(sieve_deliver_store(pl, &error), 0);
		if (pl->nout != levels[i].nout) {
			fprintf(stderr, "levels %s: nout %zu (%s)\n", levels[i].name, pl->nout, pl->log);
			CU_FAIL("outgoing");
		}
		for (size_t k = 0; k < 3 && levels[i].expect[k][0] != NULL; k++) {
			char *got = folder_files(root, levels[i].expect[k][0]);

			if (strcmp(got, levels[i].expect[k][1]) != 0) {
				fprintf(stderr, "levels %s: folder %s: got \"%s\", want \"%s\"\n",
				    levels[i].name, levels[i].expect[k][0], got, levels[i].expect[k][1]);
				CU_FAIL("folder content");
			}
			free(got);
		}
		sieve_deliver_plan_free(&pl);
		{
			const struct sieve_rules *cr = r;

			sieve_rules_unref(&cr);
		}
		sieve_script_free(&us);
		close(fd);
		free(dir);
		free(root);
	}
}

/* the only file of a folder, whole */
static char *
folder_text(const char *root, const char *folder)
{
	static const char *const sub[] = { "new", "cur" };

	for (int k = 0; k < 2; k++) {
		char *d = strcmp(folder, "INBOX") == 0 ?
		    xasprintf("%s/example.com/alice/Maildir/%s", root, sub[k]) :
		    xasprintf("%s/example.com/alice/Maildir/.%s/%s", root, folder, sub[k]);
		DIR *dp = opendir(d);
		struct dirent *de;

		while (dp != NULL && (de = readdir(dp)) != NULL) {
			char *f, *t = xcalloc(1, 4096);
			FILE *fp;

			if (de->d_name[0] == '.') {
				free(t);
				continue;
			}
			f = xasprintf("%s/%s", d, de->d_name);
			fp = fopen(f, "r");
			if (fp != NULL) {
				CU_ASSERT(fread(t, 1, 4095, fp) > 0);
				fclose(fp);
			}
			free(f);
			closedir(dp);
			free(d);
			return t;
		}
		if (dp != NULL)
			closedir(dp);
		free(d);
	}
	return xstrdup("");
}

/* the user level's editheader reaches the stored copy; the server level's does not
 * (the door made it) */
static void
test_editheader(void)
{
	char *root = unit_tmpdir(), *dir = xasprintf("%s/sieve", root), *p, *t;
	struct sieve_limits lim;
	struct sieve_rules *r;
	const struct sieve_rules *cr;
	struct sieve_script *us = compile("require [\"editheader\", \"fileinto\", \"mailbox\"]; "
	    "addheader \"X-User\" \"yes\"; deleteheader \"subject\"; "
	    "fileinto :create \"Ed\";");
	int fd = spool(root, msg_plain);
	struct sieve_deliver_plan *pl;
	const char *error;

	CU_ASSERT_EQUAL(mkdir(dir, 0700), 0);
	p = xasprintf("%s/server.sieve", dir);
	spit(p, "require \"editheader\"; addheader \"X-Server\" \"checked\";");
	free(p);
	sieve_limits_default(&lim);
	r = sievestore_load(dir, &lim, NULL);
	{
		struct sieve_deliver_in in = { .store_root = root, .user = USER,
		    .env_from = "bob@example.org", .env_to = USER, .fd = fd, .script = us,
		    .rules = r, .domain = "example.com" };

		CU_ASSERT_EQUAL_FATAL(sieve_deliver_plan(&in, &pl, &error), 0);
	}
	CU_ASSERT_EQUAL(sieve_deliver_store(pl, &error), 0);
	t = folder_text(root, "Ed");
	CU_ASSERT_PTR_NOT_NULL(strstr(t, "X-User: yes\r\n"));
	/* the server level's edits are the door's (made in the spool at end of
	 * data): not made again here */
	CU_ASSERT_PTR_NULL(strstr(t, "X-Server: checked\r\n"));
	CU_ASSERT_PTR_NULL(strstr(t, "Subject:"));
	CU_ASSERT_PTR_NOT_NULL(strstr(t, "From: Bob <bob@example.org>\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(t, "\r\n\r\nbody text\r\n"));
	free(t);
	t = folder_files(root, "INBOX");
	CU_ASSERT_STRING_EQUAL(t, "");
	free(t);
	sieve_deliver_plan_free(&pl);
	cr = r;
	sieve_rules_unref(&cr);
	sieve_script_free(&us);
	close(fd);
	free(dir);
	free(root);
}

/*
 * The gateway's order: spool into tmp/ (maildir_tmp_*), read it back for
 * the plans before the commit, store the scripted recipient's copies,
 * hard-link the spool for the plain ones.
 */
static void
test_spool_read_back(void)
{
	char *root = unit_tmpdir(), *got, id[128];
	struct maildir_rcpt r[2] = { { "alice", "example.com" }, { "zed", "example.com" } };
	struct maildir_tmp *t;
	struct sieve_script *s = compile("require [\"fileinto\", \"mailbox\"]; "
	    "fileinto :create \"Work\";");
	struct sieve_deliver_plan *pa, *pz;
	const char *error;
	int fd;

	CU_ASSERT_EQUAL_FATAL(maildir_tmp_open(root, &r[0], &t, &error), 0);
	CU_ASSERT_EQUAL(maildir_tmp_write(t, msg_plain, strlen(msg_plain), &error), 0);
	CU_ASSERT_EQUAL_FATAL(maildir_tmp_open_read(t, &fd, &error), 0);
	{
		struct sieve_deliver_in a = { .store_root = root, .user = USER,
		    .env_from = "bob@example.org", .env_to = USER, .fd = fd, .script = s };
		struct sieve_deliver_in z = { .store_root = root, .user = "zed@example.com",
		    .env_from = "bob@example.org", .env_to = "zed@example.com", .fd = fd };

		CU_ASSERT_EQUAL_FATAL(sieve_deliver_plan(&a, &pa, &error), 0);
		CU_ASSERT_EQUAL_FATAL(sieve_deliver_plan(&z, &pz, &error), 0);
	}
	CU_ASSERT_EQUAL(sieve_deliver_plan_is_plain(pa), 0);
	CU_ASSERT_EQUAL(sieve_deliver_plan_is_plain(pz), 1);
	CU_ASSERT_EQUAL(sieve_deliver_store(pa, &error), 0);
	/* zed's plain keep rides the hard link */
	CU_ASSERT_EQUAL(maildir_tmp_commit(&t, root, &r[1], 1, id, &error), 0);
	close(fd);
	got = folder_text(root, "Work");
	CU_ASSERT_STRING_EQUAL(got, msg_plain);
	free(got);
	got = folder_files(root, "INBOX");
	CU_ASSERT_STRING_EQUAL(got, "");
	free(got);
	{
		char *p = xasprintf("%s/example.com/zed/Maildir/new", root);
		DIR *dp = opendir(p);
		struct dirent *de;
		int n = 0;

		while (dp != NULL && (de = readdir(dp)) != NULL)
			n += de->d_name[0] != '.';
		if (dp != NULL)
			closedir(dp);
		CU_ASSERT_EQUAL(n, 1);
		free(p);
	}
	sieve_deliver_plan_free(&pa);
	sieve_deliver_plan_free(&pz);
	sieve_script_free(&s);
	free(root);
}

static CU_TestInfo tests[] = {
	{ "the gateway's order: spool, read back, plan, store, link", test_spool_read_back },
	{ "editheader reaches the stored copy", test_editheader },
	{ "server and domain levels first (multiscript)", test_levels },
	{ "actions into a real store (table)", test_table },
	{ "the same with the door's parsed message handed over", test_table_pre },
	{ "keywords file", test_keywords_file },
	{ "reject composes the RFC 5429 refusal", test_reject_text },
	{ "vacation once per period per sender, never to lists", test_vacation },
	{ "relayhost refusal keeps the message in INBOX", test_fallback },
	{ "user script load", test_load_user },
	{ "redirect loop protection", test_redirect_loop },
	{ "header section past the first read", test_long_header },
	{ NULL, NULL },
};

void
test_sieve_deliver_register(void)
{
	unit_suite("sieve_deliver", tests);
}
