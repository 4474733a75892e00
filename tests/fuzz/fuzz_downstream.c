/*
 * libFuzzer target: the pass-through client (smtp-gateway/downstream.c)
 * against a downstream that says whatever the input says.
 *
 * Each input is one session on a real loopback connection: the harness
 * listens on 127.0.0.1, the session connects, and the input (split at 0xff
 * bytes) is written piece by piece as the downstream's side while the event
 * loop runs. The client side is driven like the gateway drives it: the
 * first RCPT, a body with lines that need dot-stuffing, the final dot, then
 * close; the first input byte picks the cache on or off. Whatever comes
 * back, nothing may crash, leak, hang or call back twice.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "smtp-gateway/downstream.h"

static struct event_base *base;
static int listener = -1;
static char target[64];

struct state {
	int rcpt_calls, fin_calls;
	char rcpt[DOWN_REPLY_MAX];
};

static void
rcpt_cb(void *arg, const char *reply)
{
	struct state *st = arg;

	if (++st->rcpt_calls > 1)
		__builtin_trap();	/* once per step */
	if (strlen(reply) < 3)
		__builtin_trap();	/* a reply always has its code */
	snprintf(st->rcpt, sizeof(st->rcpt), "%s", reply);
}

static void
fin_cb(void *arg, const char *reply)
{
	struct state *st = arg;

	if (++st->fin_calls > 1 || strlen(reply) < 3)
		__builtin_trap();
}

static void
setup(void)
{
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);

	signal(SIGPIPE, SIG_IGN);	/* as portcullisd does: writes to a gone peer are EPIPE */
	base = event_base_new();
	listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (base == NULL || listener < 0 || bind(listener, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
	    listen(listener, 16) < 0 || getsockname(listener, (struct sockaddr *)&sin, &sl) < 0)
		abort();
	snprintf(target, sizeof(target), "[127.0.0.1]:%d", ntohs(sin.sin_port));
}

/* run the loop a little; read (and drop) what the client sent */
static void
pump(int srv)
{
	char buf[65536];

	for (int i = 0; i < 8; i++) {
		event_base_loop(base, EVLOOP_NONBLOCK);
		if (srv >= 0)
			while (recv(srv, buf, sizeof(buf), MSG_DONTWAIT) > 0)
				;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char body[] = "Subject: fuzz\r\n\r\n.starts with a dot\r\nline\r\n..two\r\nend";
	struct downstream_set *set;
	struct downstream *d;
	struct state st;
	int srv, sent = 0;
	size_t off = 1;

	if (size < 1)
		return 0;
	if (base == NULL)
		setup();
	memset(&st, 0, sizeof(st));
	set = downstream_set_new(base, (data[0] & 1) ? 2 : 0);
	d = downstream_open(set, target, "fuzz.test", 5, "a@b.example", "FUZZ");
	srv = accept(listener, NULL, NULL);	/* the connect was issued: the kernel has it */
	if (srv >= 0)
		fcntl(srv, F_SETFL, O_NONBLOCK);
	downstream_rcpt(d, "u@example.com", rcpt_cb, &st);
	pump(srv);
	while (off < size && d != NULL) {
		const uint8_t *e = memchr(data + off, 0xff, size - off);
		size_t n = e ? (size_t)(e - (data + off)) : size - off;

		if (srv >= 0 && n > 0 && send(srv, data + off, n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 &&
		    errno != EAGAIN)
			break;
		off += n + (e != NULL);
		pump(srv);
		if (st.rcpt_calls && !sent) {
			sent = 1;
			if (st.rcpt[0] != '2') {
				downstream_close(&d);	/* what the gateway does after a refusal */
				break;
			}
			downstream_send(d, "Received: by fuzz\r\n", body, sizeof(body) - 1);
			downstream_finish(d, NULL, fin_cb, &st);
			pump(srv);
		}
		if (st.fin_calls)
			break;
	}
	if (srv >= 0)
		close(srv);	/* the downstream goes away: every pending step must end */
	pump(-1);
	downstream_close(&d);
	pump(-1);
	downstream_set_free(&set);
	return 0;
}
