/*
 * imap-session-tool: the IMAP session (pop-imap-proxy/imap_proto.c) over
 * stdin/stdout, without the door, for tests/integration/test_imap_session_dovecot.py:
 * the differential test against a private Dovecot on the same store.
 *
 *   imap-session-tool STORE_ROOT USER < script > replies
 *
 * Any LOGIN/AUTHENTICATE PLAIN password is accepted for USER. Every action
 * runs at once (the store work in this thread, as the door's job thread
 * would); file ranges are copied to stdout from their files. Input is fed
 * one line at a time after the previous command's replies, as a client
 * waiting for each tagged answer would (literals follow their "+").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/sasl.h"
#include "pop-imap-proxy/imap_proto.h"
#include "tests/unit/fixture.h"

static const char *user;

static int
t_lookup(void *arg, const char *login, struct sasl_user *r)
{
	(void)arg;
	(void)login;
	snprintf(r->name, sizeof(r->name), "%s", user);
	snprintf(r->hash, sizeof(r->hash), "x");
	return 1;
}

static int
t_verify(void *arg, const struct sasl_user *u, const char *pw)
{
	(void)arg;
	(void)u;
	(void)pw;
	return 1;
}

static const struct sasl_callbacks cbs = { t_lookup, t_verify, fixture_no_cram, NULL };

static void
drain(struct imap_proto *p)
{
	struct imap_segment g;

	while (imap_proto_output_segment(p, &g)) {
		if (g.fd < 0) {
			fwrite(g.data, 1, g.len, stdout);
		} else {
			char buf[65536];
			size_t left = g.len;
			off_t off = g.offset;

			while (left > 0) {
				ssize_t n = pread(g.fd, buf, left < sizeof(buf) ? left : sizeof(buf), off);

				if (n <= 0)
					break;
				fwrite(buf, 1, (size_t)n, stdout);
				left -= (size_t)n;
				off += n;
			}
		}
		imap_proto_output_done(p, g.len);
	}
	fflush(stdout);
}

static void
run_actions(struct imap_proto *p)
{
	for (;;) {
		drain(p);
		switch (imap_proto_action(p)) {
		case IMAP_ACT_NONE:
			return;
		case IMAP_ACT_AUTH: {
			struct imap_auth_req *r = imap_proto_auth_req(p);
			int ok = r->ok;

			if (r->check) {
				const char *o;

				sasl_server_check(r->sasl);
				ok = sasl_server_checked(r->sasl, &o) == SASL_OK;
			}
			imap_proto_auth_done(p, ok);
			break;
		}
		case IMAP_ACT_STARTTLS:
			imap_proto_set_tls(p, 1);
			break;
		case IMAP_ACT_EXEC:
			imap_proto_exec(p);
			imap_proto_exec_done(p);
			break;
		}
	}
}

int
main(int argc, char **argv)
{
	struct imap_params prm = { 0 };
	struct imap_proto *p;
	const char *err;
	char *in = NULL;
	size_t len = 0, cap = 0, off = 0;

	if (argc != 3) {
		fprintf(stderr, "usage: imap-session-tool STORE_ROOT USER < script\n");
		return 2;
	}
	user = argv[2];
	if (sasl_init(&err) < 0) {
		fprintf(stderr, "sasl: %s\n", err);
		return 1;
	}
	for (;;) {
		size_t n;

		if (len == cap) {
			cap = cap ? cap * 2 : 65536;
			in = realloc(in, cap);
			if (in == NULL)
				return 1;
		}
		n = fread(in + len, 1, cap - len, stdin);
		if (n == 0)
			break;
		len += n;
	}
	prm.myhostname = "localhost";
	prm.login = 1;
	prm.auth_allow_plaintext = 1;
	prm.auth_mechs = AUTH_MECH_PLAIN;
	prm.sasl_cb = &cbs;
	prm.store_root = argv[1];
	p = imap_proto_new(&prm);
	imap_proto_start(p);
	run_actions(p);
	while (off < len && !imap_proto_wants_close(p)) {
		const char *nl = memchr(in + off, '\n', len - off);
		size_t end = nl ? (size_t)(nl - in) + 1 : len, used = 0;

		/* one line (a literal's header line ends one too) at a time */
		while (off < end && !imap_proto_wants_close(p)) {
			used = imap_proto_input(p, in + off, end - off);
			off += used;
			run_actions(p);
			if (used == 0 && imap_proto_action(p) == IMAP_ACT_NONE)
				break;
		}
	}
	run_actions(p);
	imap_proto_free(&p);
	free(in);
	return 0;
}
