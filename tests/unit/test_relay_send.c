/*
 * test_relay_send - the blocking relayhost client (smtp-gateway/relay_send.c)
 * against a scripted SMTP server on a loopback port, in a thread: what it
 * received (dot-stuffed, CRLF), and the replies a refusal or a dead
 * relayhost give.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "smtp-gateway/relay_send.h"
#include "tests/unit/unit.h"

struct fake {
	int lfd;
	int rcpt_code;		/* the RCPT reply */
	int final_code;		/* the reply after the dot */
	char data[8192];	/* what came after DATA, up to the dot */
	size_t datalen;
	char mail[256], rcpt[256];
};

static void
wr(int fd, const char *s)
{
	if (write(fd, s, strlen(s)) < 0)
		return;
}

static void *
fake_run(void *arg)
{
	struct fake *f = arg;
	int c = accept(f->lfd, NULL, NULL);
	char buf[16384];
	size_t len = 0;
	int in_data = 0;

	if (c < 0)
		return NULL;
	wr(c, "220 fake ESMTP\r\n");
	for (;;) {
		ssize_t r = read(c, buf + len, sizeof(buf) - len - 1);
		char *nl;

		if (r <= 0)
			break;
		len += (size_t)r;
		buf[len] = '\0';
		while (!in_data && (nl = strstr(buf, "\r\n")) != NULL) {
			size_t l = (size_t)(nl - buf) + 2;
			char line[1024];
			char rep[64];

			snprintf(line, sizeof(line), "%.*s", (int)(l - 2), buf);
			memmove(buf, buf + l, len - l + 1);
			len -= l;
			if (!strncmp(line, "EHLO", 4)) {
				wr(c, "250-fake\r\n250 PIPELINING\r\n");
			} else if (!strncmp(line, "MAIL", 4)) {
				snprintf(f->mail, sizeof(f->mail), "%.200s", line);
				wr(c, "250 2.1.0 ok\r\n");
			} else if (!strncmp(line, "RCPT", 4)) {
				snprintf(f->rcpt, sizeof(f->rcpt), "%.200s", line);
				snprintf(rep, sizeof(rep), "%d %s\r\n", f->rcpt_code,
				    f->rcpt_code == 250 ? "2.1.5 ok" : "5.1.1 no such user");
				wr(c, rep);
			} else if (!strncmp(line, "DATA", 4)) {
				wr(c, "354 go\r\n");
				in_data = 1;
			} else if (!strncmp(line, "QUIT", 4)) {
				wr(c, "221 bye\r\n");
				close(c);
				return NULL;
			} else {
				wr(c, "500 what\r\n");
			}
		}
		if (in_data) {
			char *end = strstr(buf, "\r\n.\r\n");

			if (end != NULL) {
				size_t l = (size_t)(end - buf) + 2;

				memcpy(f->data, buf, l < sizeof(f->data) ? l : sizeof(f->data) - 1);
				f->datalen = l;
				memmove(buf, end + 5, len - l - 3 + 1);
				len -= l + 3;
				in_data = 0;
				snprintf(f->data + f->datalen, 1, "%s", "");
				wr(c, f->final_code == 250 ? "250 2.0.0 queued\r\n" :
				    "452 4.3.1 full\r\n");
			}
		}
	}
	close(c);
	return NULL;
}

static int
fake_start(struct fake *f, pthread_t *t, char *target, size_t tn)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof(a);

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	f->lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (f->lfd < 0 || bind(f->lfd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    listen(f->lfd, 4) < 0 || getsockname(f->lfd, (struct sockaddr *)&a, &al) < 0)
		return -1;
	snprintf(target, tn, "[127.0.0.1]:%u", ntohs(a.sin_port));
	return pthread_create(t, NULL, fake_run, f);
}

