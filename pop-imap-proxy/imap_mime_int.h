#ifndef PC_IMAP_MIME_INT_H
#define PC_IMAP_MIME_INT_H
/*
 * Private to imap_mime.c (the structure scan, header and address parsing,
 * BODY[section], SEARCH) and imap_bodystructure.c (the ENVELOPE and
 * BODYSTRUCTURE writers): the types both see and the helpers imap_mime.c
 * lends the writers. Nothing else includes it. The short helper names are
 * kept in the two files; the linker sees them with an imap_mime_ prefix
 * (imap_proto.c has a str_add of its own).
 */
#include <stddef.h>
#include <stdint.h>

#include "pop-imap-proxy/imap_mime.h"

#define str_add	imap_mime_str_add
#define str_addc	imap_mime_str_addc
#define str_adds	imap_mime_str_adds
#define str_printf	imap_mime_str_printf
#define str_trunc	imap_mime_str_trunc
#define str_c	imap_mime_str_c
#define str_free	imap_mime_str_free
#define pool_alloc	imap_mime_pool_alloc
#define pool_strndup	imap_mime_pool_strndup
#define pool_strdup	imap_mime_pool_strdup
#define pool_free	imap_mime_pool_free
#define pool_hdrdup	imap_mime_pool_hdrdup
#define rp_init	imap_mime_rp_init
#define rp_skip_lwsp	imap_mime_rp_skip_lwsp
#define rp_content_type	imap_mime_rp_content_type
#define rp_mime_token	imap_mime_rp_mime_token
#define rp_atom	imap_mime_rp_atom
#define params_parse	imap_mime_params_parse
#define addr_parse	imap_mime_addr_parse
#define hdr_iter_init	imap_mime_hdr_iter_init
#define hdr_next	imap_mime_hdr_next
#define hdr_is	imap_mime_hdr_is

#define ADDR_MAX	10000	/* addresses of one envelope field, all its headers */
#define PF_MULTIPART	0x01u
#define PF_RFC822	0x02u
#define PF_TEXT		0x04u
#define PF_DIGEST	0x08u
#define PF_IS_MIME	0x10u

/* growing strings */
struct str {
	char *p;
	size_t len, cap;
};

/* a pool for the strings of one answer: freed at once */
struct pool {
	void **blk;
	size_t n, cap;
};

/* a tokeniser over one header value; "at end" reads as NUL (never past) */
struct rp {
	const unsigned char *d, *end;
	struct str *comment;	/* the last comment, if wanted */
	int nul_repl;		/* NUL in quoted strings etc. -> U+FFFD */
};

/* RFC 2231 parameters, decoded */
struct param {
	const char *name, *value;
};

struct addr {
	const char *name, *route, *mailbox, *domain;
	int invalid;
	struct addr *next;
};

/* the message, its parts (the structure scan fills them) */
struct msize {
	uint64_t phys, virt, lines;
};

struct part {
	struct part *parent, *children, *next, *last_child;
	uint64_t pos;		/* of the header, in the file */
	struct msize hdr, body;
	unsigned flags;
	unsigned nchildren;
	unsigned depth;
};

struct boundary {
	struct part *part;
	char *b;
	size_t len;
	int epilogue;
};

struct imap_mime {
	const unsigned char *d;
	uint64_t size;
	void *map;		/* munmap on free (NULL: open_mem) */
	int has_bare_lf, has_nul;
	struct part *root;
	struct part **all;	/* for freeing */
	size_t nall, capall;
	/* scan state */
	struct boundary *bnd;
	size_t nbnd, capbnd;
	unsigned nested, total;
	char *last_boundary;
	/* imap_mime_section_read of a converted range: where it stopped */
	int cache_valid, cache_half;
	uint64_t cache_sec, cache_out, cache_file;
};

/* header lines */
enum hdr_mode {
	HDR_DATA,	/* skip all LWSP after ':', continuations joined with LF */
	HDR_ONELINE,	/* skip one LWSP, continuations joined as they are, TAB->SP */
};

struct hdr {
	const unsigned char *name;	/* NULL: a line without ':' (or a name too long) */
	size_t name_len;
	const unsigned char *middle;	/* from the ':' on (with the LWSP skipped) */
	size_t middle_len;
	struct str value;		/* the full value */
	uint64_t start, end;		/* the lines, in the file */
	int no_newline;			/* the last line has no LF */
};

struct hdr_iter {
	const struct imap_mime *m;
	uint64_t pos, end;
	enum hdr_mode mode;
};

/* lent by imap_mime.c */
void str_add(struct str *s, const void *d, size_t n);
void str_addc(struct str *s, char c);
void str_adds(struct str *s, const char *z);
void __attribute__((format(printf, 2, 3))) str_printf(struct str *s, const char *fmt, ...);
void str_trunc(struct str *s, size_t len);
const char *str_c(struct str *s);
void str_free(struct str *s);
void *pool_alloc(struct pool *pl, size_t n);
char *pool_strndup(struct pool *pl, const char *s, size_t n);
char *pool_strdup(struct pool *pl, const char *s);
void pool_free(struct pool *pl);
char *pool_hdrdup(struct pool *pl, const unsigned char *d, size_t n);
void rp_init(struct rp *r, const unsigned char *d, size_t n);
int rp_skip_lwsp(struct rp *r);
int rp_content_type(struct rp *r, struct str *s);
int rp_mime_token(struct rp *r, struct str *s);
int rp_atom(struct rp *r, struct str *s);
void params_parse(struct rp *r, struct pool *pl, struct param **params_r, size_t *n_r);
struct addr *addr_parse(struct pool *pl, const unsigned char *d, size_t n);
void hdr_iter_init(struct hdr_iter *it, const struct imap_mime *m, const struct part *p,
    enum hdr_mode mode);
int hdr_next(struct hdr_iter *it, struct hdr *h);
int hdr_is(const struct hdr *h, const char *name);

#endif
