/*
 * libFuzzer target: common/sasl's input decoding and mechanism steps.
 * Input: byte 0 picks the mechanism (and EXTERNAL's certificate), byte 1's
 * bits say which of the following lines are base64-encoded here first (so
 * the mechanism parsers see arbitrary bytes) rather than fed as they are
 * (so the base64 decoder does). Lines split at '\n'. The user "u@example.org"
 * exists with every secret, so SCRAM and CRAM-MD5 get to their last step.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/base64.h"
#include "common/sasl.h"
#include "common/xmalloc.h"

static char scram[200];

static int
lookup(void *arg, const char *login, struct sasl_user *r)
{
	(void)arg;
	if (strcasecmp(login, "u@example.org") != 0)
		return 0;
	snprintf(r->name, sizeof(r->name), "u@example.org");
	snprintf(r->hash, sizeof(r->hash), "pencil");
	snprintf(r->cram, sizeof(r->cram), "%064d", 0);
	snprintf(r->scram, sizeof(r->scram), "%s", scram);
	return 1;
}

static int
verify(void *arg, const struct sasl_user *u, const char *pw)
{
	(void)arg;
	return u->hash[0] && strcmp(u->hash, pw) == 0;
}

static int
cram(void *arg, const struct sasl_user *u, const char *ch, const char *digest)
{
	(void)arg;
	(void)u;
	(void)ch;
	return strcmp(digest, "0") == 0;
}

static const struct sasl_callbacks cbs = { lookup, verify, cram, NULL };

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const unsigned mechs[] = { AUTH_MECH_PLAIN, AUTH_MECH_LOGIN, AUTH_MECH_CRAM,
	    AUTH_MECH_SCRAM, AUTH_MECH_EXTERNAL };
	struct sasl_params p = { &cbs, "mx.example.org", NULL };
	struct sasl_server *s;
	const char *e, *out;
	unsigned enc;
	size_t i = 2;
	int first = 1;

	if (scram[0] == '\0' && sasl_scram_make("pencil", 4096, (const unsigned char *)"salt", 4,
	    scram, sizeof(scram), &e) < 0)
		abort();
	if (size < 2)
		return 0;
	p.external_id = data[0] & 8 ? "u@example.org" : "x@example.org";
	s = sasl_server_new(mechs[data[0] % 5], &p);
	if (s == NULL)
		return 0;
	enc = data[1];
	for (int k = 0; i <= size && k < 8; k++) {
		const uint8_t *nl = memchr(data + i, '\n', size - i);
		size_t n = nl ? (size_t)(nl - (data + i)) : size - i;
		char *line;
		enum sasl_rc rc;

		if (enc & (1u << k)) {
			line = xmalloc(4 * ((n + 2) / 3) + 1);
			base64_encode(data + i, n, line);
		} else {
			line = xstrndup((const char *)data + i, n);
		}
		rc = sasl_server_step64(s, first && (data[0] & 16) ? NULL : line, &out);
		first = 0;
		free(line);
		if (strlen(out) > 4 * 12288)
			abort();
		if (rc == SASL_CHECK) {
			sasl_server_check(s);
			rc = sasl_server_checked(s, &out);
		}
		if (rc == SASL_OK && strcmp(sasl_server_user(s), "u@example.org") != 0)
			abort();	/* only the one user can ever log in */
		if (rc != SASL_CONTINUE)
			break;
		i += n + 1;
	}
	sasl_server_free(&s);
	return 0;
}
