#ifndef PC_IMAP_MIME_H
#define PC_IMAP_MIME_H
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/*
 * The message side of IMAP FETCH, without I/O loop or session state: one
 * message file in, ENVELOPE / BODYSTRUCTURE / BODY and the place of every
 * BODY[section] out, byte for byte as Dovecot 2.3 writes them
 * (tests/integration/test_imap_mime_dovecot.py compares them live).
 *
 * The file is mapped read-only (never read into memory, never copied) and
 * scanned once, iteratively, for its MIME structure by the rules of
 * Dovecot's message parser; GMime 3 decodes bodies for SEARCH
 * (quoted-printable, charsets). GMime's own parser is not used
 * for the structure: it has no limits and gives no file offsets. Limits:
 * IMAP_MIME_DEPTH_MAX nested multipart / message/rfc822 and
 * IMAP_MIME_PARTS_MAX parts (past them the rest is the last part's body,
 * as in Dovecot), IMAP_MIME_HEADER_MAX octets of one header value.
 *
 * Line ends: a Maildir file may hold bare LF. IMAP sizes and bytes are
 * CRLF, so every size here (section sizes, BODYSTRUCTURE sizes, RFC822.SIZE
 * = the ,W= vsize) counts a bare LF as two octets. A section has crlf = 0
 * and built == NULL when it is exactly the file range [offset, offset +
 * length): send that with sendfile/evbuffer_add_file. Otherwise send what
 * imap_mime_section_read() gives: it adds the CRs (as Dovecot converts on
 * the fly) and turns NUL into 0x80 (as Dovecot does in literals), or copies
 * the built HEADER.FIELDS bytes. The door always announces {sec.size},
 * {0} included (Dovecot never answers NIL for a section).
 *
 * Owner: the caller. One object, one thread; objects on different threads
 * are independent. imap_mime_open() faults the file in: call it, and the
 * section reads, on a job thread. Strings returned are malloc'd: free()
 * them. Never logs message bytes.
 */

#define IMAP_MIME_DEPTH_MAX	100	/* nested multipart / message/rfc822 */
#define IMAP_MIME_PARTS_MAX	10000	/* parts in one message */
#define IMAP_MIME_HEADER_MAX	(256u << 10)	/* bytes of one header field decoded */
#define IMAP_MIME_SIZE_MAX	(1ull << 32)	/* files larger are refused */

struct imap_mime;
struct imap_fetch_att;

/*
 * Map and scan FD (SIZE bytes, as mailstore_msg.size; a file shorter than
 * that is taken as it is). The fd is not kept: the caller closes it when it
 * likes (the mapping stays). -1 on an I/O error or a file larger than
 * IMAP_MIME_SIZE_MAX; any bytes parse.
 */
int imap_mime_open(int fd, uint64_t size, struct imap_mime **m_r, const char **error_r)
    __attribute__((warn_unused_result));
/* the same on bytes in memory (tests, fuzzing); DATA must outlive the object */
struct imap_mime *imap_mime_open_mem(const void *data, size_t size);
void imap_mime_free(struct imap_mime **m);

/* octets with CRLF line ends: RFC822.SIZE when the file name has no ,W= */
uint64_t imap_mime_vsize(const struct imap_mime *m);

/*
 * FETCH items as text, exactly what follows the item name: "(...)" for
 * ENVELOPE, BODYSTRUCTURE, BODY. Strings that need it are literals {n}\r\n...
 * (as Dovecot sends 8-bit or CR/LF text). *len_r: bytes (the result is also
 * NUL-terminated).
 */
char *imap_mime_envelope(struct imap_mime *m, size_t *len_r);
char *imap_mime_bodystructure(struct imap_mime *m, int extensible, size_t *len_r);

/* where a section's bytes are */
struct imap_mime_section {
	uint64_t offset;	/* in the file */
	uint64_t length;	/* bytes of the file */
	uint64_t size;		/* octets sent: the {n} of the literal (after partial) */
	uint64_t skip;		/* octets of the converted range to drop first (partial) */
	int crlf;		/* 0: send [offset, offset + length) as it is; else send
				   it through imap_mime_section_read (1: bare LF -> CRLF
				   and NUL -> 0x80; 2: only NUL -> 0x80) */
	char *built;		/* HEADER.FIELDS(.NOT): the bytes (size of them); else NULL */
};

/*
 * The section ATT names (IMAP_FETCH_SECTION; RFC822, RFC822.HEADER and
 * RFC822.TEXT are asked as BODY[], BODY[HEADER], BODY[TEXT]), with its
 * partial <n.m> applied: 0 and *sec_r (free with imap_mime_section_deinit).
 * A part that does not exist, or HEADER/TEXT of a part that is not
 * message/rfc822, is an empty section (size 0), as Dovecot sends "{0}".
 */
int imap_mime_section(struct imap_mime *m, const struct imap_fetch_att *att,
    struct imap_mime_section *sec_r) __attribute__((warn_unused_result));
/* a section by parts: the same as above for callers without a fetch att */
int imap_mime_section_by_name(struct imap_mime *m, const uint32_t *part, size_t nparts,
    int text /* enum imap_section_text */, const char *const *fields, size_t nfields,
    int partial, uint32_t p_offset, uint32_t p_length, struct imap_mime_section *sec_r)
    __attribute__((warn_unused_result));
void imap_mime_section_deinit(struct imap_mime_section *sec);
/*
 * Copy octets [pos, pos + len) of what the section sends into BUF (any
 * section: built, plain or converted); returns the octets copied (less
 * than LEN only at the section's end). Cheap to call piece by piece in
 * increasing POS order.
 */
size_t imap_mime_section_read(struct imap_mime *m, const struct imap_mime_section *sec,
    uint64_t pos, void *buf, size_t len);

/* ---- for SEARCH (imap_search.c) ---- */

/* the first Date: header as a time and its zone offset in minutes (by
 * Dovecot's rules: unknown zones are GMT); -1 if none or it does not parse */
int imap_mime_sent_date(struct imap_mime *m, time_t *t_r, int *tz_minutes_r);

#define IMAP_MIME_HDR_ADDRESS	0x1	/* the addresses, rewritten "Name <a@b>, ..." */
#define IMAP_MIME_HDR_COMPRESS	0x2	/* LWSP runs as one space */
/*
 * Every field NAME (case-insensitive; NULL: every field) of the top-level
 * header, its value unfolded and MIME-word decoded to UTF-8 (as Dovecot
 * searches it; FLAGS above), each given to FN until it returns non-zero
 * (which is returned); 0 after the last.
 */
int imap_mime_header_foreach(struct imap_mime *m, const char *name, unsigned flags,
    int (*fn)(void *ctx, const char *name, const char *value), void *ctx);
/*
 * The message as SEARCH TEXT (WITH_HEADERS) or BODY reads it, part after
 * part in file order: each part's header lines decoded ("Name: value\r\n"),
 * then, for text/ and message/ parts (and parts without Content-Type), its
 * body with the transfer encoding undone and converted to UTF-8 from its
 * charset. PART_START is 1 on a part's first piece (a match may not span
 * parts). At most MAX bytes in all (bounded work); FN's non-zero stops it.
 */
int imap_mime_text_foreach(struct imap_mime *m, int with_headers, uint64_t max,
    int (*fn)(void *ctx, int part_start, const char *data, size_t len), void *ctx);

#endif
