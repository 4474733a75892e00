/*
 * null-milter - a do-nothing libmilter milter, the baseline for the
 * throughput bench (tests/bench/postfix_throughput.py).
 *
 *   null-milter inet:PORT@127.0.0.1
 *
 * Deliberately naive: every callback is registered and answers
 * SMFIS_CONTINUE, and there is no negotiate callback, so the MTA sends every
 * stage (connect, helo, envfrom, envrcpt, each header, eoh, body chunks, eom)
 * and waits for a reply to each.  What it costs over no milter at all is the
 * price of the milter protocol itself; portcullisd should come close to it.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libmilter/mfapi.h>

static sfsistat
nm_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *sa)
{
	(void)ctx; (void)host; (void)sa;
	return SMFIS_CONTINUE;
}

static sfsistat
nm_helo(SMFICTX *ctx, char *helo)
{
	(void)ctx; (void)helo;
	return SMFIS_CONTINUE;
}

static sfsistat
nm_envfrom(SMFICTX *ctx, char **argv)
{
	(void)ctx; (void)argv;
	return SMFIS_CONTINUE;
}

static sfsistat
nm_envrcpt(SMFICTX *ctx, char **argv)
{
	(void)ctx; (void)argv;
	return SMFIS_CONTINUE;
}

static sfsistat
nm_header(SMFICTX *ctx, char *name, char *value)
{
	(void)ctx; (void)name; (void)value;
	return SMFIS_CONTINUE;
}

static sfsistat
nm_eoh(SMFICTX *ctx)
{
	(void)ctx;
	return SMFIS_CONTINUE;
}

static sfsistat
nm_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
	(void)ctx; (void)chunk; (void)len;
	return SMFIS_CONTINUE;
}

static sfsistat
nm_eom(SMFICTX *ctx)
{
	(void)ctx;
	return SMFIS_CONTINUE;
}

static sfsistat
nm_abort(SMFICTX *ctx)
{
	(void)ctx;
	return SMFIS_CONTINUE;
}

static sfsistat
nm_close(SMFICTX *ctx)
{
	(void)ctx;
	return SMFIS_CONTINUE;
}

static struct smfiDesc desc = {
	.xxfi_name = "null-milter",
	.xxfi_version = SMFI_VERSION,
	.xxfi_flags = 0,
	.xxfi_connect = nm_connect,
	.xxfi_helo = nm_helo,
	.xxfi_envfrom = nm_envfrom,
	.xxfi_envrcpt = nm_envrcpt,
	.xxfi_header = nm_header,
	.xxfi_eoh = nm_eoh,
	.xxfi_body = nm_body,
	.xxfi_eom = nm_eom,
	.xxfi_abort = nm_abort,
	.xxfi_close = nm_close,
	.xxfi_unknown = NULL,
	.xxfi_data = NULL,
	.xxfi_negotiate = NULL,
};

int
main(int argc, char **argv)
{
	if (argc != 2 || strchr(argv[1], ':') == NULL) {
		fprintf(stderr, "usage: null-milter inet:PORT@127.0.0.1\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	if (smfi_register(desc) != MI_SUCCESS) {
		fprintf(stderr, "null-milter: smfi_register failed\n");
		return 1;
	}
	if (smfi_setconn(argv[1]) != MI_SUCCESS) {
		fprintf(stderr, "null-milter: smfi_setconn %s failed\n", argv[1]);
		return 1;
	}
	smfi_setbacklog(256);
	if (smfi_opensocket(1) != MI_SUCCESS) {
		fprintf(stderr, "null-milter: cannot listen on %s\n", argv[1]);
		return 1;
	}
	return smfi_main() == MI_SUCCESS ? 0 : 1;
}
