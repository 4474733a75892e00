/*
 * conf_check - value checks beyond the type, one row per key name.
 *
 *   conf_validators[]   { name, each_item, check }; conf_finish() runs the
 *                       row of every key after its type check: a list key
 *                       (each_item) is checked item by item, as
 *                       conf_get_list() splits it
 *   conf_check_hostport() "ADDR:PORT" or "[ADDR]:PORT", numeric (no DNS)
 *
 * A check says why a value is wrong through why_r (a static string); the
 * caller prefixes "FILE:LINE: key: \"value\"". Pure: no I/O but stat(2) for
 * the files that start-up will read, so the CLI and the daemon refuse the
 * same values the moment the file is read, long before a worker would trip
 * on them (a resolver that is no IP address used to restart the smtp worker
 * every second for ever). Keys are added to conf_keys.c; their checks go
 * here, so the two tables never reflow each other.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/cidr.h"
#include "common/conf.h"
#include "common/pclimits.h"

#define STR_(x) #x
#define STR(x) STR_(x)

int
conf_check_hostport(const char *s, int port_optional, const char **why_r)
{
	char host[INET6_ADDRSTRLEN + 2];
	const char *colon, *h = s, *he;
	struct in6_addr a6;
	struct in_addr a4;
	char *end;
	long port;

	if (*s == '[') {
		const char *rb = strchr(s, ']');

		if (rb == NULL) {
			*why_r = "missing ']' after an IPv6 address";
			return -1;
		}
		h = s + 1;
		he = rb;
		colon = rb[1] == ':' ? rb + 1 : NULL;
		if (rb[1] != '\0' && colon == NULL) {
			*why_r = "expected [ADDRESS]:PORT";
			return -1;
		}
	} else {
		colon = strchr(s, ':');
		if (colon != NULL && strchr(colon + 1, ':') != NULL) {
			/* a bare IPv6 address: only where the port is optional */
			colon = NULL;
			if (!port_optional) {
				*why_r = "write an IPv6 address as [ADDRESS]:PORT";
				return -1;
			}
		}
		he = colon != NULL ? colon : s + strlen(s);
	}
	if (colon == NULL && !port_optional) {
		*why_r = "expected ADDRESS:PORT or [ADDRESS]:PORT";
		return -1;
	}
	if (colon != NULL) {
		if (colon[1] < '0' || colon[1] > '9') {
			*why_r = "the port is not a number";
			return -1;
		}
		errno = 0;
		port = strtol(colon + 1, &end, 10);
		if (*end != '\0' || errno != 0 || port < 1 || port > 65535) {
			*why_r = "the port is not a number from 1 to 65535";
			return -1;
		}
	}
	if (he <= h || (size_t)(he - h) >= sizeof(host)) {
		*why_r = "not an IP address (numeric: no DNS here)";
		return -1;
	}
	memcpy(host, h, (size_t)(he - h));
	host[he - h] = '\0';
	if (inet_pton(AF_INET6, host, &a6) == 1) {
		if (h == s && colon != NULL) {
			*why_r = "write an IPv6 address as [ADDRESS]:PORT";
			return -1;
		}
		return 0;
	}
	if (inet_pton(AF_INET, host, &a4) != 1) {
		*why_r = "not an IP address (numeric: no DNS here)";
		return -1;
	}
	return 0;
}

/* a listener: as above, but the brackets are for IPv6 only (as the
 * listener's own parser has it) */
static int
check_listen(const char *v, const char **why_r)
{
	if (conf_check_hostport(v, 0, why_r) < 0)
		return -1;
	if (v[0] == '[' && strchr(v, ':') > strchr(v, ']')) {
		/* checked above: "[ADDR]:PORT"; no colon inside means IPv4 */
		*why_r = "write an IPv4 address without brackets";
		return -1;
	}
	return 0;
}

static int
check_optional_listen(const char *v, const char **why_r)
{
	return v[0] == '\0' ? 0 : check_listen(v, why_r);
}

