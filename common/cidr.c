/*
 * cidr - IP addresses, CIDR prefixes and a longest-prefix-match table.
 *
 *   cidr_addr_parse()        text -> address (IPv4, IPv6, [IPv6], v4-mapped -> v4)
 *   cidr_addr_from_sockaddr() socket address -> address
 *   cidr_parse()             "net/len" or bare address -> prefix; refuses host bits
 *   cidr_contains()          prefix membership
 *   cidrtab_*                immutable LPM table: build once, look up lock-free
 *
 * The table flattens the prefixes into sorted, non-overlapping ranges (a more
 * specific prefix cuts a hole in the one containing it) and indexes them by
 * the top 16 address bits, as DXR does: a lookup is one index read plus a
 * binary search over the few ranges that share those bits. For a million
 * random IPv4 prefixes that is ~2 ranges and 8 bytes each per prefix.
 *
 * Never allocates during lookups; not for incremental updates (rebuild).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/cidr.h"
#include "common/xmalloc.h"

__extension__ typedef unsigned __int128 u128;

static void
addr_set_v6(struct ipaddr *a, const unsigned char b[16])
{
	static const unsigned char mapped[12] = { 0,0,0,0,0,0,0,0,0,0,0xff,0xff };

	memset(a, 0, sizeof(*a));
	if (memcmp(b, mapped, 12) == 0) {
		a->family = 4;
		a->v4 = (uint32_t)b[12] << 24 | (uint32_t)b[13] << 16 |
		    (uint32_t)b[14] << 8 | b[15];
		return;
	}
	a->family = 6;
	for (int i = 0; i < 8; i++) {
		a->hi = a->hi << 8 | b[i];
		a->lo = a->lo << 8 | b[8 + i];
	}
}

int
cidr_addr_parse(const char *s, struct ipaddr *addr_r)
{
	char buf[INET6_ADDRSTRLEN + 2];
	size_t n = strlen(s);
	struct in_addr in4;
	unsigned char in6[16];

	if (n == 0 || n >= sizeof(buf))
		return -1;
	if (s[0] == '[') {
		if (n < 3 || s[n - 1] != ']')
			return -1;
		memcpy(buf, s + 1, n - 2);
		buf[n - 2] = '\0';
		if (inet_pton(AF_INET6, buf, in6) != 1)
			return -1;
		addr_set_v6(addr_r, in6);
		return 0;
	}
	if (inet_pton(AF_INET, s, &in4) == 1) {
		memset(addr_r, 0, sizeof(*addr_r));
		addr_r->family = 4;
		addr_r->v4 = ntohl(in4.s_addr);
		return 0;
	}
	if (inet_pton(AF_INET6, s, in6) == 1) {
		addr_set_v6(addr_r, in6);
		return 0;
	}
	return -1;
}

int
cidr_addr_from_sockaddr(const struct sockaddr *sa, struct ipaddr *addr_r)
{
	if (sa == NULL)
		return -1;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)sa;

		memset(addr_r, 0, sizeof(*addr_r));
		addr_r->family = 4;
		addr_r->v4 = ntohl(sin->sin_addr.s_addr);
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)(const void *)sa;

		addr_set_v6(addr_r, sin6->sin6_addr.s6_addr);
		return 0;
	}
	return -1;
}

const char *
cidr_addr_format(const struct ipaddr *a, char *buf)
{
	if (a->family == 4) {
		struct in_addr in4 = { .s_addr = htonl(a->v4) };

		inet_ntop(AF_INET, &in4, buf, CIDR_TEXT_MAX);
	} else {
		unsigned char b[16];

		for (int i = 0; i < 8; i++) {
			b[i] = (unsigned char)(a->hi >> (56 - 8 * i));
			b[8 + i] = (unsigned char)(a->lo >> (56 - 8 * i));
		}
		inet_ntop(AF_INET6, b, buf, CIDR_TEXT_MAX);
	}
	return buf;
}

static u128
addr_key(const struct ipaddr *a)
{
	if (a->family == 4)
		return a->v4;
	return (u128)a->hi << 64 | a->lo;
}

static u128
prefix_mask(unsigned bits, unsigned len)
{
	/* ones in the top len of bits */
	u128 all = bits == 128 ? ~(u128)0 : (((u128)1 << bits) - 1);

	if (len == 0)
		return 0;
	return all & ~((((u128)1) << (bits - len)) - 1);
}

