/*
 * downstream - the gateway's SMTP client for pass-through delivery.
 *
 *   downstream_open()   connect, greeting, EHLO (HELO if EHLO is refused)
 *   downstream_cmd()    MAIL, RCPT, RSET...: one line, one reply
 *   downstream_data()   DATA; the message with dot-stuffing added back; "."
 *
 * The downstream's replies are input: lines are capped, multi-line replies
 * read to the last line, text made printable before anyone repeats it.
 * Blocking with timeouts: only ever called from job threads.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "common/xmalloc.h"
#include "smtp-gateway/downstream.h"

#define DOWN_LINE_MAX 1000
#define DOWN_REPLY_LINES 100

struct downstream {
	int fd;
	char buf[4096];
	size_t have, off;
	char wbuf[65536];
	size_t wlen;
	int bol;		/* streaming: at the start of a line */
	int in_data;		/* DATA was answered 354 */
};

static int
parse_target(const char *t, char *host, size_t cap, int *port_r)
{
	const char *colon = strrchr(t, ':');
	const char *h = t, *he;
	char *end;
	long port;

	if (colon == NULL)
		return -1;
	port = strtol(colon + 1, &end, 10);
	if (*end != '\0' || end == colon + 1 || port < 1 || port > 65535)
		return -1;
	he = colon;
	if (*h == '[') {
		h++;
		if (he[-1] != ']')
			return -1;
		he--;
	}
	if (he <= h || (size_t)(he - h) >= cap)
		return -1;
	memcpy(host, h, (size_t)(he - h));
	host[he - h] = '\0';
	*port_r = (int)port;
	return 0;
}

int
downstream_target_is_valid(const char *target)
{
	char host[256];
	int port;
	struct in6_addr a6;
	struct in_addr a4;

	if (parse_target(target, host, sizeof(host), &port) < 0)
		return 0;
	/* numeric only: no DNS from the gateway */
	return inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1;
}

static void
say(int *code_r, char reply[DOWN_REPLY_MAX], int code, const char *fmt, const char *arg)
{
	char tmp[DOWN_REPLY_MAX];

	snprintf(tmp, sizeof(tmp), fmt, arg);
	snprintf(reply, DOWN_REPLY_MAX, "%d %s", code, tmp);
	if (code_r)
		*code_r = code;
}

static int
fill(struct downstream *d)
{
	ssize_t n;

	if (d->off > 0) {
		memmove(d->buf, d->buf + d->off, d->have - d->off);
		d->have -= d->off;
		d->off = 0;
	}
	do
		n = read(d->fd, d->buf + d->have, sizeof(d->buf) - d->have);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		return -1;
	d->have += (size_t)n;
	return 0;
}

