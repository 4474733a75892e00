/* service/conn through a trivial door on a loopback listener: greeting and
 * pipelined lines, flush-then-close, the limits' and the timeout's last
 * words, hold/release with the client gone meanwhile, pause/resume, drain.
 * One thread: the client sockets are non-blocking and the test turns the
 * loop itself. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "common/xmalloc.h"
#include "service/conn.h"
#include "service/deadline.h"
#include "tests/unit/unit.h"

/* the door: "+OK hi" then, per line, "A:<line>"; "quit" says BYE and
 * closes; "hold" holds and pauses until the test releases */
struct tdoor {
	int opened, closing, freed, timed_out, drained;
	struct conn *held;
};

static void
t_opened(struct conn *c)
{
	struct tdoor *d = conn_server_arg(conn_server(c));

	d->opened++;
	conn_set_ctx(c, d);
	conn_write(c, "+OK hi\r\n", 8);
}

static void
t_input(struct conn *c)
{
	struct tdoor *d = conn_ctx(c);
	struct evbuffer *in = conn_input(c);
	char *line;
	size_t n;

	while (!conn_is_closing(c) && d->held != c &&
	    (line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF)) != NULL) {
		if (strcmp(line, "quit") == 0) {
			conn_write(c, "BYE\r\n", 5);
			conn_close(c);
		} else if (strcmp(line, "short") == 0) {
			conn_set_timeout(c, 1);
			conn_write(c, "A:short\r\n", 9);
		} else if (strcmp(line, "hold") == 0) {
			conn_hold(c);
			conn_pause(c);
			d->held = c;
		} else {
			char out[128];
			int k = snprintf(out, sizeof(out), "A:%s\r\n", line);

			conn_write(c, out, (size_t)k);
		}
		free(line);
	}
}

static void t_timed_out(struct conn *c) { ((struct tdoor *)conn_ctx(c))->timed_out++; }
static void t_closing(struct conn *c) { ((struct tdoor *)conn_ctx(c))->closing++; }
static void t_free(struct conn *c) { ((struct tdoor *)conn_ctx(c))->freed++; }
static void t_drained(void *arg) { ((struct tdoor *)arg)->drained++; }

static const struct conn_ops t_ops = {
	.opened = t_opened, .input = t_input, .timed_out = t_timed_out,
	.closing = t_closing, .free = t_free,
};

struct fixture {
	struct event_base *base;
	struct conn_server *s;
	struct conn_server_conf cf;
	struct tdoor d;
	int lfd;
	struct sockaddr_in sa;
};

static void
fx_init(struct fixture *f, unsigned max_conn, unsigned max_client, unsigned timeout)
{
	socklen_t sl = sizeof(f->sa);
	const char *err;
	int one = 1;

	memset(f, 0, sizeof(*f));
	f->cf.door = "test";
	f->cf.max_connections = max_conn;
	f->cf.max_per_client = max_client;
	f->cf.timeout = timeout;
	f->cf.stress_timeout = timeout;
	f->cf.request_deadline = 1;
	f->cf.words_timeout = "-ERR timeout\r\n";
	f->cf.words_too_many = "-ERR too many\r\n";
	f->cf.words_too_many_client = "-ERR too many from you\r\n";
	f->base = event_base_new();
	f->s = conn_server_new(f->base, &f->cf, &t_ops, &f->d);
	f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	f->sa.sin_family = AF_INET;
	f->sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CU_ASSERT_FATAL(setsockopt(f->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0);
	CU_ASSERT_FATAL(bind(f->lfd, (struct sockaddr *)&f->sa, sizeof(f->sa)) == 0);
	CU_ASSERT_FATAL(listen(f->lfd, 16) == 0);
	CU_ASSERT_FATAL(getsockname(f->lfd, (struct sockaddr *)&f->sa, &sl) == 0);
	CU_ASSERT_FATAL(conn_server_listen(f->s, f->lfd, "test", 0, 0, &err) == 0);
}

static void
fx_deinit(struct fixture *f)
{
	conn_server_free(&f->s);
	close(f->lfd);
	event_base_free(f->base);
}

static int
client(const struct fixture *f)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	CU_ASSERT_FATAL(connect(fd, (const struct sockaddr *)&f->sa, sizeof(f->sa)) == 0);
	fcntl(fd, F_SETFL, O_NONBLOCK);
	return fd;
}

