#ifndef PC_IMAP_PARSER_H
#define PC_IMAP_PARSER_H
#include <stddef.h>
#include <stdint.h>

/*
 * IMAP4rev1 (RFC 3501) command parser, without I/O: client bytes in, fed in
 * pieces of any size (one byte at a time is fine), events out: a parsed
 * command, a continuation request the door must send ("+ OK"), or an error
 * reply (BAD/NO) after which the parser is back in sync at the next line.
 * Literals {n} and LITERAL+ {n+} (RFC 7888), quoted strings, lists, sequence
 * sets (with SEARCHRES "$"), FETCH attributes with BODY[section]<n.m>, SEARCH
 * keys (with ESEARCH RETURN options) and STORE are parsed into typed form.
 *
 * Owner: one per connection; one thread. A command in an event lives until
 * the next imap_parser_feed() or imap_parser_free(). Never logs peer bytes.
 */

/* defaults; the door picks tighter values before login (imap_parser_set_limits) */
#define IMAP_LINE_MAX_PRELOGIN		2048
#define IMAP_LITERAL_MAX_PRELOGIN	1024
#define IMAP_LINE_MAX			65536
#define IMAP_LITERAL_MAX		(64u << 20)
#define IMAP_DEPTH_MAX			16	/* nested parentheses / search keys */
#define IMAP_LIST_MAX			1000	/* elements of one list, arguments, ranges */
#define IMAP_BAD_MAX_PRELOGIN		10
#define IMAP_BAD_MAX			20
#define IMAP_TAG_MAX			64
#define IMAP_SECTION_PARTS_MAX		32	/* BODY[1.2.3...] */
#define IMAP_REPLY_MAX			200

struct imap_parser_limits {
	size_t line_max;	/* bytes of a command outside its literals */
	size_t literal_max;	/* bytes of one literal, and of all literals of a command */
	unsigned depth_max;
	unsigned list_max;
	unsigned bad_max;	/* errors in a row before disconnect */
};

enum imap_arg_type {
	IMAP_ARG_ATOM,		/* includes NIL, numbers, flags, BODY[...]<n.m> */
	IMAP_ARG_QUOTED,
	IMAP_ARG_LITERAL,	/* may hold NUL bytes: use len */
	IMAP_ARG_LIST,
};

struct imap_arg {
	enum imap_arg_type type;
	const char *str;	/* NUL-terminated (not for lists) */
	size_t len;
	const struct imap_arg *list;	/* IMAP_ARG_LIST */
	size_t count;
};

/* sequence set: ranges in the order given; 0 stands for '*' */
struct imap_seqrange {
	uint32_t lo, hi;
};
struct imap_seqset {
	const struct imap_seqrange *r;
	size_t n;
	int saved;		/* "$": the saved search result (RFC 5182) */
};

enum imap_fetch_kind {
	IMAP_FETCH_ENVELOPE, IMAP_FETCH_FLAGS, IMAP_FETCH_INTERNALDATE, IMAP_FETCH_RFC822,
	IMAP_FETCH_RFC822_HEADER, IMAP_FETCH_RFC822_SIZE, IMAP_FETCH_RFC822_TEXT,
	IMAP_FETCH_BODY, IMAP_FETCH_BODYSTRUCTURE, IMAP_FETCH_UID, IMAP_FETCH_SECTION,
};
enum imap_section_text {
	IMAP_SECTION_ALL,		/* BODY[] or BODY[1.2] */
	IMAP_SECTION_HEADER, IMAP_SECTION_HEADER_FIELDS, IMAP_SECTION_HEADER_FIELDS_NOT,
	IMAP_SECTION_TEXT, IMAP_SECTION_MIME,
};
struct imap_fetch_att {
	enum imap_fetch_kind kind;
	/* IMAP_FETCH_SECTION: */
	int peek;
	uint32_t part[IMAP_SECTION_PARTS_MAX];
	size_t nparts;
	enum imap_section_text text;
	const char *const *fields;	/* HEADER.FIELDS[.NOT] */
	size_t nfields;
	int partial;
	uint32_t offset, length;
};

enum imap_search_key {
	IMAP_SK_AND,		/* children: a parenthesised list, or the whole program */
	IMAP_SK_OR, IMAP_SK_NOT,
	IMAP_SK_ALL, IMAP_SK_ANSWERED, IMAP_SK_DELETED, IMAP_SK_DRAFT, IMAP_SK_FLAGGED,
	IMAP_SK_NEW, IMAP_SK_OLD, IMAP_SK_RECENT, IMAP_SK_SEEN, IMAP_SK_UNANSWERED,
	IMAP_SK_UNDELETED, IMAP_SK_UNDRAFT, IMAP_SK_UNFLAGGED, IMAP_SK_UNSEEN,
	IMAP_SK_BCC, IMAP_SK_BODY, IMAP_SK_CC, IMAP_SK_FROM, IMAP_SK_SUBJECT, IMAP_SK_TEXT,
	IMAP_SK_TO, IMAP_SK_HEADER, IMAP_SK_KEYWORD, IMAP_SK_UNKEYWORD,
	IMAP_SK_BEFORE, IMAP_SK_ON, IMAP_SK_SINCE, IMAP_SK_SENTBEFORE, IMAP_SK_SENTON,
	IMAP_SK_SENTSINCE, IMAP_SK_LARGER, IMAP_SK_SMALLER, IMAP_SK_UID, IMAP_SK_SEQSET,
};
struct imap_search {
	enum imap_search_key key;
	const char *str;	/* string keys; HEADER: the field name */
	const char *str2;	/* HEADER: the value */
	uint32_t num;		/* LARGER/SMALLER */
	int year, month, day;	/* date keys (month 1-12) */
	struct imap_seqset set;	/* UID, SEQSET */
	const struct imap_search *child;	/* AND/OR/NOT */
	size_t nchild;
};