/* the Postfix policy door: inet:HOST:PORT, inet:[ADDRESS]:PORT, unix:/PATH */
static int
check_policy_listen(const char *v, const char **why_r)
{
	if (strncmp(v, "inet:", 5) == 0)
		return check_listen(v + 5, why_r);
	if (strncmp(v, "unix:", 5) == 0 && v[5] == '/') {
		if (strlen(v + 5) > 107) {
			*why_r = "a unix socket path is at most 107 bytes";
			return -1;
		}
		return 0;
	}
	*why_r = "expected inet:HOST:PORT, inet:[ADDRESS]:PORT or unix:/PATH";
	return -1;
}

static int
check_optional_absolute(const char *v, const char **why_r)
{
	if (v[0] == '\0' || v[0] == '/')
		return 0;
	*why_r = "expected an absolute path (or empty)";
	return -1;
}

static int
check_optional_hostport(const char *v, const char **why_r)
{
	if (v[0] == '\0')
		return 0;
	return conf_check_hostport(v, 0, why_r);
}

static int
check_resolver(const char *v, const char **why_r)
{
	if (strcmp(v, "system") == 0)
		return 0;
	/* as libevent's evdns parses it: brackets are for IPv6 only */
	if (conf_check_hostport(v, 1, why_r) < 0 ||
	    (v[0] == '[' && strchr(v + 1, ':') > strchr(v, ']'))) {
		*why_r = "expected system, ADDRESS, ADDRESS:PORT or [IPV6-ADDRESS]:PORT";
		return -1;
	}
	return 0;
}

static int
check_delivery(const char *v, const char **why_r)
{
	if (strncmp(v, "maildir:", 8) == 0) {
		if (v[8] != '/') {
			*why_r = "expected maildir:/absolute/dir";
			return -1;
		}
		return 0;
	}
	if (strncmp(v, "relay:", 6) == 0) {
		if (conf_check_hostport(v + 6, 0, why_r) < 0)
			return -1;
		return 0;
	}
	*why_r = "expected maildir:/absolute/dir or relay:[ADDRESS]:PORT";
	return -1;
}

static int
check_cidr(const char *v, const char **why_r)
{
	struct cidr c;

	return cidr_parse(v, &c, why_r);
}

static int
check_service(const char *v, const char **why_r)
{
	if (strcmp(v, "milter") == 0 || strcmp(v, "smtp") == 0 || strcmp(v, "policy") == 0)
		return 0;
	if (strcmp(v, "pop3") == 0 || strcmp(v, "imap") == 0)
		return 0;
	*why_r = "unknown service (expected milter, smtp, policy, pop3, imap)";
	return -1;
}

static int
check_services(const char *v, const char **why_r)
{
	if (v[strspn(v, ", \t")] == '\0') {
		*why_r = "nothing to run";
		return -1;
	}
	return 0;
}

static int
check_lists(const char *v, const char **why_r)
{
	if (strncmp(v, "file:", 5) == 0) {
		if (v[5] != '/') {
			*why_r = "expected file:/absolute/dir";
			return -1;
		}
		return 0;
	}
	if (strncmp(v, "redis://", 8) == 0 || strncmp(v, "redis+unix://", 13) == 0)
		return 0;	/* the store parses the rest (the daemon opens it to check) */
	*why_r = "unknown store (expected file:DIR, redis://HOST:PORT/DB or redis+unix:///PATH)";
	return -1;
}

static int
check_users(const char *v, const char **why_r)
{
	if (v[0] == '\0' || (strncmp(v, "file:", 5) == 0 && v[5] != '\0'))
		return 0;
	*why_r = "expected file:/path/to/users (or empty: no users)";
	return -1;
}

static int
check_absolute(const char *v, const char **why_r)
{
	if (v[0] == '/')
		return 0;
	*why_r = "expected an absolute path";
	return -1;
}

/* a file that start-up reads: it must be there (unreadable is for the
 * reader to say: the CLI may lack the daemon's rights) */
