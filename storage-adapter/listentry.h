#ifndef PC_LISTENTRY_H
#define PC_LISTENTRY_H
#include <stddef.h>
#include "common/cidr.h"

enum list_kind { LIST_KILL, LIST_ACCEPT };
#define LIST_KINDS 2

enum entry_kind {
	ENTRY_ADDR,		/* IPv4/IPv6 address or CIDR */
	ENTRY_HOST,		/* host:mx.example.com */
	ENTRY_HOST_SUFFIX,	/* host:.example.com */
	ENTRY_SENDER,		/* user@example.com */
	ENTRY_SENDER_DOMAIN,	/* @example.com */
	ENTRY_COUNTRY,		/* country:XX -- the client's country (GeoIP) */
};
#define ENTRY_KINDS 6

enum entry_origin { ORIGIN_ADMIN, ORIGIN_AUTOBAN, ORIGIN_IMPORT, ORIGIN_AUTHBAN };

/* One list entry. Owns key and reason. */
struct list_entry {
	char *key;		/* canonical text, e.g. "192.0.2.0/24", "host:.example.com",
				 * "country:FR" (the only upper-case key) */
	enum entry_kind kind;
	struct cidr cidr;	/* ENTRY_ADDR */
	long long added;	/* unix time, 0 unknown */
	long long expires;	/* unix time, 0 never */
	enum entry_origin origin;
	char *reason;		/* NULL: none */
};

struct entry_vec {
	struct list_entry *v;
	size_t n, cap;
};

const char *list_kind_name(enum list_kind k);	/* "kill", "accept" */
int list_kind_parse(const char *s, enum list_kind *k_r);
const char *listentry_origin_name(enum entry_origin o);
int listentry_origin_parse(const char *s, enum entry_origin *o_r);

/* ENTRY as an admin types it -> canonical key and kind (e->key allocated) */
int listentry_parse_key(const char *text, struct list_entry *e, const char **error_r)
    __attribute__((warn_unused_result));
/* a reason is one line of printable text, at most MAX_REASON_LEN bytes */
int listentry_reason_is_valid(const char *reason);
/* one list-file line: "ENTRY [added=T] [expires=T] [origin=O] [reason=TEXT...]" */
int listentry_parse_line(const char *line, struct list_entry *e, const char **error_r)
    __attribute__((warn_unused_result));
/* the same from len bytes with buf[len] == '\0' (as read_line() and
 * hiredis leave them): a NUL byte inside is an error, never a shorter line */
int listentry_parse_buf(const char *buf, size_t len, struct list_entry *e,
    const char **error_r) __attribute__((warn_unused_result));
/* the line for a list file, without newline; xmalloc'd */
char *listentry_format_line(const struct list_entry *e);
void listentry_clear(struct list_entry *e);
int listentry_is_expired(const struct list_entry *e, long long now);

void entry_vec_push(struct entry_vec *v, struct list_entry *e);	/* takes e's contents */
void entry_vec_clear(struct entry_vec *v);
/* drop every entry whose key is in keys[], then move upd's entries in at
 * the end (O(n)); returns how many entries were dropped */
size_t entry_vec_replace_keys(struct entry_vec *v, char *const *keys, size_t nkeys,
    struct entry_vec *upd);

#endif
