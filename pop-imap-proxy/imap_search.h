#ifndef PC_IMAP_SEARCH_H
#define PC_IMAP_SEARCH_H
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/*
 * SEARCH (RFC 3501 §6.4.4) against one message: the program as
 * imap_parser.h parses it, the message's mailstore facts, and lazy
 * accessors, so that a search on flags, UIDs or sizes never opens a file
 * and one on dates only stats it. String keys match as Dovecot does: a
 * case-insensitive substring of the MIME-word-decoded header value (HEADER,
 * FROM, TO, CC, BCC, SUBJECT), of the transfer-decoded text of the parts
 * (BODY: bodies; TEXT: header and bodies). Charsets: UTF-8 and US-ASCII
 * (and none); anything else is NO [BADCHARSET].
 *
 * Bounded work: at most IMAP_SEARCH_TEXT_MAX octets of decoded body text
 * are looked at per message.
 *
 * Owner: none (pure functions); one thread. Never logs message bytes.
 */

#define IMAP_SEARCH_TEXT_MAX	(16u << 20)

struct imap_search;
struct imap_mime;
struct mailstore_msg;

struct imap_search_input {
	const struct mailstore_msg *msg;	/* uid, flags, keywords, size, vsize, recent */
	uint32_t seq;		/* 1-based */
	uint32_t max_seq;	/* the mailbox's message count ('*' in a sequence set) */
	uint32_t max_uid;	/* the largest UID in the mailbox ('*' in a UID set) */
	int in_saved;		/* in the saved result "$" (RFC 5182); 0 if none */
	/* keyword names by bit (mailstore_box_keyword); NULL slots unused */
	const char *const *keywords;
	size_t nkeywords;
	/* the internal date; called at most once per match */
	int (*date)(void *ctx, time_t *date_r);
	/* the parsed message (owned by ctx, kept for the next key); at most once */
	int (*open)(void *ctx, struct imap_mime **m_r);
	void *ctx;
};

/* 0 if CHARSET (NULL: none given) can be searched; else -1 and the reply
 * text "[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset" */
int imap_search_charset_check(const char *charset, const char **error_r)
    __attribute__((warn_unused_result));

/* does the message match PROG? 0 and *match_r, or -1 (the message could
 * not be read: the door answers NO, as Dovecot does for a lost file) */
int imap_search_match(const struct imap_search *prog, const struct imap_search_input *in,
    int *match_r, const char **error_r) __attribute__((warn_unused_result));

/* would PROG need the message file (header or body keys)? the internal date? */
int imap_search_needs_file(const struct imap_search *prog);
int imap_search_needs_date(const struct imap_search *prog);

#endif
