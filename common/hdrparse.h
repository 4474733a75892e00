#ifndef PC_HDRPARSE_H
#define PC_HDRPARSE_H
#include <stddef.h>

/*
 * An incremental RFC 5322 header-section parser: message bytes in (any
 * piece sizes, CRLF or bare LF line ends), one callback per complete header
 * field with its name and its unfolded value, then the end of the section.
 * What Sieve's header tests, the required-header check and the IMAP
 * ENVELOPE need, without holding the message.
 *
 * Caps: a field (name + value, folds included) longer than HDR_FIELD_MAX is
 * reported with its value cut to that size and `truncated` set; it never
 * grows memory past HDR_FIELD_MAX. A line that is not a field (no colon, a
 * name with characters outside RFC 5322 ftext, a leading continuation line)
 * ends the header section there, as Postfix's cleanup does: that line is
 * the first of the body.
 *
 * Owner: the caller; one message at a time; not thread-safe.
 */
#define HDR_FIELD_MAX 65536
#define HDR_NAME_MAX 256

struct hdr_field {
	const char *name;	/* as written, NUL-terminated */
	size_t name_len;
	const char *value;	/* unfolded: CRLF+WSP become the WSP; leading WSP dropped */
	size_t value_len;
	int truncated;		/* the field was longer than HDR_FIELD_MAX */
};

/* return 0 to go on, anything else stops hdrparse_feed() with that value */
typedef int hdrparse_cb(void *arg, const struct hdr_field *f);

struct hdrparse;

struct hdrparse *hdrparse_new(hdrparse_cb *cb, void *arg);
void hdrparse_free(struct hdrparse **hp);
/* start a new message */
void hdrparse_reset(struct hdrparse *hp);
/*
 * Feed bytes. Returns how many of them the parser took (less than len once
 * the header section ended: the rest is body), or -1 when the callback
 * stopped the parse (its non-zero value in *stop_r).
 */
long hdrparse_feed(struct hdrparse *hp, const char *buf, size_t len, int *stop_r);
/* the message ended: flush a last field that had no line end */
int hdrparse_finish(struct hdrparse *hp, int *stop_r);
/* 1 once the empty line (or a non-field line) ended the header section */
int hdrparse_done(const struct hdrparse *hp);
/* once done: the offset (from the first byte fed) where the body starts:
 * after the empty line, or at the first line that was not a field */
unsigned long long hdrparse_body_offset(const struct hdrparse *hp);
/* the header section ended at a line that was not a field (no empty line) */
int hdrparse_ended_without_blank_line(const struct hdrparse *hp);

#endif
