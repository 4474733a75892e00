/*
 * libFuzzer target: arbitrary client bytes into the SMTP protocol core, cut
 * into pieces at arbitrary points, with deliveries, AUTH checks and
 * downstream steps answered at random. Must never crash, hang or leak.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/conf.h"
#include "common/log.h"
#include "common/mailaddr.h"
#include "smtp-gateway/smtp_conf.h"
#include "smtp-gateway/smtp_proto.h"
#include "tests/unit/fixture.h"

static struct policy *pol;
static struct snapref snaps;
static struct smtp_params params;

static int
user_resolve(void *arg, const char *local, const char *domain, char *canon_r)
{
	(void)arg;
	if (local[0] != 'a')
		return 0;
	snprintf(canon_r, MAILADDR_TEXT_MAX, "%s@%s", local, domain);
	return 1;
}

static void
setup(void)
{
	/* the settings point into the conf: both live to exit */
	static struct conf *c;
	static struct smtp_conf *sc;
	const char *err;
	struct entry_vec none = { 0 };

	log_open("fuzz", 1);
	log_set_level(LOG_LVL_ERROR);
	/* the settings as the daemon compiles them, from the same text */
	c = conf_new();
	if (conf_load_string(c, "fuzz", "mydomains = example.com\nmax_recipients = 5\n"
	    "max_command_length = 512\nmyhostname = mx.example.com\nmessage_size_limit = 4096\n"
	    "relayhost = [127.0.0.1]:25\nauth_allow_plaintext = yes\n", &err) < 0 ||
	    conf_finish(c, &err) < 0 || policy_new(c, &pol, &err) < 0 ||
	    (sc = smtp_conf_new(c, &err)) == NULL)
		abort();
	snapref_init(&snaps, snapshot_new(listset_build(&none, 0), listset_build(&none, 0)));
	params = sc->srv.params;
	params.pol = pol;
	params.snaps = &snaps;
	params.sasl_cb = &fixture_nobody;
	params.tls_available = 1;
	params.user_resolve = user_resolve;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_proto *sp;
	struct ipaddr a = { .family = 4, .v4 = 0xc6336401 };
	size_t off = 0;
	unsigned rnd = size ? data[0] : 0;

	if (pol == NULL)
		setup();
	params.bare_newline_reject = rnd & 1;
	params.passthrough = (rnd >> 1) & 1;
	sp = smtp_proto_new(&params);
	smtp_proto_start(sp, &a, NULL, 1000);
	while (off < size) {
		/* piece length from the data itself: 1..64 bytes */
		size_t n = 1 + (data[off] & 63);
		size_t used;

		if (n > size - off)
			n = size - off;
		used = smtp_proto_input(sp, (const char *)data + off, n, 1000);
		off += used;
		{
			/* the server takes DATA off in pieces (spool file, downstream) */
			const char *p;
			size_t pn;

			if ((rnd & 32) && smtp_proto_stream_chunk(sp, rnd & 64 ? 1 : 4096, &p, &pn))
				smtp_proto_stream_taken(sp, pn / 2 + 1);
			if (smtp_proto_envelope(sp) != NULL && smtp_proto_envelope(sp)->nrcpt == 0)
				__builtin_trap();	/* DATA needs a recipient */
		}
		/* what the server does: every action the session asks for */
		for (int more = 1, guard = 0; more; guard++) {
			union smtp_action_arg act;
			size_t olen;

			if (guard > 64)
				__builtin_trap();	/* the session must settle */
			switch (smtp_proto_next(sp, &act)) {
			case SMTP_ACT_DELIVER:
				smtp_proto_delivered(sp, rnd & 4, "451", "4.3.0", "x");
				break;
			case SMTP_ACT_AUTH_CHECK:
				smtp_proto_auth_done(sp, rnd & 8);
				break;
			case SMTP_ACT_DOWN_STEP:
				smtp_proto_down_done(sp, (rnd & 16) ? "250 2.1.5 ok" : "550 5.1.1 no");
				break;
			case SMTP_ACT_STARTTLS:
				smtp_proto_set_tls(sp, 1);
				break;
			case SMTP_ACT_DOWN_OPEN:
				if (act.down->sender[sizeof(act.down->sender) - 1] != '\0' ||
				    act.down->helo[sizeof(act.down->helo) - 1] != '\0')
					__builtin_trap();	/* the server copies these as strings */
				break;
			case SMTP_ACT_WRITE:
				(void)smtp_proto_output(sp, &olen);
				smtp_proto_output_done(sp, olen);
				break;
			case SMTP_ACT_BAN:
			case SMTP_ACT_DOWN_RESET:
				break;
			case SMTP_ACT_CLOSE:
			case SMTP_ACT_NEED_INPUT:
				more = 0;
				break;
			}
		}
		if (smtp_proto_wants_close(sp))
			break;
		if (used == 0 && !smtp_proto_pending(sp) && !smtp_proto_pending_auth(sp) &&
		    !smtp_proto_pending_down(sp))
			off++;	/* cannot happen; never loop forever */
	}
	smtp_proto_eof(sp);
	smtp_proto_free(&sp);
	return 0;
}
