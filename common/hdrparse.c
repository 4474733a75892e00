/*
 * hdrparse - incremental RFC 5322 header-section parser.
 *
 *   hdrparse_new(cb, arg)        a parser calling cb once per complete field
 *   hdrparse_feed(hp, buf, len)  any piece sizes; bytes of the header section
 *                                consumed (less than len once it ended)
 *   hdrparse_finish(hp)          end of message: the last field, if pending
 *   hdrparse_done(hp)            the header section has ended
 *
 * A field is complete when the next line does not start with WSP. Values are
 * unfolded (the CRLF of a fold goes, its WSP stays) and their leading WSP is
 * dropped. Memory is one buffer of HDR_FIELD_MAX + 2 bytes, whatever the
 * input: longer fields are cut and flagged, never grown into. Never
 * allocates after hdrparse_new(), never blocks.
 */
#include <stdlib.h>
#include <string.h>

#include "common/hdrparse.h"
#include "common/xmalloc.h"

enum hp_state {
	HP_LINE_START,		/* at the first byte of a line */
	HP_NAME,		/* in a field name */
	HP_NAME_WSP,		/* WSP after a name, before its colon (obs-syntax) */
	HP_VALUE_LEAD,		/* after the colon, skipping leading WSP */
	HP_VALUE,		/* in a value */
	HP_CR_EMPTY,		/* a CR at the start of a line: the empty line? */
	HP_DONE,
};

struct hdrparse {
	hdrparse_cb *cb;
	void *arg;
	enum hp_state st;
	int have_field;		/* a field waits for its end */
	int truncated;
	int no_blank;
	size_t name_len;
	size_t val_len;		/* bytes of the value in buf after the name's NUL */
	unsigned long long fed;		/* bytes fed so far */
	unsigned long long line_start;	/* offset of the line being read */
	unsigned long long body_off;	/* where the body starts, once done */
	char buf[HDR_FIELD_MAX + 2];
};

struct hdrparse *
hdrparse_new(hdrparse_cb *cb, void *arg)
{
	struct hdrparse *hp = xcalloc(1, sizeof(*hp));

	hp->cb = cb;
	hp->arg = arg;
	return hp;
}

void
hdrparse_free(struct hdrparse **hp)
{
	free(*hp);
	*hp = NULL;
}

void
hdrparse_reset(struct hdrparse *hp)
{
	hp->st = HP_LINE_START;
	hp->have_field = 0;
	hp->truncated = 0;
	hp->no_blank = 0;
	hp->name_len = 0;
	hp->val_len = 0;
	hp->fed = hp->line_start = hp->body_off = 0;
}

unsigned long long
hdrparse_body_offset(const struct hdrparse *hp)
{
	return hp->body_off;
}

int
hdrparse_done(const struct hdrparse *hp)
{
	return hp->st == HP_DONE;
}

int
hdrparse_ended_without_blank_line(const struct hdrparse *hp)
{
	return hp->st == HP_DONE && hp->no_blank;
}

/* RFC 5322 ftext: printable US-ASCII except the colon */
static int
is_ftext(unsigned char c)
{
	return c >= 33 && c <= 126 && c != ':';
}

static void
put_value(struct hdrparse *hp, char c)
{
	if (hp->name_len + 1 + hp->val_len < HDR_FIELD_MAX)
		hp->buf[hp->name_len + 1 + hp->val_len++] = c;
	else
		hp->truncated = 1;
}

/* the pending field is complete: hand it over */
static int
emit(struct hdrparse *hp)
{
	struct hdr_field f;
	size_t v = hp->val_len;

	if (!hp->have_field)
		return 0;
	hp->have_field = 0;
	/* a CR before the line end that ended the field is not part of it */
	while (v > 0 && hp->buf[hp->name_len + v] == '\r')
		v--;
	hp->buf[hp->name_len] = '\0';
	hp->buf[hp->name_len + 1 + v] = '\0';
	f.name = hp->buf;
	f.name_len = hp->name_len;
	f.value = hp->buf + hp->name_len + 1;
	f.value_len = v;
	f.truncated = hp->truncated;
	hp->truncated = 0;
	return hp->cb(hp->arg, &f);
}

/* the header section ends; the line being read is the body's first */
static int
end_section(struct hdrparse *hp, int blank, unsigned long long body_off)
{
	hp->no_blank = !blank;
	hp->body_off = body_off;
	hp->st = HP_DONE;
	return emit(hp);
}

