#ifndef PC_DOWNSTREAM_H
#define PC_DOWNSTREAM_H
#include <stddef.h>

/*
 * A blocking SMTP client session to the downstream MTA, for pass-through.
 * Runs on job threads only (never on the event loop); every read and write
 * has a timeout. Replies come back as "CODE TEXT" of the last reply line,
 * made printable; a network failure is reported as a 4xx of our own.
 */
struct downstream;

#define DOWN_REPLY_MAX 512

/* "[HOST]:PORT" or "HOST:PORT"; *code_r/reply on failure (4xx) */
struct downstream *downstream_open(const char *target, const char *helo, unsigned timeout,
    int *code_r, char reply[DOWN_REPLY_MAX]);
/* one command line (no CRLF); returns the reply code */
int downstream_cmd(struct downstream *d, const char *line, char reply[DOWN_REPLY_MAX]);
/* DATA, the message (dot-stuffed on the way), the final dot; returns the final code */
int downstream_data(struct downstream *d, const char *head, size_t headlen, const char *body,
    size_t bodylen, char reply[DOWN_REPLY_MAX]);
/* DATA and our Received: line, once per transaction; returns the code
 * (354 when the message may follow; 354 again if already begun) */
int downstream_begin_data(struct downstream *d, const char *head, char reply[DOWN_REPLY_MAX]);
/* streaming: message bytes (dot-stuffing added here, across calls); -1 lost */
int downstream_send(struct downstream *d, const char *p, size_t n);
/* the end of a streamed message: final dot, the downstream's final reply */
int downstream_finish(struct downstream *d, char reply[DOWN_REPLY_MAX]);
/* QUIT (best effort) and close */
void downstream_close(struct downstream **d);
/* "[HOST]:PORT" well formed */
int downstream_target_is_valid(const char *target);

#endif