int
cidr_parse(const char *s, struct cidr *cidr_r, const char **error_r)
{
	char buf[CIDR_TEXT_MAX + 8];
	const char *slash = strchr(s, '/');
	struct ipaddr a;
	unsigned long len;
	unsigned bits;
	char *end;

	if (strlen(s) >= sizeof(buf)) {
		*error_r = "address too long";
		return -1;
	}
	strcpy(buf, s);
	if (slash != NULL)
		buf[slash - s] = '\0';
	if (cidr_addr_parse(buf, &a) < 0) {
		*error_r = "not an IPv4 or IPv6 address";
		return -1;
	}
	/* "::ffff:192.0.2.0/120" is written in IPv6 lengths; keep it IPv6-sized */
	bits = a.family == 4 ? 32 : 128;
	if (slash == NULL) {
		len = bits;
	} else {
		if (slash[1] < '0' || slash[1] > '9') {
			*error_r = "prefix length is not a number";
			return -1;
		}
		len = strtoul(slash + 1, &end, 10);
		if (*end != '\0' || end - (slash + 1) > 3) {
			*error_r = "prefix length is not a number";
			return -1;
		}
		if (a.family == 4 && strchr(buf, ':') != NULL) {
			/* v4-mapped written with an IPv6 length */
			if (len < 96 || len > 128) {
				*error_r = "prefix length out of range for an IPv4-mapped address";
				return -1;
			}
			len -= 96;
		}
		if (len > bits) {
			*error_r = a.family == 4 ? "prefix length over 32" : "prefix length over 128";
			return -1;
		}
	}
	if ((addr_key(&a) & ~prefix_mask(bits, (unsigned)len) &
	    (bits == 128 ? ~(u128)0 : (((u128)1 << bits) - 1))) != 0) {
		/* name the network the admin most likely meant */
		static _Thread_local char why[CIDR_TEXT_MAX + 64];
		struct cidr net = { .addr = a, .len = (uint8_t)len };
		u128 k = addr_key(&a) & prefix_mask(bits, (unsigned)len);
		char text[CIDR_TEXT_MAX];

		if (a.family == 4) {
			net.addr.v4 = (uint32_t)k;
		} else {
			net.addr.hi = (uint64_t)(k >> 64);
			net.addr.lo = (uint64_t)k;
		}
		snprintf(why, sizeof(why), "host bits set after the prefix length "
		    "(did you mean %s?)", cidr_format(&net, text));
		*error_r = why;
		return -1;
	}
	cidr_r->addr = a;
	cidr_r->len = (uint8_t)len;
	return 0;
}

const char *
cidr_format(const struct cidr *c, char *buf)
{
	unsigned bits = c->addr.family == 4 ? 32 : 128;
	size_t n;

	cidr_addr_format(&c->addr, buf);	/* at most 46 bytes (INET6_ADDRSTRLEN) */
	n = strlen(buf);
	if (c->len != bits)
		snprintf(buf + n, CIDR_TEXT_MAX - n, "/%u", (unsigned)c->len % 1000);
	return buf;
}

int
cidr_contains(const struct cidr *c, const struct ipaddr *addr)
{
	unsigned bits = c->addr.family == 4 ? 32 : 128;

	if (c->addr.family != addr->family)
		return 0;
	return (addr_key(addr) & prefix_mask(bits, c->len)) == addr_key(&c->addr);
}

/* ---- longest-prefix-match table ---- */

struct item {
	u128 start, end;
	uint32_t value;
	uint32_t seq;
	uint8_t len;
};