static const struct {
	const char *name;
	int rcpt_code, final_code;
	const char *text;	/* NULL: from a file with file_text */
	const char *file_text;
	int rc;
	const char *reply_prefix;
	const char *data;	/* what the relayhost must have received */
} cases[] = {
	{ "text taken, dot-stuffed, bare LF made CRLF", 250, 250,
	  "Subject: x\n\n.leading dot\r\nend", NULL, 0, "250",
	  "Subject: x\r\n\r\n..leading dot\r\nend\r\n" },
	{ "file taken", 250, 250, NULL, "Subject: f\r\n\r\nbody\r\n.\r\n", 0, "250",
	  "Subject: f\r\n\r\nbody\r\n..\r\n" },
	{ "recipient refused", 550, 250, "Subject: x\r\n\r\nb\r\n", NULL, -1, "550 5.1.1", NULL },
	{ "refused after the dot", 250, 452, "Subject: x\r\n\r\nb\r\n", NULL, -1, "452 4.3.1", NULL },
};

static void
test_cases(void)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct fake *f = calloc(1, sizeof(*f));
		pthread_t t;
		char target[64], reply[RELAY_REPLY_MAX];
		int fd = -1, rc;

		f->rcpt_code = cases[i].rcpt_code;
		f->final_code = cases[i].final_code;
		CU_ASSERT_EQUAL_FATAL(fake_start(f, &t, target, sizeof(target)), 0);
		if (cases[i].file_text != NULL) {
			char p[] = "/tmp/portcullis-relay-XXXXXX";

			fd = mkstemp(p);
			CU_ASSERT_FATAL(fd >= 0);
			unlink(p);
			CU_ASSERT(write(fd, cases[i].file_text, strlen(cases[i].file_text)) > 0);
		}
		rc = relay_send(target, "mx.example.com", 5, "", "bob@example.org", cases[i].text, fd,
		    reply, sizeof(reply));
		pthread_join(t, NULL);
		if (rc != cases[i].rc || strncmp(reply, cases[i].reply_prefix,
		    strlen(cases[i].reply_prefix)) != 0) {
			fprintf(stderr, "relay case %s: rc %d reply %s\n", cases[i].name, rc, reply);
			CU_FAIL("relay_send result");
		}
		CU_ASSERT_STRING_EQUAL(f->mail, "MAIL FROM:<>");
		CU_ASSERT_STRING_EQUAL(f->rcpt, "RCPT TO:<bob@example.org>");
		if (cases[i].data != NULL && strcmp(f->data, cases[i].data) != 0) {
			fprintf(stderr, "relay case %s: data [%s]\n", cases[i].name, f->data);
			CU_FAIL("relay_send data");
		}
		if (fd >= 0)
			close(fd);
		close(f->lfd);
		free(f);
	}
}

/* nobody listening: a 4xx of our own, nothing hangs */
static void
test_down(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof(a);
	int s = socket(AF_INET, SOCK_STREAM, 0);
	char target[64], reply[RELAY_REPLY_MAX];

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CU_ASSERT_EQUAL_FATAL(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
	CU_ASSERT_EQUAL(getsockname(s, (struct sockaddr *)&a, &al), 0);
	snprintf(target, sizeof(target), "[127.0.0.1]:%u", ntohs(a.sin_port));
	close(s);	/* bound, never listened: the port is refused */
	CU_ASSERT_EQUAL(relay_send(target, "h", 2, "", "x@example.org", "S: x\r\n\r\n", -1, reply,
	    sizeof(reply)), -1);
	CU_ASSERT_EQUAL(strncmp(reply, "451 4.4.1", 9), 0);
	CU_ASSERT_EQUAL(relay_send("nonsense", "h", 2, "", "x@example.org", "x", -1, reply,
	    sizeof(reply)), -1);
	CU_ASSERT_EQUAL(strncmp(reply, "451 4.3.5", 9), 0);
}

static CU_TestInfo tests[] = {
	{ "messages to a scripted relayhost (table)", test_cases },
	{ "relayhost down or malformed", test_down },
	{ NULL, NULL },
};

void
test_relay_send_register(void)
{
	unit_suite("relay_send", tests);
}
