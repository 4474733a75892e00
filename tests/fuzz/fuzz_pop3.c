/*
 * libFuzzer target: arbitrary client bytes into the POP3 core, cut into
 * pieces chosen by the input, with every action answered by input bits:
 * logins accepted or refused (SASL exchanges run for real against a user
 * database of one), the INBOX of a real three-message store opened or
 * refused as in use, RETR/TOP streamed from its files, UPDATE confirmed or
 * failed (the store is never changed). Must never crash, hang or leak.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/sasl.h"
#include "pop-imap-proxy/pop3_proto.h"
#include "storage-adapter/mailstore.h"
#include "tests/unit/fixture.h"

#define USER FIXTURE_USER

static struct mailstore *ms;
static struct mailstore_box *box;

static void
setup(void)
{
	char root[] = "/tmp/fuzz-pop3-XXXXXX";
	const char *msgs[] = { "Subject: a\n\n.x\nbody\n", "S: b\r\n\r\n1\r\n2\r\n", "x" };
	const char *err;

	if (mkdtemp(root) == NULL || sasl_init(&err) < 0 ||
	    fixture_deliver(root, USER, msgs, 3, &err) < 0 ||
	    mailstore_open(root, USER, &ms, &err) < 0 ||
	    mailstore_box_open(ms, "INBOX", &box, &err) < 0)
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pop3_params prm = { 0 };
	struct pop3_proto *p;
	size_t off = 2, k = 0;
	unsigned bits;

	if (box == NULL)
		setup();
	if (size < 2)
		return 0;
	bits = (unsigned)data[0] | (unsigned)data[1] << 8;
	prm.myhostname = "mx.example.com";
	prm.tls_available = bits & 1;
	prm.user_pass = !!(bits & 2);
	prm.auth_mechs = (bits >> 2) & 0x1f;
	prm.apop = !!(bits & 0x80);
	prm.auth_allow_plaintext = !!(bits & 0x100);
	prm.sasl_cb = &fixture_alice;
	prm.bad_max = (bits >> 9) & 7;
	p = pop3_proto_new(&prm);
	pop3_proto_start(p, (bits & 0x1000) ? NULL : "<1.2@mx>");
	if (bits & 0x2000)
		pop3_proto_set_tls_peer(p, "alice");
	for (int guard = 0; guard < 100000; guard++) {
		size_t n;
		const char *err;
		unsigned r = data[(off + k++) % size];

		(void)pop3_proto_output(p, &n);
		pop3_proto_output_done(p, r & 1 ? n : n / 2);
		switch (pop3_proto_action(p)) {
		case POP3_ACT_AUTH: {
			struct pop3_auth_req *a = pop3_proto_auth_req(p);
			int ok = a->ok;

			if (a->sasl != NULL && a->check) {
				const char *o;

				sasl_server_check(a->sasl);
				ok = sasl_server_checked(a->sasl, &o) == SASL_OK;
			} else if (a->sasl == NULL) {
				ok = strlen(a->apop_digest) == 32 && (r & 2);
			}
			pop3_proto_auth_done(p, (r & 4) ? POP3_AUTH_TEMPFAIL : ok,
			    a->sasl == NULL ? USER : NULL);
			continue;
		}
		case POP3_ACT_OPEN:
			pop3_proto_opened(p, (r & 6) ? box : NULL, r & 8);
			continue;
		case POP3_ACT_RETR: {
			uint32_t uid;
			long top;
			int fd, done = 0;
			struct pop3_stream st;

			pop3_proto_retr_req(p, &uid, &top);
			if ((r & 2) || mailstore_msg_open(box, uid, &fd, &err) < 0) {
				pop3_proto_retr_opened(p, 0);
				continue;
			}
			pop3_proto_retr_opened(p, 1);
			pop3_stream_init(&st, fd, top);
			while (!done) {
				char chunk[37];

				if (pop3_stream_read(&st, chunk, sizeof(chunk), &n, &done, &err) < 0)
					abort();
			}
			close(fd);
			pop3_proto_retr_done(p);
			continue;
		}
		case POP3_ACT_UPDATE: {
			const uint32_t *ex, *seen;
			size_t nex, nseen;

			pop3_proto_update(p, &ex, &nex, &seen, &nseen);
			for (size_t i = 0; i < nex; i++)
				if (mailstore_box_find(box, ex[i]) < 0)
					abort();
			pop3_proto_update_done(p, r & 2);
			continue;
		}
		case POP3_ACT_STARTTLS:
			pop3_proto_set_tls(p, 1);
			continue;
		case POP3_ACT_NONE:
			break;
		}
		if (pop3_proto_wants_close(p) || off >= size)
			break;
		n = 1 + r % 23;
		if (n > size - off)
			n = size - off;
		off += pop3_proto_input(p, (const char *)data + off, n);
	}
	pop3_proto_free(&p);
	return 0;
}
