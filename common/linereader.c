/*
 * linereader - a capped line reader, pure.
 *
 *   linereader_init()    a reader holding lines of up to max octets
 *   linereader_feed()    bytes in; 1 and the line when its LF arrived
 *   linereader_reset()   drop a partial line (STARTTLS: no plaintext
 *                        carried over)
 *
 * A line past the cap is counted, not held, and handed out with overflow
 * set and empty text once its LF comes: the caller answers once and is in
 * step with the peer again (Postfix smtpd_chat_query, OpenSMTPD
 * SMTP_LINE_MAX). A bare LF ending and NUL bytes are reported, never
 * fixed: what is acceptable is the door's decision.
 *
 * Never blocks; allocates max + 1 octets once.
 */
#include <stdlib.h>
#include <string.h>

#include "common/linereader.h"
#include "common/xmalloc.h"

void
linereader_init(struct linereader *lr, size_t max)
{
	memset(lr, 0, sizeof(*lr));
	lr->max = max;
	lr->buf = xmalloc(max + 1);
}

void
linereader_deinit(struct linereader *lr)
{
	free(lr->buf);
	lr->buf = NULL;
}

void
linereader_reset(struct linereader *lr)
{
	lr->len = lr->total = 0;
	lr->overflow = 0;
	lr->ready = 0;
}

size_t
linereader_pending(const struct linereader *lr)
{
	return lr->ready ? 0 : lr->total;
}

int
linereader_feed(struct linereader *lr, const char *buf, size_t len, size_t *used_r,
    struct linereader_line *line_r)
{
	const char *nl = memchr(buf, '\n', len);
	size_t n = nl ? (size_t)(nl - buf) : len;

	if (lr->ready)
		linereader_reset(lr);
	if (!lr->overflow && n <= lr->max - lr->len) {
		memcpy(lr->buf + lr->len, buf, n);
		lr->len += n;
	} else {
		lr->overflow = 1;
	}
	lr->total += n;
	if (nl == NULL) {
		*used_r = len;
		return 0;
	}
	*used_r = n + 1;
	lr->total++;
	lr->ready = 1;
	memset(line_r, 0, sizeof(*line_r));
	line_r->total = lr->total;
	line_r->overflow = lr->overflow;
	if (lr->overflow) {
		lr->buf[lr->len] = '\0';
		line_r->text = lr->buf;
		line_r->len = lr->len;
		return 1;
	}
	line_r->crlf = lr->len > 0 && lr->buf[lr->len - 1] == '\r';
	line_r->len = lr->len - (line_r->crlf ? 1 : 0);
	lr->buf[line_r->len] = '\0';
	line_r->text = lr->buf;
	line_r->nul = memchr(lr->buf, '\0', line_r->len) != NULL;
	return 1;
}