/* one reply (all its lines); returns the code, -1 on I/O or protocol error */
static int
read_reply(struct downstream *d, char reply[DOWN_REPLY_MAX])
{
	for (int lines = 0; lines < DOWN_REPLY_LINES; lines++) {
		char line[DOWN_LINE_MAX + 1];
		size_t n = 0;

		for (;;) {
			char *nl = memchr(d->buf + d->off, '\n', d->have - d->off);

			if (nl != NULL) {
				size_t l = (size_t)(nl - (d->buf + d->off));

				n = l < DOWN_LINE_MAX ? l : DOWN_LINE_MAX;
				memcpy(line, d->buf + d->off, n);
				d->off += l + 1;
				break;
			}
			if (d->have - d->off >= DOWN_LINE_MAX || fill(d) < 0)
				return -1;
		}
		if (n > 0 && line[n - 1] == '\r')
			n--;
		line[n] = '\0';
		if (n < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' ||
		    line[2] < '0' || line[2] > '9' || (n > 3 && line[3] != ' ' && line[3] != '-'))
			return -1;
		if (n == 3 || line[3] == ' ') {
			size_t k = 0;

			for (size_t i = 0; i < n && k + 1 < DOWN_REPLY_MAX; i++)
				reply[k++] = (line[i] >= 0x20 && line[i] < 0x7f) ? line[i] : '?';
			reply[k] = '\0';
			return (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
		}
	}
	return -1;
}

static int
flush_w(struct downstream *d)
{
	size_t off = 0;

	while (off < d->wlen) {
		ssize_t n = write(d->fd, d->wbuf + off, d->wlen - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		off += (size_t)n;
	}
	d->wlen = 0;
	return 0;
}

static int
put(struct downstream *d, const char *s, size_t n)
{
	while (n > 0) {
		size_t room = sizeof(d->wbuf) - d->wlen, k = n < room ? n : room;

		memcpy(d->wbuf + d->wlen, s, k);
		d->wlen += k;
		s += k;
		n -= k;
		if (d->wlen == sizeof(d->wbuf) && flush_w(d) < 0)
			return -1;
	}
	return 0;
}

struct downstream *
downstream_open(const char *target, const char *helo, unsigned timeout, int *code_r,
    char reply[DOWN_REPLY_MAX])
{
	struct downstream *d;
	struct sockaddr_storage ss;
	socklen_t sl;
	struct timeval tv = { timeout, 0 };
	char host[256], line[300];
	int port, code;

	memset(&ss, 0, sizeof(ss));
	if (parse_target(target, host, sizeof(host), &port) < 0) {
		say(code_r, reply, 451, "4.3.5 bad downstream address %s", target);
		return NULL;
	}
	if (inet_pton(AF_INET, host, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
		((struct sockaddr_in *)&ss)->sin_family = AF_INET;
		((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
		sl = sizeof(struct sockaddr_in);
	} else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
		((struct sockaddr_in6 *)&ss)->sin6_family = AF_INET6;
		((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
		sl = sizeof(struct sockaddr_in6);
	} else {
		say(code_r, reply, 451, "4.3.5 downstream %s is not a numeric address", target);
		return NULL;
	}
	d = xcalloc(1, sizeof(*d));
	d->bol = 1;
	d->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (d->fd < 0)
		goto fail;
	setsockopt(d->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(d->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	/* we buffer and flush ourselves; Nagle would hold a small write (the
	 * Received: line after 354, the final dot) ~40 ms for a delayed ACK */
	setsockopt(d->fd, IPPROTO_TCP, TCP_NODELAY, &(int){ 1 }, sizeof(int));
	if (connect(d->fd, (struct sockaddr *)&ss, sl) < 0)
		goto fail;
	code = read_reply(d, reply);
	if (code != 220) {
		if (code < 0)
			goto fail;
		if (code_r)
			*code_r = code >= 500 ? 451 : code;
		snprintf(reply, DOWN_REPLY_MAX, "451 4.4.2 downstream refused the connection");
		close(d->fd);
		free(d);
		return NULL;
	}
	snprintf(line, sizeof(line), "EHLO %s", helo);
	code = downstream_cmd(d, line, reply);
	if (code >= 500) {
		snprintf(line, sizeof(line), "HELO %s", helo);
		code = downstream_cmd(d, line, reply);
	}
	if (code != 250) {
		downstream_close(&d);
		say(code_r, reply, 451, "4.4.2 downstream did not accept %s", "EHLO");
		return NULL;
	}
	return d;
fail:
	say(code_r, reply, 451, "4.4.1 downstream unavailable: %s", strerror(errno));
	if (d->fd >= 0)
		close(d->fd);
	free(d);
	return NULL;
}

int
downstream_cmd(struct downstream *d, const char *line, char reply[DOWN_REPLY_MAX])
{
	int code;

	if (put(d, line, strlen(line)) < 0 || put(d, "\r\n", 2) < 0 || flush_w(d) < 0) {
		snprintf(reply, DOWN_REPLY_MAX, "451 4.4.2 downstream connection lost");
		return 451;
	}
	code = read_reply(d, reply);
	if (code < 0) {
		snprintf(reply, DOWN_REPLY_MAX, "451 4.4.2 downstream connection lost");
		return 451;
	}
	return code;
}

int
downstream_begin_data(struct downstream *d, const char *head, char reply[DOWN_REPLY_MAX])
{
	int code;

	if (d->in_data)
		return 354;
	code = downstream_cmd(d, "DATA", reply);
	if (code != 354)
		return code;
	d->in_data = 1;
	if (head != NULL && downstream_send(d, head, strlen(head)) < 0) {
		snprintf(reply, DOWN_REPLY_MAX, "451 4.4.2 downstream connection lost during DATA");
		return 451;
	}
	return 354;
}

int
downstream_send(struct downstream *d, const char *s, size_t len)
{
	const char *e = s + len;

	while (s < e) {
		const char *nl = memchr(s, '\n', (size_t)(e - s));
		size_t n = nl ? (size_t)(nl - s) + 1 : (size_t)(e - s);

		/* dot-stuffing back on: a line starting with '.' gets another */
		if (d->bol && *s == '.' && put(d, ".", 1) < 0)
			return -1;
		if (put(d, s, n) < 0)
			return -1;
		d->bol = nl != NULL;
		s += n;
	}
	return flush_w(d);
}

int
downstream_finish(struct downstream *d, char reply[DOWN_REPLY_MAX])
{
	int code;

	if ((!d->bol && put(d, "\r\n", 2) < 0) || put(d, ".\r\n", 3) < 0 || flush_w(d) < 0)
		goto lost;
	code = read_reply(d, reply);
	if (code < 0)
		goto lost;
	return code;
lost:
	snprintf(reply, DOWN_REPLY_MAX, "451 4.4.2 downstream connection lost during DATA");
	return 451;
}

int
downstream_data(struct downstream *d, const char *head, size_t headlen, const char *body,
    size_t bodylen, char reply[DOWN_REPLY_MAX])
{
	int code = downstream_cmd(d, "DATA", reply);
	int bol = 1;
	const char *parts[2] = { head, body };
	size_t lens[2] = { headlen, bodylen };

	if (code != 354)
		return code == 451 ? 451 : code;
	for (int p = 0; p < 2; p++) {
		const char *s = parts[p], *e = s + lens[p];

		while (s < e) {
			const char *nl = memchr(s, '\n', (size_t)(e - s));
			size_t n = nl ? (size_t)(nl - s) + 1 : (size_t)(e - s);

			/* dot-stuffing back on: a line starting with '.' gets another */
			if (bol && *s == '.' && put(d, ".", 1) < 0)
				goto lost;
			if (put(d, s, n) < 0)
				goto lost;
			bol = nl != NULL;
			s += n;
		}
	}
	if (!bol && put(d, "\r\n", 2) < 0)
		goto lost;
	if (put(d, ".\r\n", 3) < 0 || flush_w(d) < 0)
		goto lost;
	code = read_reply(d, reply);
	if (code < 0)
		goto lost;
	return code;
lost:
	snprintf(reply, DOWN_REPLY_MAX, "451 4.4.2 downstream connection lost during DATA");
	return 451;
}

void
downstream_close(struct downstream **dp)
{
	struct downstream *d = *dp;
	char reply[DOWN_REPLY_MAX];

	if (d == NULL)
		return;
	if (put(d, "QUIT\r\n", 6) == 0 && flush_w(d) == 0) {
		struct timeval tv = { 1, 0 };

		setsockopt(d->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		(void)read_reply(d, reply);
	}
	close(d->fd);
	free(d);
	*dp = NULL;
}
