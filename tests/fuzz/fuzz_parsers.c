/*
 * libFuzzer target: the parsers that read admin and peer input — config
 * text (and auth_mechanisms in it), list-file lines, entry keys, envelope
 * addresses, CIDRs, Redis hash fields, listener specs, Postfix policy
 * requests. Must never crash or leak; errors are answers.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/authmech.h"
#include "common/cidr.h"
#include "common/conf.h"
#include "common/log.h"
#include "common/mailaddr.h"
#include "policy/policy_proto.h"
#include "service/listener.h"
#include "storage-adapter/listentry.h"
#include "storage-adapter/redis_schema.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	const char *err;
	static int once;

	if (!once) {
		log_open("fuzz", 1);
		log_set_level(LOG_LVL_ERROR);
		once = 1;
	}
	memcpy(s, data, size);
	s[size] = '\0';
	{
		struct conf *c = conf_new();

		unsigned mechs;

		if (conf_load_string(c, "fuzz", s, &err) == 0 && conf_finish(c, &err) == 0)
			(void)authmech_parse(c, &mechs, &err);	/* auth_mechanisms */
		conf_free(&c);
	}
	{
		struct list_entry e;

		if (listentry_parse_line(s, &e, &err) == 0) {
			char *l = listentry_format_line(&e);

			free(l);
			listentry_clear(&e);
		}
		if (listentry_parse_key(s, &e, &err) == 0)
			listentry_clear(&e);
		/* the bytes themselves, NULs included */
		if (listentry_parse_buf(s, size, &e, &err) == 0)
			listentry_clear(&e);
		(void)conf_check_hostport(s, (int)(size & 1), &err);
	}
	{
		/* round trip: parse(format(parse(x))) == parse(x), so what is sent
		 * downstream means what the engine judged */
		struct mailaddr a, b;
		char key[2 * MAILADDR_PART_MAX + 2], fmt[MAILADDR_TEXT_MAX];
		char path[MAILADDR_TEXT_MAX + 2];

		const char *why;

		for (unsigned flags = 0; flags <= MAILADDR_UTF8; flags++) {
			if (mailaddr_parse_flags(s, flags, &a, &why) != 0)
				continue;
			mailaddr_key(&a, key);
			snprintf(path, sizeof(path), "<%s>", mailaddr_format(&a, fmt));
			if (mailaddr_parse_flags(path, flags, &b, &why) != 0 ||
			    strcmp(a.local, b.local) != 0 || strcmp(a.domain, b.domain) != 0 ||
			    a.is_null != b.is_null || a.routing_local != b.routing_local ||
			    a.domain_literal != b.domain_literal)
				abort();
			/* nothing formatted carries a byte that could end a line or a
			 * path; 8-bit only in an SMTPUTF8 transaction */
			for (const char *p = fmt; *p; p++)
				if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f ||
				    (!flags && (unsigned char)*p > 0x7e))
					abort();
		}
		(void)mailaddr_domain_is_valid(s);
	}
	{
		struct cidr c;
		char buf[CIDR_TEXT_MAX];

		if (cidr_parse(s, &c, &err) == 0)
			cidr_format(&c, buf);
	}
	{
		struct sockaddr_storage ss;
		socklen_t sl;

		(void)listener_parse(s, "smtp_listen", &ss, &sl, &err);
	}
	{
		/* split on NULs into hash fields */
		const char *fv[16];
		size_t fl[16], n = 0, p = 0;
		struct list_entry e;

		while (p < size && n < 16) {
			size_t l = strnlen((const char *)data + p, size - p);

			fv[n] = (const char *)data + p;
			fl[n++] = l;
			p += l + 1;
		}
		memset(&e, 0, sizeof(e));
		if (n > 0 && redis_schema_decode("192.0.2.1", fv, fl, n & ~1u, 100, 5, &e, &err) == 0)
			listentry_clear(&e);
	}
	{
		/* a policy connection: the input in pieces whose sizes the first
		 * byte picks, every request answered, as the door does */
		static struct policy_parser pp;
		const struct policy_request *req;
		char out[MAX_POLICY_ANSWER];
		size_t off = 0, step = size > 0 ? (size_t)data[0] % 64 + 1 : 1;

		policy_parser_init(&pp);
		while (off < size) {
			size_t n = size - off < step ? size - off : step, used = 0;
			enum policy_feed st = policy_parser_feed(&pp, (const char *)data + off, n,
			    &used, &req);

			if (used == 0 && st == POLICY_FEED_MORE)
				abort();	/* no progress: a hang */
			off += used;
			if (st == POLICY_FEED_MORE)
				continue;
			for (int a = 0; a < PA_COUNT; a++)
				if (req->attr[a] != NULL && strlen(req->attr[a]) > MAX_POLICY_LINE)
					abort();
			(void)policy_answer_format(out, sizeof(out), req->error ? req->error :
			    (req->attr[PA_SENDER] ? req->attr[PA_SENDER] : "DUNNO"));
			if (strchr(out, '\n') != out + strlen(out) - 2)
				abort();	/* a newline inside the answer */
			if (st == POLICY_FEED_FATAL)
				break;
		}
	}
	free(s);
	return 0;
}
