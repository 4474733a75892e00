#ifndef PC_POLICY_PROTO_H
#define PC_POLICY_PROTO_H
#include <stddef.h>

/*
 * The Postfix SMTPD access policy delegation protocol (SMTPD_POLICY_README),
 * server side, without I/O: bytes in, one request at a time out; an answer
 * formatted as "action=...\n\n". Knows nothing of sockets or of the engine.
 * One parser per connection; not thread-safe.
 */

#define MAX_POLICY_LINE		2048	/* one "name=value" line, LF excluded */
#define MAX_POLICY_REQUEST	16384	/* one request, every line and LF included */
#define MAX_POLICY_NAME		64	/* an attribute name */
#define MAX_POLICY_ANSWER	(MAX_POLICY_LINE + 16)	/* "action=" text "\n\n" */

/* the attributes the door uses; the others are read and ignored */
enum policy_attr {
	PA_REQUEST, PA_PROTOCOL_STATE, PA_PROTOCOL_NAME, PA_CLIENT_ADDRESS,
	PA_CLIENT_NAME, PA_REVERSE_CLIENT_NAME, PA_HELO_NAME, PA_SENDER,
	PA_RECIPIENT, PA_RECIPIENT_COUNT, PA_SASL_USERNAME, PA_SIZE, PA_QUEUE_ID,
	PA_INSTANCE, PA_COUNT
};

enum policy_state {
	PS_CONNECT, PS_HELO, PS_MAIL, PS_RCPT, PS_DATA, PS_EOM, PS_VRFY, PS_ETRN,
	PS_OTHER	/* a state newer than this code: client checks only */
};

struct policy_request {
	const char *attr[PA_COUNT];	/* values; NULL: absent */
	enum policy_state state;
	unsigned nattrs;		/* lines read, known or not */
	const char *error;		/* NULL, or why the request is malformed */
};

enum policy_feed {
	POLICY_FEED_MORE,	/* every byte consumed, no request complete yet */
	POLICY_FEED_REQUEST,	/* a request ended (it may be malformed: req->error) */
	POLICY_FEED_FATAL,	/* cannot resynchronise: answer req->error and close */
};

struct policy_parser {
	size_t used;		/* bytes of buf holding "name\0value\0" lines */
	size_t line;		/* start of the line being read, in buf */
	size_t total;		/* bytes of the current request seen so far */
	int skipping;		/* inside an over-long line: drop to its LF */
	int done;		/* a request was returned: start afresh at the next feed */
	const char *error;	/* first fault of the current request */
	struct policy_request req;
	char buf[MAX_POLICY_REQUEST + 1];
};

void policy_parser_init(struct policy_parser *p);
/* 1 while a request is partly read (its deadline runs) */
int policy_parser_is_partial(const struct policy_parser *p);
/*
 * Consume bytes from data. Stops right after the empty line that ends a
 * request, so the caller answers before the next request is parsed.
 * *used_r: bytes consumed. On POLICY_FEED_REQUEST and _FATAL, *req_r is
 * filled; its strings live in the parser until the next feed.
 */
enum policy_feed policy_parser_feed(struct policy_parser *p, const char *data, size_t len,
    size_t *used_r, const struct policy_request **req_r);

const char *policy_attr_name(enum policy_attr a);
const char *policy_state_name(enum policy_state s);

/*
 * "action=" + action + "\n\n" into buf (cap >= MAX_POLICY_ANSWER is always
 * enough); bytes outside printable ASCII become '?', the text is cut to fit.
 * Returns the length written.
 */
size_t policy_answer_format(char *buf, size_t cap, const char *action);

#endif
