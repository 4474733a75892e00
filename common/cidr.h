#ifndef PC_CIDR_H
#define PC_CIDR_H
#include <stdint.h>
#include <stddef.h>

struct sockaddr;

/* An IP address in host byte order. IPv4-mapped IPv6 is stored as IPv4. */
struct ipaddr {
	uint8_t family;		/* 4 or 6 */
	uint32_t v4;
	uint64_t hi, lo;	/* IPv6, most significant half first */
};

struct cidr {
	struct ipaddr addr;	/* host bits are zero */
	uint8_t len;		/* 0..32 or 0..128 */
};

#define CIDR_TEXT_MAX 64	/* "ffff:...:ffff/128" fits */

/* "192.0.2.1", "2001:db8::1", "[2001:db8::1]", "::ffff:192.0.2.1" */
int cidr_addr_parse(const char *s, struct ipaddr *addr_r)
    __attribute__((warn_unused_result));
/* from a socket address (AF_INET / AF_INET6); -1 for other families */
int cidr_addr_from_sockaddr(const struct sockaddr *sa, struct ipaddr *addr_r)
    __attribute__((warn_unused_result));
/* canonical text; buf holds CIDR_TEXT_MAX */
const char *cidr_addr_format(const struct ipaddr *addr, char *buf);

/* "192.0.2.0/24", "2001:db8::/32", or a bare address (/32, /128).
 * Host bits set is an error (a typo more often than not). */
int cidr_parse(const char *s, struct cidr *cidr_r, const char **error_r)
    __attribute__((warn_unused_result));
const char *cidr_format(const struct cidr *c, char *buf);
int cidr_contains(const struct cidr *c, const struct ipaddr *addr);

/*
 * Longest-prefix-match table (DXR-style: a direct index on the top 16 bits
 * into a sorted array of non-overlapping ranges). Built once, immutable,
 * lookups are lock-free and allocation-free. Values are uint32 indexes chosen
 * by the caller; CIDRTAB_NONE means no prefix covers the address.
 */
#define CIDRTAB_NONE UINT32_MAX

struct cidrtab;
struct cidrtab_builder;

struct cidrtab_builder *cidrtab_builder_new(void);
/* later additions of an identical prefix win */
void cidrtab_builder_add(struct cidrtab_builder *b, const struct cidr *c, uint32_t value);
/* consumes the builder */
struct cidrtab *cidrtab_build(struct cidrtab_builder **b);
void cidrtab_free(struct cidrtab **t);
uint32_t cidrtab_lookup(const struct cidrtab *t, const struct ipaddr *addr);
size_t cidrtab_memory(const struct cidrtab *t);
size_t cidrtab_count(const struct cidrtab *t);	/* prefixes added */

#endif
