/*
 * relay_send.c - one message to the relayhost over a blocking socket (see
 * relay_send.h). Used off the event loop only. Peer replies are copied out
 * made printable and capped; they are never logged raw here.
 */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "smtp-gateway/relay_send.h"

struct rs {
	int fd;
	char in[4096];
	size_t inlen;
	char out[16384];
	size_t outlen;
	int bol, cr;
};

static void
say(char *reply, size_t n, const char *fmt, const char *a)
{
	snprintf(reply, n, fmt, a);
}

static int
target_connect(const char *target, unsigned timeout, char *reply, size_t rn)
{
	char host[256];
	const char *port, *h = target;
	size_t hl;
	struct addrinfo hints, *ai = NULL;
	struct timeval tv = { .tv_sec = timeout ? (time_t)timeout : 30 };
	int fd;

	if (*h == '[') {
		const char *e = strchr(h, ']');

		if (e == NULL || e[1] != ':') {
			say(reply, rn, "451 4.3.5 relayhost %s is not [HOST]:PORT", "");
			return -1;
		}
		hl = (size_t)(e - h - 1);
		h++;
		port = e + 2;
	} else {
		const char *c = strrchr(h, ':');

		if (c == NULL) {
			say(reply, rn, "451 4.3.5 relayhost %s is not [HOST]:PORT", "");
			return -1;
		}
		hl = (size_t)(c - h);
		port = c + 1;
	}
	if (hl >= sizeof(host)) {
		say(reply, rn, "451 4.3.5 relayhost %s is not [HOST]:PORT", "");
		return -1;
	}
	memcpy(host, h, hl);
	host[hl] = '\0';
	memset(&hints, 0, sizeof(hints));
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(host, port, &hints, &ai) != 0 || ai == NULL) {
		say(reply, rn, "451 4.3.5 relayhost %s is not [HOST]:PORT", "");
		return -1;
	}
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
	    connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		say(reply, rn, "451 4.4.1 relayhost not reachable: %s", strerror(errno));
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		return -1;
	}
	freeaddrinfo(ai);
	return fd;
}

static int
flush_out(struct rs *s, char *reply, size_t rn)
{
	size_t off = 0;

	while (off < s->outlen) {
		ssize_t w = send(s->fd, s->out + off, s->outlen - off, MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			say(reply, rn, "451 4.4.2 relayhost connection lost: %s",
			    w < 0 ? strerror(errno) : "closed");
			return -1;
		}
		off += (size_t)w;
	}
	s->outlen = 0;
	return 0;
}

static int
put(struct rs *s, const char *p, size_t n, char *reply, size_t rn)
{
	while (n > 0) {
		size_t k = sizeof(s->out) - s->outlen;

		if (k > n)
			k = n;
		memcpy(s->out + s->outlen, p, k);
		s->outlen += k;
		p += k;
		n -= k;
		if (s->outlen == sizeof(s->out) && flush_out(s, reply, rn) < 0)
			return -1;
	}
	return 0;
}

/* one reply (all its lines); its code, or -1 (reply says why) */
static int
get_reply(struct rs *s, char *reply, size_t rn)
{
	for (int lines = 0; lines < 100;) {
		char *nl = memchr(s->in, '\n', s->inlen);

		if (nl != NULL) {
			size_t l = (size_t)(nl - s->in) + 1, k = 0;
			int code, last;

			if (l < 4 || s->in[0] < '2' || s->in[0] > '5') {
				say(reply, rn, "451 4.5.0 relayhost sent a malformed reply%s", "");
				return -1;
			}
			code = (s->in[0] - '0') * 100 + (s->in[1] - '0') * 10 + (s->in[2] - '0');
			last = s->in[3] != '-';
			for (size_t i = 0; i < l && k + 1 < rn && k + 1 < RELAY_REPLY_MAX; i++) {
				unsigned char c = (unsigned char)s->in[i];

				if (c == '\r' || c == '\n')
					continue;
				reply[k++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
			}
			reply[k] = '\0';
			memmove(s->in, s->in + l, s->inlen - l);
			s->inlen -= l;
			lines++;
			if (last)
				return code;
			continue;
		}
		if (s->inlen == sizeof(s->in)) {
			s->inlen = 0;	/* an over-long line: keep its tail only */
			continue;
		}
		{
			ssize_t r = recv(s->fd, s->in + s->inlen, sizeof(s->in) - s->inlen, 0);

			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				say(reply, rn, "451 4.4.2 relayhost connection lost: %s",
				    r < 0 ? strerror(errno) : "closed");
				return -1;
			}
			s->inlen += (size_t)r;
		}
	}
	say(reply, rn, "451 4.5.0 relayhost reply too long%s", "");
	return -1;
}