struct cidrtab_builder {
	struct item *v4, *v6;
	size_t n4, n6, cap4, cap6;
	uint32_t seq;
};

struct range4 {
	uint32_t *start;
	uint32_t *value;
	size_t n;
	uint32_t *index;	/* 65537 */
};

struct range6 {
	u128 *start;
	uint32_t *value;
	size_t n;
	uint32_t *index;	/* 65537 */
};

struct cidrtab {
	struct range4 r4;
	struct range6 r6;
	size_t count;
};

struct cidrtab_builder *
cidrtab_builder_new(void)
{
	return xcalloc(1, sizeof(struct cidrtab_builder));
}

void
cidrtab_builder_add(struct cidrtab_builder *b, const struct cidr *c, uint32_t value)
{
	unsigned bits = c->addr.family == 4 ? 32 : 128;
	u128 start = addr_key(&c->addr);
	u128 hostmask = ~prefix_mask(bits, c->len);
	struct item it;

	if (bits == 32)
		hostmask &= 0xffffffffu;
	it.start = start;
	it.end = start | hostmask;
	it.value = value;
	it.seq = b->seq++;
	it.len = c->len;
	if (bits == 32) {
		if (b->n4 == b->cap4) {
			b->cap4 = b->cap4 ? b->cap4 * 2 : 64;
			b->v4 = xreallocarray(b->v4, b->cap4, sizeof(*b->v4));
		}
		b->v4[b->n4++] = it;
	} else {
		if (b->n6 == b->cap6) {
			b->cap6 = b->cap6 ? b->cap6 * 2 : 64;
			b->v6 = xreallocarray(b->v6, b->cap6, sizeof(*b->v6));
		}
		b->v6[b->n6++] = it;
	}
}

static int
item_cmp(const void *pa, const void *pb)
{
	const struct item *a = pa, *b = pb;

	if (a->start != b->start)
		return a->start < b->start ? -1 : 1;
	if (a->len != b->len)
		return a->len < b->len ? -1 : 1;	/* wider first: it contains */
	return a->seq < b->seq ? -1 : a->seq > b->seq;
}

struct flat {
	u128 *start;
	uint32_t *value;
	size_t n, cap;
};

static void
flat_emit(struct flat *f, u128 pos, uint32_t value)
{
	if (f->n > 0 && f->value[f->n - 1] == value)
		return;		/* same value continues: one range */
	if (f->n > 0 && f->start[f->n - 1] == pos) {
		/* a zero-length stretch is being overwritten */
		f->value[f->n - 1] = value;
		if (f->n > 1 && f->value[f->n - 2] == value)
			f->n--;
		return;
	}
	if (f->n == f->cap) {
		f->cap = f->cap ? f->cap * 2 : 64;
		f->start = xreallocarray(f->start, f->cap, sizeof(*f->start));
		f->value = xreallocarray(f->value, f->cap, sizeof(*f->value));
	}
	f->start[f->n] = pos;
	f->value[f->n] = value;
	f->n++;
}

/* Sweep the sorted prefixes with a stack of open ones; the innermost wins. */
static void
flatten(struct item *it, size_t n, u128 max, struct flat *f)
{
	struct item **stack = xreallocarray(NULL, 130, sizeof(*stack));
	size_t sp = 0;
	u128 pos = 0;
	int done = 0;

	if (n > 0)
		qsort(it, n, sizeof(*it), item_cmp);
	for (size_t i = 0; i < n; i++) {
		u128 s = it[i].start;

		while (sp > 0 && stack[sp - 1]->end < s) {
			struct item *top = stack[--sp];

			if (pos <= top->end) {
				flat_emit(f, pos, top->value);
				pos = top->end + 1;	/* end < s <= max: no wrap */
			}
		}
		if (pos < s) {
			flat_emit(f, pos, sp > 0 ? stack[sp - 1]->value : CIDRTAB_NONE);
			pos = s;
		}
		if (sp > 0 && stack[sp - 1]->start == s &&
		    stack[sp - 1]->len == it[i].len) {
			stack[sp - 1] = &it[i];	/* same prefix again: later wins */
			continue;
		}
		if (sp == 130)	/* nesting is bounded by the prefix lengths */
			abort();
		stack[sp++] = &it[i];
	}
	while (sp > 0) {
		struct item *top = stack[--sp];

		if (!done && pos <= top->end) {
			flat_emit(f, pos, top->value);
			if (top->end == max)
				done = 1;
			else
				pos = top->end + 1;
		}
	}
	if (!done)
		flat_emit(f, pos, CIDRTAB_NONE);
	free(stack);
}