long
hdrparse_feed(struct hdrparse *hp, const char *buf, size_t len, int *stop_r)
{
	size_t i;
	int rc;

	*stop_r = 0;
	for (i = 0; i < len && hp->st != HP_DONE; i++) {
		unsigned char c = (unsigned char)buf[i];
		unsigned long long here = hp->fed + i;	/* this byte's offset */

		switch (hp->st) {
		case HP_LINE_START:
			hp->line_start = here;
			if (c == '\n') {
				if ((rc = end_section(hp, 1, here + 1)) != 0)
					goto stopped;
				continue;
			}
			if (c == '\r') {
				hp->st = HP_CR_EMPTY;
				continue;
			}
			if (c == ' ' || c == '\t') {
				if (!hp->have_field) {	/* a fold with nothing to fold into */
					if ((rc = end_section(hp, 0, hp->line_start)) != 0)
						goto stopped;
					break;
				}
				if (hp->val_len == 0)	/* all of the value so far was folds */
					hp->st = HP_VALUE_LEAD;
				else {
					put_value(hp, (char)c);
					hp->st = HP_VALUE;
				}
				continue;
			}
			if ((rc = emit(hp)) != 0)
				goto stopped;
			if (!is_ftext(c)) {
				if ((rc = end_section(hp, 0, hp->line_start)) != 0)
					goto stopped;
				break;
			}
			hp->name_len = 0;
			hp->val_len = 0;
			hp->buf[hp->name_len++] = (char)c;
			hp->st = HP_NAME;
			continue;
		case HP_CR_EMPTY:
			if (c == '\n') {
				if ((rc = end_section(hp, 1, here + 1)) != 0)
					goto stopped;
				continue;
			}
			/* a lone CR at the start of a line: not a field, not the empty line */
			if ((rc = end_section(hp, 0, hp->line_start)) != 0)
				goto stopped;
			break;
		case HP_NAME:
			if (c == ':') {
				hp->have_field = 1;
				hp->st = HP_VALUE_LEAD;
			} else if (c == ' ' || c == '\t') {
				hp->st = HP_NAME_WSP;
			} else if (is_ftext(c) && hp->name_len < HDR_NAME_MAX) {
				hp->buf[hp->name_len++] = (char)c;
			} else {	/* not a field after all: this line opens the body */
				if ((rc = end_section(hp, 0, hp->line_start)) != 0)
					goto stopped;
				break;
			}
			continue;
		case HP_NAME_WSP:
			if (c == ':') {
				hp->have_field = 1;
				hp->st = HP_VALUE_LEAD;
			} else if (c != ' ' && c != '\t') {
				if ((rc = end_section(hp, 0, hp->line_start)) != 0)
					goto stopped;
				break;
			}
			continue;
		case HP_VALUE_LEAD:
			if (c == ' ' || c == '\t')
				continue;
			hp->st = HP_VALUE;
			/* FALLTHROUGH */
		case HP_VALUE: {
			/* the rest of the line at once: what put_value() would
			 * store byte by byte, up to the line end (memchr) */
			const char *nl = c == '\n' ? buf + i :
			    memchr(buf + i, '\n', len - i);
			size_t end = nl != NULL ? (size_t)(nl - buf) : len;
			size_t at = hp->name_len + 1 + hp->val_len;
			size_t n = end - i, room = at < HDR_FIELD_MAX ? HDR_FIELD_MAX - at : 0;

			if (n > room) {
				n = room;
				hp->truncated = 1;
			}
			memcpy(hp->buf + at, buf + i, n);
			hp->val_len += n;
			if (nl == NULL) {
				i = len - 1;	/* the line goes on in the next piece */
				continue;
			}
			i = end;
			/* the line end is not part of the value: an unfold keeps the WSP only */
			if (hp->val_len > 0 && hp->buf[hp->name_len + hp->val_len] == '\r')
				hp->val_len--;
			hp->st = HP_LINE_START;
			continue;
		}
		case HP_DONE:
			break;
		}
	}
	hp->fed += i;
	return (long)i;
stopped:
	hp->fed += i + 1;
	*stop_r = rc;
	return -1;
}

int
hdrparse_finish(struct hdrparse *hp, int *stop_r)
{
	*stop_r = 0;
	if (hp->st == HP_DONE)
		return 0;
	/* a message that is all header (no empty line, no body) */
	hp->st = HP_DONE;
	hp->no_blank = 1;
	hp->body_off = hp->fed;
	if ((*stop_r = emit(hp)) != 0)
		return -1;
	return 0;
}