static int
cmd(struct rs *s, const char *line, char *reply, size_t rn)
{
	if (put(s, line, strlen(line), reply, rn) < 0 || put(s, "\r\n", 2, reply, rn) < 0 ||
	    flush_out(s, reply, rn) < 0)
		return -1;
	return get_reply(s, reply, rn);
}

/* message bytes: bare LF made CRLF, dot-stuffed */
static int
body(struct rs *s, const char *p, size_t n, char *reply, size_t rn)
{
	for (size_t i = 0; i < n; i++) {
		char c = p[i];

		if (s->bol && c == '.' && put(s, ".", 1, reply, rn) < 0)
			return -1;
		if (c == '\n' && !s->cr && put(s, "\r", 1, reply, rn) < 0)
			return -1;
		if (put(s, &c, 1, reply, rn) < 0)
			return -1;
		s->cr = c == '\r';
		s->bol = c == '\n';
	}
	return 0;
}

int
relay_send(const char *target, const char *helo, unsigned timeout, const char *from,
    const char *rcpt, const char *text, int fd, char *reply, size_t rn)
{
	return relay_send_at(target, helo, timeout, from, rcpt, text, text != NULL ? -1 : fd, 0,
	    reply, rn);
}

int
relay_send_at(const char *target, const char *helo, unsigned timeout, const char *from,
    const char *rcpt, const char *text, int fd, long long start, char *reply, size_t rn)
{
	struct rs *s = calloc(1, sizeof(*s));
	char line[1100];
	int code, rc = -1;

	if (s == NULL) {
		say(reply, rn, "451 4.3.0 out of memory%s", "");
		return -1;
	}
	if (strlen(from) > 900 || strlen(rcpt) > 900 || strpbrk(from, "\r\n<>") != NULL ||
	    strpbrk(rcpt, "\r\n<>") != NULL) {
		say(reply, rn, "451 4.1.7 address not usable%s", "");
		free(s);
		return -1;
	}
	if ((s->fd = target_connect(target, timeout, reply, rn)) < 0) {
		free(s);
		return -1;
	}
	if ((code = get_reply(s, reply, rn)) != 220)
		goto out;
	snprintf(line, sizeof(line), "EHLO %s", helo != NULL ? helo : "localhost");
	if ((code = cmd(s, line, reply, rn)) != 250) {
		if (code < 0)
			goto out;
		snprintf(line, sizeof(line), "HELO %s", helo != NULL ? helo : "localhost");
		if ((code = cmd(s, line, reply, rn)) != 250)
			goto out;
	}
	snprintf(line, sizeof(line), "MAIL FROM:<%s>", from);
	if ((code = cmd(s, line, reply, rn)) / 100 != 2)
		goto out;
	snprintf(line, sizeof(line), "RCPT TO:<%s>", rcpt);
	if ((code = cmd(s, line, reply, rn)) / 100 != 2)
		goto out;
	if ((code = cmd(s, "DATA", reply, rn)) != 354)
		goto out;
	s->bol = 1;
	if (text != NULL && body(s, text, strlen(text), reply, rn) < 0)
		goto out;
	if (fd >= 0) {
		char buf[8192];
		off_t off = (off_t)start;
		ssize_t r;

		while ((r = pread(fd, buf, sizeof(buf), off)) != 0) {
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0) {
				say(reply, rn, "451 4.3.0 cannot read the message: %s", strerror(errno));
				goto out;
			}
			if (body(s, buf, (size_t)r, reply, rn) < 0)
				goto out;
			off += r;
		}
	}
	if ((!s->bol && put(s, "\r\n", 2, reply, rn) < 0) || put(s, ".\r\n", 3, reply, rn) < 0 ||
	    flush_out(s, reply, rn) < 0)
		goto out;
	if ((code = get_reply(s, reply, rn)) / 100 == 2) {
		rc = 0;
		(void)cmd(s, "QUIT", line, sizeof(line));
	}
out:
	if (rc < 0 && code > 0 && reply[0] != '4' && reply[0] != '5')
		say(reply, rn, "451 4.5.0 unexpected relayhost reply%s", "");
	close(s->fd);
	free(s);
	return rc;
}
