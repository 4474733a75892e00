#ifndef PC_DOTSTUFF_H
#define PC_DOTSTUFF_H
#include <stddef.h>

/*
 * SMTP DATA framing both ways (RFC 5321 §4.5.2), pure: no I/O, no
 * allocation. Reusable by any door or client that speaks DATA (the SMTP
 * door, the downstream client, a future LMTP or POP3 RETR).
 *
 * In:  dotunstuff_feed() removes the dot-stuffing, finds the end (only
 *      <CR><LF>.<CR><LF>), and notes a bare <CR> or <LF> anywhere; with
 *      normalise set a bare one is passed on as <CR><LF> (and <LF>.<LF>
 *      still ends nothing: the SMTP smuggling defence, CVE-2023-51764).
 * Out: dotstuff() adds the dot-stuffing back for a client sending DATA.
 * Header names: hdrnames_feed() finds the names of the header section of
 *      unstuffed message bytes as they go by, without holding them.
 */

/* emits message bytes; n > 0 */
typedef void dotstuff_emit_fn(void *arg, const char *p, size_t n);

struct dotunstuff {
	int state;		/* internal */
	int normalise;		/* 1: a bare CR or LF goes on as CRLF */
	int bare;		/* 1: a bare <CR> or <LF> was seen */
	int done;		/* 1: the final dot was consumed */
};

void dotunstuff_init(struct dotunstuff *u, int normalise);
/*
 * Scan len bytes of DATA; message bytes go to emit. Returns how many bytes
 * were consumed: all of them, or up to and including the final dot (then
 * done is set), or fewer once room octets were emitted (a few more may go
 * out to finish a line ending: at most 3). The final dot, which emits
 * nothing, is consumed whatever the room.
 */
size_t dotunstuff_feed(struct dotunstuff *u, const char *buf, size_t len, size_t room,
    dotstuff_emit_fn *emit, void *arg);

/*
 * Add dot-stuffing to len message bytes: a line starting with '.' gets
 * another. *bol says whether the bytes start a line (1 at the start of a
 * message) and is updated for the next piece.
 */
void dotstuff(int *bol, const char *s, size_t len, dotstuff_emit_fn *emit, void *arg);

/* header names of a message, as its bytes go by */
#define HDRNAMES_MAX 80
struct hdrnames {
	int state;		/* internal */
	char name[HDRNAMES_MAX];
	size_t len;
};

typedef void hdrnames_fn(void *arg, const char *name);

void hdrnames_init(struct hdrnames *h);
/* 1 once the header section is over (nothing more will be named) */
int hdrnames_is_done(const struct hdrnames *h);
/* a line starting with NAME: is a header (name given to fn); a continuation
 * line, anything else and everything after the first empty line are not;
 * names of HDRNAMES_MAX octets or more are skipped */
void hdrnames_feed(struct hdrnames *h, const char *s, size_t n, hdrnames_fn *fn, void *arg);

#endif
