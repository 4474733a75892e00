/* listener_parse: the one parser of "HOST:PORT" / "[ADDRESS]:PORT", table-driven. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "service/listener.h"
#include "tests/unit/unit.h"

static const struct {
	const char *spec;
	int ok;
	int family;
	const char *addr;	/* canonical text */
	unsigned port;
} cases[] = {
	{ "127.0.0.1:2525", 1, AF_INET, "127.0.0.1", 2525 },
	{ "0.0.0.0:25", 1, AF_INET, "0.0.0.0", 25 },
	{ "[::1]:587", 1, AF_INET6, "::1", 587 },
	{ "[2001:db8::1]:65535", 1, AF_INET6, "2001:db8::1", 65535 },
	{ "192.0.2.1:1", 1, AF_INET, "192.0.2.1", 1 },
	{ "127.0.0.1", 0, 0, NULL, 0 },
	{ ":25", 0, 0, NULL, 0 },
	{ "127.0.0.1:", 0, 0, NULL, 0 },
	{ "127.0.0.1:0", 0, 0, NULL, 0 },
	{ "127.0.0.1:65536", 0, 0, NULL, 0 },
	{ "127.0.0.1:+25", 0, 0, NULL, 0 },
	{ "127.0.0.1: 25", 0, 0, NULL, 0 },
	{ "127.0.0.1:25x", 0, 0, NULL, 0 },
	{ "127.0.0.1:0000025", 0, 0, NULL, 0 },
	{ "::1:25", 0, 0, NULL, 0 },
	{ "[::1]", 0, 0, NULL, 0 },
	{ "[::1:25", 0, 0, NULL, 0 },
	{ "[]:25", 0, 0, NULL, 0 },
	{ "[127.0.0.1]:25", 0, 0, NULL, 0 },
	{ "localhost:25", 0, 0, NULL, 0 },
	{ "256.0.0.1:25", 0, 0, NULL, 0 },
	{ "", 0, 0, NULL, 0 },
};

static void
test_listener_parse(void)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sockaddr_storage ss;
		socklen_t sl = 0;
		const char *err = NULL;
		char text[INET6_ADDRSTRLEN] = "";
		unsigned port = 0;
		int rc = listener_parse(cases[i].spec, "smtp_listen", &ss, &sl, &err);

		if (rc == 0 && ss.ss_family == AF_INET) {
			struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

			inet_ntop(AF_INET, &s4->sin_addr, text, sizeof(text));
			port = ntohs(s4->sin_port);
		} else if (rc == 0 && ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

			inet_ntop(AF_INET6, &s6->sin6_addr, text, sizeof(text));
			port = ntohs(s6->sin6_port);
		}
		if ((rc == 0) != cases[i].ok ||
		    (rc == 0 && (ss.ss_family != cases[i].family || strcmp(text, cases[i].addr) != 0 ||
		    port != cases[i].port)) ||
		    (rc < 0 && (err == NULL || strstr(err, "smtp_listen = ") != err))) {
			fprintf(stderr, "\n  \"%s\": rc %d %s port %u err %s\n", cases[i].spec, rc, text,
			    port, err ? err : "-");
			CU_FAIL("listener_parse");
		}
	}
}

static CU_TestInfo tests[] = {
	{ "parse", test_listener_parse },
	{ NULL, NULL },
};

void
test_listener_register(void)
{
	unit_suite("listener", tests);
}