static uint32_t *
build_index(const u128 *start, size_t n, unsigned shift)
{
	uint32_t *index = xreallocarray(NULL, 65537, sizeof(uint32_t));
	size_t i = 0;

	for (uint32_t h = 0; h < 65536; h++) {
		u128 key = (u128)h << shift;

		while (i + 1 < n && start[i + 1] <= key)
			i++;
		index[h] = (uint32_t)i;
	}
	index[65536] = (uint32_t)(n - 1);
	return index;
}

struct cidrtab *
cidrtab_build(struct cidrtab_builder **bp)
{
	struct cidrtab_builder *b = *bp;
	struct cidrtab *t = xcalloc(1, sizeof(*t));
	struct flat f4 = { 0 }, f6 = { 0 };

	t->count = b->n4 + b->n6;
	flatten(b->v4, b->n4, 0xffffffffu, &f4);
	flatten(b->v6, b->n6, ~(u128)0, &f6);

	t->r4.n = f4.n;
	t->r4.start = xreallocarray(NULL, f4.n, sizeof(uint32_t));
	for (size_t i = 0; i < f4.n; i++)
		t->r4.start[i] = (uint32_t)f4.start[i];
	t->r4.value = xreallocarray(f4.value, f4.n, sizeof(uint32_t));
	t->r4.index = build_index(f4.start, f4.n, 16);
	free(f4.start);

	t->r6.n = f6.n;
	t->r6.start = xreallocarray(f6.start, f6.n, sizeof(u128));
	t->r6.value = xreallocarray(f6.value, f6.n, sizeof(uint32_t));
	t->r6.index = build_index(t->r6.start, f6.n, 112);

	free(b->v4);
	free(b->v6);
	free(b);
	*bp = NULL;
	return t;
}

void
cidrtab_free(struct cidrtab **tp)
{
	struct cidrtab *t = *tp;

	if (t == NULL)
		return;
	free(t->r4.start);
	free(t->r4.value);
	free(t->r4.index);
	free(t->r6.start);
	free(t->r6.value);
	free(t->r6.index);
	free(t);
	*tp = NULL;
}

uint32_t
cidrtab_lookup(const struct cidrtab *t, const struct ipaddr *addr)
{
	size_t lo, hi;

	if (addr->family == 4) {
		const struct range4 *r = &t->r4;
		uint32_t k = addr->v4;

		lo = r->index[k >> 16];
		hi = r->index[(k >> 16) + 1];
		while (lo < hi) {
			size_t mid = (lo + hi + 1) / 2;

			if (r->start[mid] <= k)
				lo = mid;
			else
				hi = mid - 1;
		}
		return r->value[lo];
	} else {
		const struct range6 *r = &t->r6;
		u128 k = addr_key(addr);

		lo = r->index[addr->hi >> 48];
		hi = r->index[(addr->hi >> 48) + 1];
		while (lo < hi) {
			size_t mid = (lo + hi + 1) / 2;

			if (r->start[mid] <= k)
				lo = mid;
			else
				hi = mid - 1;
		}
		return r->value[lo];
	}
}

size_t
cidrtab_memory(const struct cidrtab *t)
{
	return sizeof(*t) + t->r4.n * 8 + t->r6.n * (sizeof(u128) + 4) +
	    2 * 65537 * sizeof(uint32_t);
}

size_t
cidrtab_count(const struct cidrtab *t)
{
	return t->count;
}
