/*
 * libFuzzer target: arbitrary client bytes into the IMAP session
 * (pop-imap-proxy/imap_proto.c over imap_parser.c), cut into pieces chosen
 * by the input, with every action answered by input bits: logins accepted,
 * refused or not checked (SASL exchanges run for real against a user
 * database of one), store work (IMAP_ACT_EXEC) run at once on a real store
 * in a temp dir, output taken in pieces, STARTTLS completed. Must never
 * crash, hang or leak.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/sasl.h"
#include "pop-imap-proxy/imap_proto.h"
#include "storage-adapter/mailstore.h"
#include "tests/unit/fixture.h"

#define USER FIXTURE_USER

static char root[64];
static int ready;
static unsigned runs;	/* the store is made afresh every STORE_RUNS inputs: COPY and
			   APPEND grow it, and a slower fuzzer finds less */
#define STORE_RUNS 10

static void
setup(void)
{
	struct mailstore *ms;
	const char *msgs[] = { "Subject: a\n\n.x\nbody\n", "S: b\r\n\r\n1\r\n2\r\n", "x" };
	const char *err;

	snprintf(root, sizeof(root), "/tmp/fuzz-imap-XXXXXX");
	if (mkdtemp(root) == NULL || sasl_init(&err) < 0 ||
	    fixture_deliver(root, USER, msgs, 3, &err) < 0 ||
	    mailstore_open(root, USER, &ms, &err) < 0 ||
	    mailstore_folder_create(ms, "Sent", &err) < 0 ||
	    mailstore_folder_create(ms, "A.b", &err) < 0)
		abort();
	mailstore_free(&ms);
	ready = 1;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data0, size_t size0)
{
	/* with bit 0x400: a scripted login and SELECT first, so the random rest
	 * reaches FETCH, STORE, COPY, APPEND... on a real store */
	static const char script[] = "L LOGIN alice secret\r\nS SELECT INBOX\r\n";
	uint8_t *buf = NULL;
	const uint8_t *data = data0;
	size_t size = size0;
	struct imap_params prm = { 0 };
	struct imap_proto *p;
	size_t off = 2, k = 0;
	unsigned bits;

	if (ready && ++runs % STORE_RUNS == 0) {
		if (fixture_rm_rf(root) != 0)
			abort();
		ready = 0;
	}
	if (!ready)
		setup();
	if (size < 2)
		return 0;
	bits = (unsigned)data[0] | (unsigned)data[1] << 8;
	if (bits & 0x400) {
		buf = malloc(size0 + sizeof(script));
		if (buf == NULL)
			return 0;
		memcpy(buf, data0, 2);
		memcpy(buf + 2, script, sizeof(script) - 1);
		memcpy(buf + 2 + sizeof(script) - 1, data0 + 2, size0 - 2);
		data = buf;
		size = size0 + sizeof(script) - 1;
		bits |= 0x82;	/* LOGIN allowed without TLS */
	}
	prm.myhostname = "mx.example.com";
	prm.tls_available = bits & 1;
	prm.login = !!(bits & 2);
	prm.auth_mechs = (bits >> 2) & 0x1f;
	prm.auth_allow_plaintext = !!(bits & 0x80);
	prm.sasl_cb = &fixture_alice;
	prm.store_root = root;
	if (bits & 0x100)
		prm.banner = "ready";
	p = imap_proto_new(&prm);
	if (bits & 0x200)
		imap_proto_set_tls_peer(p, "alice");
	imap_proto_start(p);
	for (int guard = 0; guard < 100000; guard++) {
		size_t n;
		unsigned r = data[(off + k++) % size];
		struct imap_segment g;

		if (imap_proto_output_segment(p, &g))
			imap_proto_output_done(p, r & 1 ? g.len : g.len / 2);
		switch (imap_proto_action(p)) {
		case IMAP_ACT_AUTH: {
			struct imap_auth_req *a = imap_proto_auth_req(p);
			int ok = a->ok;

			if (a->check) {
				const char *o;

				sasl_server_check(a->sasl);
				ok = sasl_server_checked(a->sasl, &o) == SASL_OK;
			}
			imap_proto_auth_done(p, (r & 4) ? IMAP_AUTH_TEMPFAIL : ok);
			continue;
		}
		case IMAP_ACT_STARTTLS:
			imap_proto_set_tls(p, 1);
			continue;
		case IMAP_ACT_EXEC:
			imap_proto_exec(p);
			imap_proto_exec_done(p);
			continue;
		case IMAP_ACT_NONE:
			break;
		}
		if (imap_proto_wants_close(p) || off >= size)
			break;
		n = 1 + r % 23;
		if (n > size - off)
			n = size - off;
		off += imap_proto_input(p, (const char *)data + off, n);
	}
	imap_proto_free(&p);
	free(buf);
	return 0;
}
