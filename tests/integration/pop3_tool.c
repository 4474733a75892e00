/*
 * pop3-tool ROOT: the POP3 core (pop-imap-proxy/pop3_proto.c) on the mail
 * store under ROOT, served on a loopback port for tests until killed: one
 * connection at a time, blocking I/O, every action run inline. The port is
 * printed on the first line of stdout. Users: any "local@domain" login with
 * the password "secret-pw" (canonical name: the login in lower case).
 * For test_pop3_dovecot.py; not the door (which runs on service/).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/sasl.h"
#include "pop-imap-proxy/pop3_proto.h"
#include "storage-adapter/mailstore.h"
#include "tests/unit/fixture.h"

static int
t_lookup(void *arg, const char *login, struct sasl_user *r)
{
	(void)arg;
	if (strchr(login, '@') == NULL || strlen(login) >= sizeof(r->name))
		return 0;
	snprintf(r->name, sizeof(r->name), "%s", login);
	for (char *p = r->name; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	snprintf(r->hash, sizeof(r->hash), "test");
	return 1;
}

static int
t_verify(void *arg, const struct sasl_user *u, const char *pw)
{
	(void)arg;
	(void)u;
	return strcmp(pw, "secret-pw") == 0;
}

static const struct sasl_callbacks cbs = { t_lookup, t_verify, fixture_no_cram, NULL };

static int
write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int
flush(int fd, struct pop3_proto *p)
{
	for (;;) {
		size_t n;
		const char *o = pop3_proto_output(p, &n);

		if (n == 0)
			return 0;
		if (write_all(fd, o, n) < 0)
			return -1;
		pop3_proto_output_done(p, n);
	}
}

static void
serve(int fd, const char *root)
{
	struct pop3_params prm = {
		.myhostname = "localhost", .user_pass = 1, .auth_mechs = AUTH_MECH_PLAIN,
		.auth_allow_plaintext = 1, .sasl_cb = &cbs,
	};
	struct pop3_proto *p = pop3_proto_new(&prm);
	struct mailstore *ms = NULL;
	struct mailstore_box *box = NULL;
	char buf[4096];
	size_t have = 0;
	const char *err;

	pop3_proto_start(p, NULL);
	for (;;) {
		if (flush(fd, p) < 0)
			break;
		switch (pop3_proto_action(p)) {
		case POP3_ACT_AUTH: {
			struct pop3_auth_req *a = pop3_proto_auth_req(p);
			int ok = a->ok;

			if (a->sasl != NULL && a->check) {
				const char *o;

				sasl_server_check(a->sasl);
				ok = sasl_server_checked(a->sasl, &o) == SASL_OK;
			}
			pop3_proto_auth_done(p, a->sasl != NULL ? ok : 0, NULL);
			continue;
		}
		case POP3_ACT_OPEN:
			if (mailstore_open(root, pop3_proto_user(p), &ms, &err) < 0 ||
			    mailstore_box_open(ms, "INBOX", &box, &err) < 0) {
				fprintf(stderr, "pop3-tool: %s\n", err);
				pop3_proto_opened(p, NULL, 0);
			} else {
				pop3_proto_opened(p, box, 0);
			}
			continue;
		case POP3_ACT_RETR: {
			uint32_t uid;
			long top;
			int mfd, done = 0;
			struct pop3_stream st;
			char chunk[8192];
			size_t n;

			pop3_proto_retr_req(p, &uid, &top);
			if (mailstore_msg_open(box, uid, &mfd, &err) < 0) {
				pop3_proto_retr_opened(p, 0);
				continue;
			}
			pop3_proto_retr_opened(p, 1);
			if (flush(fd, p) < 0)
				goto out;
			pop3_stream_init(&st, mfd, top);
			while (!done) {
				if (pop3_stream_read(&st, chunk, sizeof(chunk), &n, &done, &err) < 0 ||
				    write_all(fd, chunk, n) < 0) {
					close(mfd);
					goto out;
				}
			}
			close(mfd);
			pop3_proto_retr_done(p);
			continue;
		}
		case POP3_ACT_UPDATE: {
			const uint32_t *ex, *seen;
			size_t nex, nseen;
			int ok = 1;

			pop3_proto_update(p, &ex, &nex, &seen, &nseen);
			for (size_t i = 0; i < nex; i++)
				ok &= mailstore_msg_expunge(box, ex[i], &err) == 0;
			for (size_t i = 0; i < nseen; i++)
				ok &= mailstore_msg_set_flags(box, seen[i], MAILSTORE_FLAGS_ADD,
				    MAILSTORE_SEEN, NULL, 0, &err) == 0;
			pop3_proto_update_done(p, ok);
			continue;
		}
		case POP3_ACT_STARTTLS:
			goto out;	/* no TLS here */
		case POP3_ACT_NONE:
			break;
		}
		if (pop3_proto_wants_close(p))
			break;
		if (have == 0) {
			ssize_t r = read(fd, buf, sizeof(buf));

			if (r <= 0)
				break;
			have = (size_t)r;
		}
		size_t used = pop3_proto_input(p, buf, have);

		memmove(buf, buf + used, have - used);
		have -= used;
	}
out:
	(void)flush(fd, p);
	pop3_proto_free(&p);
	mailstore_box_close(&box);
	mailstore_free(&ms);
}

int
main(int argc, char **argv)
{
	struct sockaddr_in sa = { 0 };
	socklen_t sl = sizeof(sa);
	const char *err;
	int ls, one = 1;

	if (argc != 2) {
		fprintf(stderr, "usage: pop3-tool ROOT\n");
		return 2;
	}
	if (sasl_init(&err) < 0) {
		fprintf(stderr, "pop3-tool: %s\n", err);
		return 1;
	}
	ls = socket(AF_INET, SOCK_STREAM, 0);
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, 8) < 0 ||
	    getsockname(ls, (struct sockaddr *)&sa, &sl) < 0) {
		perror("pop3-tool: listen");
		return 1;
	}
	printf("%u\n", (unsigned)ntohs(sa.sin_port));
	fflush(stdout);
	for (;;) {
		int fd = accept(ls, NULL, NULL);

		if (fd < 0)
			continue;
		serve(fd, argv[1]);
		close(fd);
	}
}