/* turn the loop and read fd until EOF (1) or ms pass (0); text gathers */
static int
pump(struct fixture *f, int fd, char *text, size_t cap, int ms)
{
	long long end = deadline_now_ms() + ms;
	size_t have = strlen(text);

	while (deadline_now_ms() < end) {
		ssize_t r;

		event_base_loop(f->base, EVLOOP_NONBLOCK);
		r = read(fd, text + have, cap - 1 - have);
		if (r == 0)
			return 1;
		if (r > 0) {
			have += (size_t)r;
			text[have] = '\0';
			continue;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return 1;
		poll(NULL, 0, 5);
	}
	return 0;
}

static void
test_conn_lines_and_close(void)
{
	struct fixture f;
	char text[512] = "";
	int fd;

	fx_init(&f, 10, 10, 30);
	fd = client(&f);
	/* pipelined in one write: every line answered in order, then BYE */
	CU_ASSERT(write(fd, "a\r\nb\r\nquit\r\nc\r\n", 15) == 15);
	CU_ASSERT(pump(&f, fd, text, sizeof(text), 3000) == 1);
	CU_ASSERT_STRING_EQUAL(text, "+OK hi\r\nA:a\r\nA:b\r\nBYE\r\n");
	CU_ASSERT_EQUAL(f.d.opened, 1);
	CU_ASSERT_EQUAL(f.d.closing, 1);
	CU_ASSERT_EQUAL(f.d.freed, 1);
	CU_ASSERT_EQUAL(conn_server_count(f.s), 0);
	close(fd);
	fx_deinit(&f);
}

static void
test_conn_limits(void)
{
	static const struct {
		unsigned max_conn, max_client;
		const char *words;
	} rows[] = {
		{ 1, 0, "-ERR too many\r\n" },
		{ 0, 1, "-ERR too many from you\r\n" },
	};

	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		struct fixture f;
		char t1[128] = "", t2[128] = "";
		int a, b;

		fx_init(&f, rows[i].max_conn, rows[i].max_client, 30);
		a = client(&f);
		CU_ASSERT(pump(&f, a, t1, sizeof(t1), 300) == 0);
		CU_ASSERT_STRING_EQUAL(t1, "+OK hi\r\n");
		b = client(&f);
		CU_ASSERT(pump(&f, b, t2, sizeof(t2), 3000) == 1);
		CU_ASSERT_STRING_EQUAL(t2, rows[i].words);
		CU_ASSERT_EQUAL(f.d.opened, 1);	/* the refused one never reached the door */
		close(a);
		close(b);
		fx_deinit(&f);
		CU_ASSERT_EQUAL(f.d.freed, 1);
	}
}

static void
test_conn_timeout(void)
{
	struct fixture f;
	char text[128] = "";
	long long t0;
	int fd;

	fx_init(&f, 10, 10, 1);
	fd = client(&f);
	t0 = deadline_now_ms();
	CU_ASSERT(pump(&f, fd, text, sizeof(text), 4000) == 1);
	CU_ASSERT(deadline_now_ms() - t0 >= 900);
	CU_ASSERT_STRING_EQUAL(text, "+OK hi\r\n-ERR timeout\r\n");
	CU_ASSERT_EQUAL(f.d.timed_out, 1);
	CU_ASSERT_EQUAL(f.d.freed, 1);
	close(fd);
	fx_deinit(&f);
}

