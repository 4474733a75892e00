/*
 * policy_proto - the Postfix SMTPD access policy delegation protocol, server
 * side, as pure code: no sockets, no engine, no allocation.
 *
 *   policy_parser_init()     an empty parser (embedded in the connection)
 *   policy_parser_feed()     bytes in; stops after each complete request
 *   policy_parser_is_partial() a request is under way (its deadline runs)
 *   policy_answer_format()   "action=TEXT\n\n", printable ASCII only
 *
 * A request is "name=value" lines ending with an empty line (LF; a CR
 * before it is tolerated). Hostile input is answered, never trusted: a line
 * over MAX_POLICY_LINE is skipped to its LF and makes the request malformed
 * (the stream stays in sync); a line that is not name=value, a bad name, a
 * NUL byte, a known attribute given twice, an empty request, a missing or
 * unknown `request`, a missing `protocol_state` or `client_address` make it
 * malformed too. A request over MAX_POLICY_REQUEST cannot be resynchronised
 * safely: POLICY_FEED_FATAL, and the caller closes after answering.
 * Unknown attribute names are read and ignored (Postfix adds some in every
 * release). Never logs, never blocks; the caller logs req->error.
 */
#include <string.h>
#include <strings.h>

#include "policy/policy_proto.h"

static const char *const attr_names[PA_COUNT] = {
	"request", "protocol_state", "protocol_name", "client_address",
	"client_name", "reverse_client_name", "helo_name", "sender",
	"recipient", "recipient_count", "sasl_username", "size", "queue_id",
	"instance",
};

static const struct {
	const char *name;
	enum policy_state state;
} states[] = {
	{ "CONNECT", PS_CONNECT }, { "EHLO", PS_HELO }, { "HELO", PS_HELO },
	{ "MAIL", PS_MAIL }, { "RCPT", PS_RCPT }, { "DATA", PS_DATA },
	{ "END-OF-MESSAGE", PS_EOM }, { "VRFY", PS_VRFY }, { "ETRN", PS_ETRN },
};

const char *
policy_attr_name(enum policy_attr a)
{
	return attr_names[a];
}

const char *
policy_state_name(enum policy_state s)
{
	for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++)
		if (states[i].state == s)
			return states[i].name;
	return "OTHER";
}

static void
reset(struct policy_parser *p)
{
	p->used = 0;
	p->line = 0;
	p->total = 0;
	p->skipping = 0;
	p->done = 0;
	p->error = NULL;
	memset(&p->req, 0, sizeof(p->req));
	p->req.state = PS_OTHER;
}

void
policy_parser_init(struct policy_parser *p)
{
	reset(p);
	p->buf[0] = '\0';
}

int
policy_parser_is_partial(const struct policy_parser *p)
{
	return !p->done && p->total > 0;
}

static void
fault(struct policy_parser *p, const char *why)
{
	if (p->error == NULL)
		p->error = why;
}

static int
name_ok(const char *s, size_t n)
{
	if (n == 0 || n > MAX_POLICY_NAME)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '_' || c == '-'))
			return 0;
	}
	return 1;
}

/* the line buf[p->line .. p->used) is complete (LF dropped): keep or drop it */
static void
take_line(struct policy_parser *p)
{
	char *s = p->buf + p->line, *eq;
	size_t n = p->used - p->line;

	if (n > 0 && s[n - 1] == '\r')
		n--;
	p->req.nattrs++;
	eq = memchr(s, '=', n);
	if (memchr(s, '\0', n) != NULL)
		fault(p, "NUL byte in an attribute");
	else if (eq == NULL)
		fault(p, "a line is not name=value");
	else if (!name_ok(s, (size_t)(eq - s)))
		fault(p, "bad attribute name");
	else {
		s[n] = '\0';
		*eq = '\0';
		p->used = p->line + n + 1;
		for (int a = 0; a < PA_COUNT; a++) {
			if (strcmp(s, attr_names[a]) != 0)
				continue;
			if (p->req.attr[a] != NULL)
				fault(p, "an attribute given twice");
			else
				p->req.attr[a] = eq + 1;
			break;
		}
		p->line = p->used;
		return;
	}
	p->used = p->line;	/* drop the line */
}

static void
finish(struct policy_parser *p)
{
	struct policy_request *r = &p->req;
	const char *st = r->attr[PA_PROTOCOL_STATE];

	r->state = PS_OTHER;
	if (st != NULL)
		for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++)
			if (strcasecmp(st, states[i].name) == 0)
				r->state = states[i].state;
	if (p->error == NULL) {
		if (r->nattrs == 0)
			p->error = "empty request";
		else if (r->attr[PA_REQUEST] == NULL)
			p->error = "no request attribute";
		else if (strcmp(r->attr[PA_REQUEST], "smtpd_access_policy") != 0)
			p->error = "unknown request type";
		else if (st == NULL)
			p->error = "no protocol_state attribute";
		else if (r->attr[PA_CLIENT_ADDRESS] == NULL)
			p->error = "no client_address attribute";
	}
	r->error = p->error;
	p->done = 1;
}

enum policy_feed
policy_parser_feed(struct policy_parser *p, const char *data, size_t len, size_t *used_r,
    const struct policy_request **req_r)
{
	if (p->done)
		reset(p);
	for (size_t i = 0; i < len; i++) {
		char c = data[i];

		if (++p->total > MAX_POLICY_REQUEST) {
			p->error = "request too long";	/* whatever came first */
			p->req.error = p->error;
			p->done = 1;
			*used_r = i + 1;
			*req_r = &p->req;
			return POLICY_FEED_FATAL;
		}
		if (c == '\n') {
			if (p->skipping) {
				p->skipping = 0;
				p->req.nattrs++;
				continue;
			}
			if (p->used == p->line ||
			    (p->used == p->line + 1 && p->buf[p->line] == '\r')) {
				p->used = p->line;
				finish(p);
				*used_r = i + 1;
				*req_r = &p->req;
				return POLICY_FEED_REQUEST;
			}
			take_line(p);
			continue;
		}
		if (p->skipping)
			continue;
		if (p->used - p->line >= MAX_POLICY_LINE) {
			fault(p, "attribute line too long");
			p->skipping = 1;
			p->used = p->line;
			continue;
		}
		p->buf[p->used++] = c;
	}
	*used_r = len;
	return POLICY_FEED_MORE;
}

size_t
policy_answer_format(char *buf, size_t cap, const char *action)
{
	size_t n = 0;

	if (cap < 10) {
		if (cap > 0)
			buf[0] = '\0';
		return 0;
	}
	memcpy(buf, "action=", 7);
	n = 7;
	for (; *action && n + 3 < cap; action++) {
		unsigned char c = (unsigned char)*action;

		buf[n++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
	}
	buf[n++] = '\n';
	buf[n++] = '\n';
	buf[n] = '\0';
	return n;
}