static int
check_file_if_set(const char *v, const char **why_r)
{
	struct stat st;

	if (v[0] == '\0')
		return 0;
	if (stat(v, &st) < 0) {
		if (errno == ENOENT || errno == ENOTDIR) {
			*why_r = "no such file";
			return -1;
		}
		return 0;
	}
	if (S_ISDIR(st.st_mode)) {
		*why_r = "is a directory, not a file";
		return -1;
	}
	return 0;
}

static int
check_printable(const char *v, const char **why_r)
{
	for (const unsigned char *p = (const unsigned char *)v; *p; p++)
		if (*p < 0x20 || *p >= 0x7f) {
			*why_r = "control characters and 8-bit bytes are not allowed";
			return -1;
		}
	return 0;
}

/* a reply line is 512 octets (RFC 5321 §4.5.3.1.5): "220 " + text + CRLF */
static int
check_banner(const char *v, const char **why_r)
{
	if (check_printable(v, why_r) < 0)
		return -1;
	if (strlen(v) > MAX_REPLY_TEXT) {
		*why_r = "longer than " STR(MAX_REPLY_TEXT) " characters (an SMTP reply line "
		    "is at most 512 octets)";
		return -1;
	}
	return 0;
}

/* the IMAP greeting's text: "* OK [CAPABILITY ...] " + text on one line;
 * imap_proto keeps 300 characters of it */
static int
check_imap_banner(const char *v, const char **why_r)
{
	if (check_printable(v, why_r) < 0)
		return -1;
	if (strlen(v) > 300) {
		*why_r = "longer than 300 characters";
		return -1;
	}
	return 0;
}

/* libmilter's socket: a unix path must fit sun_path (108 bytes with its
 * NUL); the daemon rewrites the spec in a 512-byte buffer */
static int
check_milter_listen(const char *v, const char **why_r)
{
	const char *colon = strchr(v, ':');

	if (strlen(v) > 400) {
		*why_r = "longer than 400 characters";
		return -1;
	}
	if ((strncmp(v, "unix:", 5) == 0 || strncmp(v, "local:", 6) == 0) &&
	    strlen(colon + 1) > 107) {
		*why_r = "a unix socket path is at most 107 bytes";
		return -1;
	}
	return 0;
}

/* a host name we say in EHLO, banners and Received: lines; the gateway
 * keeps it in 128-byte fields, so longer is refused rather than cut */
static int
check_hostname(const char *v, const char **why_r)
{
	size_t l = strlen(v), label = 0;

	if (l == 0 || strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") != l) {
		*why_r = "not a host name";
		return -1;
	}
	if (l > 127) {
		*why_r = "longer than 127 characters";
		return -1;
	}
	for (const char *p = v; ; p++) {
		if (*p == '.' || *p == '\0') {
			if (label == 0 || label > 63) {
				*why_r = "not a host name (empty label, or one longer than 63)";
				return -1;
			}
			if (*p == '\0')
				break;
			label = 0;
		} else {
			label++;
		}
	}
	return 0;
}

static int
check_lists_prefix(const char *v, const char **why_r)
{
	for (const unsigned char *p = (const unsigned char *)v; *p; p++)
		if (*p <= 0x20 || *p >= 0x7f) {
			*why_r = "no spaces or control characters";
			return -1;
		}
	if (strlen(v) > 64) {
		*why_r = "at most 64 characters";
		return -1;
	}
	return 0;
}

static int
check_listener_count(const char *v, const char **why_r)
{
	size_t n = 0;

	while (*v != '\0') {
		v += strspn(v, ", \t\r\n");
		if (*v == '\0')
			break;
		n++;
		v += strcspn(v, ", \t\r\n");
	}
	if (n > MAX_LISTENERS) {
		*why_r = "too many listeners (at most " STR(MAX_LISTENERS) ")";
		return -1;
	}
	return 0;
}

