#ifndef PC_MAILSTORE_MAILDIR_H
#define PC_MAILSTORE_MAILDIR_H
#include <stddef.h>
#include <stdint.h>

/*
 * The pure parts of the Maildir++ backend (mailstore_maildir_fmt.c: file
 * names, dovecot-uidlist, dovecot-keywords), apart for unit tables and the
 * fuzzer. Formats as Dovecot writes them; every parser is bounded and treats
 * its input as hostile. Nothing here touches the file system.
 */

/* what a message file name says: BASE[:2,FLAGS] with ,S= and ,W= in BASE */
struct mdname {
	size_t baselen;		/* bytes before ':' */
	unsigned flags;		/* enum mailstore_flag */
	uint32_t keywords;	/* letters a..z as bits 0..25 */
	uint64_t size, vsize;	/* from ,S= and ,W=; 0 when absent */
	unsigned has_size:1, has_vsize:1, has_info:1;
};

/* 0, or -1 for a name not to touch (empty base, '/', too long, control bytes) */
int mdname_parse(const char *fname, struct mdname *r) __attribute__((warn_unused_result));
/*
 * FNAME with its flags replaced as Dovecot does: ":2," then the letters in
 * ASCII order, unknown letters kept, a second ',' flag set kept. 0, or -1
 * when the result would not fit OUTSZ (or MAX_MAILSTORE_FNAME).
 */
int mdname_set_flags(const char *fname, unsigned flags, uint32_t keywords, char *out,
    size_t outsz) __attribute__((warn_unused_result));
/* Dovecot's sort order for new files (time, then microseconds, then base) */
int mdname_sort_cmp(const char *a, const char *b);
/* 0 when two names have the same base (the part before ':') */
int mdname_base_cmp(const char *a, const char *b);

struct md_uidrec {
	uint32_t uid;
	char *base;		/* file name without ":2,..." */
	char *ext;		/* record extensions ("W123 P..."), or NULL */
};

struct md_uidlist {
	unsigned version;	/* as read: 1 or 3 (written as 3) */
	uint32_t uidvalidity, next_uid;
	char guid[33];		/* mailbox GUID, hex ("" if none) */
	char *hdr_ext;		/* other header fields, kept verbatim, or NULL */
	struct md_uidrec *recs;	/* ascending uid */
	size_t n, cap;
};

/*
 * Parse a whole dovecot-uidlist. On error ul holds what was read before the
 * fault (uidvalidity may be set) and *error_r says what is wrong.
 */
int md_uidlist_parse(const char *buf, size_t len, struct md_uidlist *ul, const char **error_r)
    __attribute__((warn_unused_result));
/* the version 3 text; caller frees; *len_r its length */
char *md_uidlist_format(const struct md_uidlist *ul, size_t *len_r);
void md_uidlist_add(struct md_uidlist *ul, uint32_t uid, const char *base, size_t baselen,
    const char *ext);
void md_uidlist_clear(struct md_uidlist *ul);

/* dovecot-keywords: "IDX NAME" lines; bad lines skipped as Dovecot does */
void md_keywords_parse(const char *buf, size_t len, char *names[26]);
char *md_keywords_format(char *const names[26], size_t *len_r);
/* a keyword name we keep (an IMAP atom, capped) */
int md_keyword_is_valid(const char *p, size_t n);

#endif