/* ESEARCH RETURN options (RFC 4731, RFC 5182 SAVE) */
#define IMAP_SEARCH_RETURN_MIN		0x01u
#define IMAP_SEARCH_RETURN_MAX		0x02u
#define IMAP_SEARCH_RETURN_ALL		0x04u
#define IMAP_SEARCH_RETURN_COUNT	0x08u
#define IMAP_SEARCH_RETURN_SAVE		0x10u
#define IMAP_SEARCH_RETURN_ESEARCH	0x80u	/* RETURN was given (even empty) */

enum imap_store_mode { IMAP_STORE_REPLACE, IMAP_STORE_ADD, IMAP_STORE_REMOVE };

struct imap_cmd {
	const char *tag;
	const char *name;	/* upper case; after UID, the UID'd command */
	int uid;		/* "UID FETCH" etc. */
	const struct imap_arg *args;	/* after the name */
	size_t nargs;
	struct imap_seqset seq;	/* FETCH STORE COPY MOVE, UID EXPUNGE */
	/* FETCH */
	const struct imap_fetch_att *fetch;
	size_t nfetch;
	/* SEARCH */
	const char *charset;	/* NULL: none given */
	const struct imap_search *search;
	unsigned search_return;
	/* STORE */
	enum imap_store_mode store_mode;
	int store_silent;
	const char *const *flags;	/* STORE, APPEND */
	size_t nflags;
	/* APPEND */
	const char *append_date;	/* NULL: none */
	const struct imap_arg *append_msg;
	int append_streamed;	/* the message went out in IMAP_EV_APPEND_DATA events */
};

enum imap_event_type {
	IMAP_EV_NONE,		/* all input consumed, nothing ready */
	IMAP_EV_COMMAND,	/* cmd is a whole command */
	IMAP_EV_CONTINUE,	/* send reply ("+ OK\r\n"): a synchronising literal may come */
	IMAP_EV_REPLY,		/* send reply (tagged BAD/NO); the command is refused */
	IMAP_EV_DISCONNECT,	/* send reply ("* BYE ..."), then close */
	IMAP_EV_IDLE_DONE,	/* the DONE line that ends IDLE */
	/* with imap_parser_set_append_stream(): */
	IMAP_EV_APPEND,		/* an APPEND's message literal begins: cmd has the tag, the
				   mailbox, flags and date so far; append_size, append_sync.
				   The parser waits for imap_parser_append_continue() */
	IMAP_EV_APPEND_DATA,	/* data/datalen: the next piece of the message (points
				   into the fed bytes); the last one is followed by the
				   rest of the line and IMAP_EV_COMMAND (append_streamed) */
};

struct imap_event {
	enum imap_event_type type;
	const struct imap_cmd *cmd;
	char reply[IMAP_REPLY_MAX];	/* with CRLF */
	const char *data;
	size_t datalen;
	uint64_t append_size;
	int append_sync;	/* a synchronising literal: the client waits for "+" */
};

struct imap_parser;

struct imap_parser *imap_parser_new(const struct imap_parser_limits *lim);
void imap_parser_free(struct imap_parser **p);
/* the prelogin or the authenticated defaults */
void imap_parser_limits_default(struct imap_parser_limits *lim_r, int authenticated);
/* new limits from the next command on (after login) */
void imap_parser_set_limits(struct imap_parser *p, const struct imap_parser_limits *lim);
/* IDLE: the next line must be DONE (IMAP_EV_IDLE_DONE), anything else is BAD */
void imap_parser_set_idle(struct imap_parser *p);
/*
 * Stream APPEND's message literal instead of holding it (IMAP_EV_APPEND,
 * IMAP_EV_APPEND_DATA). After IMAP_EV_APPEND the parser consumes nothing
 * until imap_parser_append_continue(): ACCEPT 1 streams the message (the
 * caller sends "+ OK" for a synchronising literal); 0 drops the command
 * without a reply of its own (the caller answered NO): the bytes of a
 * LITERAL+ message and the rest of its line are skipped.
 */
void imap_parser_set_append_stream(struct imap_parser *p, int on);
void imap_parser_append_continue(struct imap_parser *p, int accept);
/*
 * Consume bytes until an event is ready or the input is used up; returns
 * the bytes consumed (the caller feeds the rest after acting on the event).
 * After IMAP_EV_DISCONNECT it consumes nothing more.
 */
size_t imap_parser_feed(struct imap_parser *p, const void *data, size_t len,
    struct imap_event *ev_r);

/* helpers for the protocol layer */
int imap_arg_is_astring(const struct imap_arg *a);	/* atom, quoted or literal */
int imap_arg_is_nil(const struct imap_arg *a);
/* 0 and *r for a well-formed set, -1 otherwise; ranges come from the parser's command memory */
int imap_seqset_parse(struct imap_parser *p, const char *s, struct imap_seqset *r,
    const char **error_r) __attribute__((warn_unused_result));
/* does N (1-based, with MAX for '*') fall in SET? ("$" never does: resolve it first) */
int imap_seqset_contains(const struct imap_seqset *set, uint32_t n, uint32_t max);

#endif
