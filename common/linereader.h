#ifndef PC_LINEREADER_H
#define PC_LINEREADER_H
#include <stddef.h>

/*
 * A capped line reader for text protocols (SMTP, POP3, IMAP, the Postfix
 * policy door): bytes in, whole lines out. A line longer than the cap is
 * not held: the reader skips to its end and reports it, so the door can
 * answer and stay in step. Never allocates past the cap given at init.
 * Owner: the connection; one thread.
 */
struct linereader {
	char *buf;
	size_t max;		/* octets held, the line's CR included */
	size_t len;		/* held so far */
	size_t total;		/* octets of the current line so far, held or not */
	int overflow;
	int ready;		/* a line was handed out: start afresh on the next feed */
};

struct linereader_line {
	char *text;		/* NUL-terminated, without CR LF; on overflow the
				 * pieces held before the cap was hit (may be "") */
	size_t len;		/* octets of text (it may hold NULs: see nul) */
	size_t total;		/* octets the peer sent for it, LF included */
	int overflow;		/* longer than the cap: text is empty */
	int crlf;		/* ended in CR LF (else a bare LF) */
	int nul;		/* a NUL byte in it */
};

/* lines of up to max octets (CR included, LF not) are held */
void linereader_init(struct linereader *lr, size_t max);
void linereader_deinit(struct linereader *lr);
/* forget a partial line */
void linereader_reset(struct linereader *lr);
/*
 * Feed len bytes; *used_r says how many were taken. Returns 1 when a line
 * ended (its LF taken) and fills line_r, valid until the next call; 0 when
 * every byte was taken and the line goes on.
 */
int linereader_feed(struct linereader *lr, const char *buf, size_t len, size_t *used_r,
    struct linereader_line *line_r);
/* octets of a line under way (0 between lines) */
size_t linereader_pending(const struct linereader *lr);

#endif
