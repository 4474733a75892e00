/* listener_parse: the one parser of "HOST:PORT" / "[ADDRESS]:PORT" /
 * "unix:/PATH", table-driven; listener_bind on unix: (a stale socket is
 * replaced, a regular file never). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/xmalloc.h"

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
	{ "unix:/run/portcullis/policy.sock", 1, AF_UNIX, "/run/portcullis/policy.sock", 0 },
	{ "unix:relative.sock", 0, 0, NULL, 0 },
	{ "unix:", 0, 0, NULL, 0 },
	{ "unix:/" "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 0, 0, NULL, 0 },
};

static void
test_listener_parse(void)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sockaddr_storage ss;
		socklen_t sl = 0;
		const char *err = NULL;
		char text[sizeof(struct sockaddr_storage) + 8] = "";
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
		} else if (rc == 0 && ss.ss_family == AF_UNIX) {
			snprintf(text, sizeof(text), "%s", ((struct sockaddr_un *)&ss)->sun_path);
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

/* unix:/PATH binds (and rebinds over the socket a dead daemon left), and
 * never replaces a file that is not a socket */
static void
test_listener_bind_unix(void)
{
	char dir[] = "/tmp/pc-listener.XXXXXX", *spec, *file;
	const char *err;
	int fd = -1, fd2 = -1;
	struct stat st;

	CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
	spec = xasprintf("unix:%s/p.sock", dir);
	file = xasprintf("%s/f", dir);
	CU_ASSERT(listener_bind(spec, "policy_listen", &fd, &err) == 0);
	CU_ASSERT(stat(spec + 5, &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 0777) == 0666);
	close(fd);	/* the daemon died: its socket stays behind */
	CU_ASSERT(listener_bind(spec, "policy_listen", &fd2, &err) == 0);
	if (fd2 >= 0)
		close(fd2);
	{
		FILE *f = fopen(file, "w");
		char *fspec = xasprintf("unix:%s", file);

		CU_ASSERT_FATAL(f != NULL);
		fclose(f);
		CU_ASSERT(listener_bind(fspec, "policy_listen", &fd, &err) < 0);
		CU_ASSERT(stat(file, &st) == 0 && S_ISREG(st.st_mode));
		free(fspec);
	}
	unlink(spec + 5);
	unlink(file);
	rmdir(dir);
	free(spec);
	free(file);
}

static CU_TestInfo tests[] = {
	{ "parse", test_listener_parse },
	{ "bind unix:", test_listener_bind_unix },
	{ NULL, NULL },
};

void
test_listener_register(void)
{
	unit_suite("listener", tests);
}