/* a connection's own timeout (IMAP IDLE, before login) over the server's */
static void
test_conn_own_timeout(void)
{
	struct fixture f;
	char text[128] = "";
	long long t0;
	int fd;

	fx_init(&f, 10, 10, 30);
	fd = client(&f);
	CU_ASSERT(write(fd, "short\r\n", 7) == 7);
	t0 = deadline_now_ms();
	CU_ASSERT(pump(&f, fd, text, sizeof(text), 5000) == 1);
	CU_ASSERT(deadline_now_ms() - t0 >= 900);
	CU_ASSERT(deadline_now_ms() - t0 < 4000);
	CU_ASSERT_STRING_EQUAL(text, "+OK hi\r\nA:short\r\n-ERR timeout\r\n");
	close(fd);
	fx_deinit(&f);
}

static void
test_conn_hold_release(void)
{
	struct fixture f;
	char text[256] = "";
	struct conn *c;
	int fd;

	/* held and paused: the pipelined line waits, the clock stands still */
	fx_init(&f, 10, 10, 1);
	fd = client(&f);
	CU_ASSERT(write(fd, "hold\r\nx\r\n", 9) == 9);
	CU_ASSERT(pump(&f, fd, text, sizeof(text), 1500) == 0);
	CU_ASSERT_STRING_EQUAL(text, "+OK hi\r\n");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f.d.held);
	c = f.d.held;
	f.d.held = NULL;
	CU_ASSERT(conn_release(c) == 0);
	conn_write(c, "+released\r\n", 11);
	conn_resume(c);
	CU_ASSERT(pump(&f, fd, text, sizeof(text), 300) == 0);
	CU_ASSERT_STRING_EQUAL(text, "+OK hi\r\n+released\r\nA:x\r\n");

	/* closed while held (say the server stops it): closing at once, the
	 * free waits for the release */
	CU_ASSERT(write(fd, "hold\r\n", 6) == 6);
	CU_ASSERT(pump(&f, fd, text, sizeof(text), 200) == 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(f.d.held);
	conn_close(f.d.held);
	CU_ASSERT(pump(&f, fd, text, sizeof(text), 200) == 0);
	CU_ASSERT_EQUAL(f.d.closing, 1);
	CU_ASSERT_EQUAL(f.d.freed, 0);
	CU_ASSERT(conn_release(f.d.held) == 1);
	CU_ASSERT_EQUAL(f.d.freed, 1);
	CU_ASSERT(pump(&f, fd, text, sizeof(text), 1000) == 1);	/* the socket goes with it */
	close(fd);
	CU_ASSERT_EQUAL(conn_server_count(f.s), 0);
	fx_deinit(&f);
}

static void
test_conn_drain(void)
{
	struct fixture f;
	char text[128] = "";
	int fd;

	fx_init(&f, 10, 10, 30);
	fd = client(&f);
	CU_ASSERT(pump(&f, fd, text, sizeof(text), 200) == 0);
	conn_server_drain(f.s, 30, t_drained, &f.d);
	CU_ASSERT_EQUAL(f.d.drained, 0);
	CU_ASSERT(write(fd, "quit\r\n", 6) == 6);
	CU_ASSERT(pump(&f, fd, text, sizeof(text), 3000) == 1);
	CU_ASSERT_EQUAL(f.d.drained, 1);
	close(fd);
	fx_deinit(&f);
}

void
test_conn_register(void)
{
	CU_pSuite s = CU_add_suite("conn", NULL, NULL);

	CU_add_test(s, "pipelined lines answered in order, then flush and close",
	    test_conn_lines_and_close);
	CU_add_test(s, "max_connections and max_per_client refuse with the door's words",
	    test_conn_limits);
	CU_add_test(s, "a silent client gets the timeout words", test_conn_timeout);
	CU_add_test(s, "conn_set_timeout overrides the server's timeout", test_conn_own_timeout);
	CU_add_test(s, "hold/release: input waits; one closed while held is freed at release",
	    test_conn_hold_release);
	CU_add_test(s, "drain calls back once the last connection closed", test_conn_drain);
}
