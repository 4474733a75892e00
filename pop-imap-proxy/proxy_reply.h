#ifndef PC_PROXY_REPLY_H
#define PC_PROXY_REPLY_H
/*
 * proxy_reply - the proxy's login towards a backend as a state machine on
 * the backend's lines (issue 12), without I/O: pop-imap-proxy/proxy feeds
 * it what the backend says and sends what it asks for.
 *
 *   proxy_reply_new()      IMAP or POP3, STARTTLS or not, the backend login
 *                          (copied; wiped on free)
 *   proxy_reply_set_client()  forward the client's address (IMAP ID
 *                          x-originating-ip..., POP3 XCLIENT ADDR= PORT=)
 *   proxy_reply_line()     one backend line (without CRLF): what to do next
 *   proxy_reply_tls_done() the STARTTLS handshake is done: what next
 *   proxy_reply_out()      the lines to send after PR_SEND (CRLF included)
 *   proxy_reply_caps()     after PR_OK (IMAP): the post-login CAPABILITY
 *   proxy_reply_why()      after PR_REFUSED / PR_UNAVAILABLE: for the log
 *
 * The dialogues:
 *   IMAP: greeting "* OK" -> [S STARTTLS, handshake] -> [I ID (...)] ->
 *         L AUTHENTICATE PLAIN (SASL-IR when the greeting offered it) ->
 *         the tagged OK's [CAPABILITY ...], or C CAPABILITY when it had none
 *   POP3: greeting "+OK" -> [STLS, handshake] -> [XCLIENT ADDR= PORT=] ->
 *         USER, PASS
 * A line longer than PROXY_REPLY_LINE_MAX or holding NUL ends the login
 * (PR_UNAVAILABLE). Never blocks, no libevent, never logs; the out buffer
 * holds the password: it is wiped before each reuse and on free.
 */
#include <stddef.h>

#define PROXY_REPLY_LINE_MAX 8192	/* a backend line during the login */
#define PROXY_REPLY_CAPS_MAX 4096	/* the post-login CAPABILITY kept */

enum proxy_reply_act {
	PR_NONE,	/* nothing to do: the next line */
	PR_SEND,	/* send proxy_reply_out(), then the next line */
	PR_STARTTLS,	/* start the TLS handshake; then proxy_reply_tls_done() */
	PR_OK,		/* logged in */
	PR_REFUSED,	/* the backend refused the credentials */
	PR_UNAVAILABLE,	/* protocol error, refused STARTTLS, temporary failure */
};

struct proxy_reply;

struct proxy_reply *proxy_reply_new(int imap, int starttls, const char *user,
    const char *password);
void proxy_reply_set_client(struct proxy_reply *pr, const char *rip, unsigned rport,
    const char *lip, unsigned lport);
enum proxy_reply_act proxy_reply_line(struct proxy_reply *pr, const char *line, size_t len);
enum proxy_reply_act proxy_reply_tls_done(struct proxy_reply *pr);
const char *proxy_reply_out(const struct proxy_reply *pr);
const char *proxy_reply_caps(const struct proxy_reply *pr);
const char *proxy_reply_why(const struct proxy_reply *pr);
/* 1 once PR_OK, PR_REFUSED or PR_UNAVAILABLE came: every later call says so again */
int proxy_reply_is_done(const struct proxy_reply *pr);
void proxy_reply_free(struct proxy_reply **pr);

#endif