/* RFC 5321 §4.5.3.1.4: a server must take command lines of 512 octets */
static int
check_command_length(const char *v, const char **why_r)
{
	long n = strtol(v, NULL, 10);	/* a number in range: checked by its type */

	if (n != 0 && n < 512) {
		*why_r = "0 (no limit) or at least 512 (RFC 5321 §4.5.3.1.4)";
		return -1;
	}
	return 0;
}

/* mail_proxy_default and the doors' own: "", ADDRESS[:PORT], [IPV6]:PORT or
 * NAME[:PORT] (a name is resolved at each login, through resolver) */
static int
check_proxy_default(const char *v, const char **why_r)
{
	char name[256];
	size_t nl = strcspn(v, ":");
	const char *w;

	if (v[0] == '\0' || conf_check_hostport(v, 1, why_r) == 0)
		return 0;
	if (v[0] == '[' || strspn(v, "0123456789.") >= nl)
		return -1;	/* an address: conf_check_hostport said why */
	*why_r = "expected ADDRESS[:PORT], [IPV6-ADDRESS]:PORT or NAME[:PORT]";
	if (nl >= sizeof(name))
		return -1;
	memcpy(name, v, nl);
	name[nl] = '\0';
	if (check_hostname(name, &w) < 0 || strchr(name, '_') != NULL)
		return -1;
	if (v[nl] == ':') {
		char *end;
		long port = strtol(v + nl + 1, &end, 10);

		if (v[nl + 1] == '\0' || *end != '\0' || port < 1 || port > 65535)
			return -1;
	}
	return 0;
}

const struct conf_validator conf_validators[] = {
	{ "state_dir", 0, check_absolute },
	{ "pid_file", 0, check_absolute },
	{ "lists", 0, check_lists },
	{ "lists_prefix", 0, check_lists_prefix },
	{ "lists_password_file", 0, check_file_if_set },
	{ "lists_cache", 0, check_absolute },
	{ "quarantine_dir", 0, check_absolute },
	{ "services", 0, check_services },
	{ "services", 1, check_service },
	{ "myhostname", 0, check_hostname },
	{ "tls_cert_file", 0, check_file_if_set },
	{ "tls_key_file", 0, check_file_if_set },
	{ "tls_client_ca_file", 0, check_file_if_set },
	{ "smtp_listen", 0, check_listener_count },
	{ "smtp_listen", 1, check_listen },
	{ "submission_listen", 0, check_listener_count },
	{ "submission_listen", 1, check_listen },
	{ "smtps_listen", 0, check_listener_count },
	{ "smtps_listen", 1, check_listen },
	{ "smtp_banner", 0, check_banner },
	{ "milter_listen", 0, check_milter_listen },
	{ "smtp_bare_newline_exceptions", 1, check_cidr },
	{ "resolver", 0, check_resolver },
	{ "delivery", 0, check_delivery },
	{ "relayhost", 0, check_optional_hostport },
	{ "users", 0, check_users },
	{ "relay_networks", 1, check_cidr },
	{ "max_command_length", 0, check_command_length },
	{ "metrics_listen", 0, check_optional_listen },
	{ "pop3_listen", 0, check_listener_count },
	{ "pop3_listen", 1, check_listen },
	{ "pop3s_listen", 0, check_listener_count },
	{ "pop3s_listen", 1, check_listen },
	{ "pop3_banner", 0, check_banner },
	{ "policy_listen", 0, check_listener_count },
	{ "policy_listen", 1, check_policy_listen },
	{ "log_file", 0, check_optional_absolute },
	{ "imap_listen", 0, check_listener_count },
	{ "imap_listen", 1, check_listen },
	{ "imaps_listen", 0, check_listener_count },
	{ "imaps_listen", 1, check_listen },
	{ "imap_banner", 0, check_imap_banner },
	{ "mail_proxy_default", 0, check_proxy_default },
	{ "imap_mail_proxy_default", 0, check_proxy_default },
	{ "pop3_mail_proxy_default", 0, check_proxy_default },
	{ NULL, 0, NULL },
};
