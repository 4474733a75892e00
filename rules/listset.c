/*
 * listset - a compiled kill or accept list.
 *
 *   listset_build()          entries -> lookup structures (expired ones dropped)
 *   listset_match_client()   address (longest prefix), then host name (exact,
 *                            then each parent domain for host:.suffix entries)
 *   listset_match_sender()   user@domain, then @domain
 *   listset_match_country()  country:XX (the client's country, from GeoIP)
 *
 * Compact on purpose (a kill list can hold millions of CIDRs): per entry a
 * 16-byte record, its text in one string pool, and 4-byte slots in the
 * tables. Lookups never allocate and never lock. An entry that expires after
 * the build stops matching at once (each hit checks its expiry); the owner
 * rebuilds at listset_next_expiry() so a wider prefix under it takes over.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/xmalloc.h"
#include "rules/listset.h"

#define NOREASON UINT32_MAX

struct meta {
	uint32_t key_off;
	uint32_t reason_off;
	uint32_t expires;	/* unix time, 0 never (fits until 2106) */
	uint8_t origin;
	uint8_t kind;
};

struct nameset {
	uint32_t *slot;		/* meta index or UINT32_MAX */
	uint32_t mask;
	uint8_t skip;		/* bytes of the key text before the hashed part */
};

struct listset {
	struct meta *meta;
	size_t n;
	char *pool;
	size_t pool_len;
	struct cidrtab *addrs;
	struct nameset host, suffix, sender, domain, country;
	long long next_expiry;
	unsigned refs;
};

static void
nameset_init(struct nameset *ns, size_t n, uint8_t skip)
{
	size_t cap = 16;

	while (cap < n * 2)
		cap <<= 1;
	ns->slot = xmalloc(cap * sizeof(uint32_t));
	memset(ns->slot, 0xff, cap * sizeof(uint32_t));
	ns->mask = (uint32_t)(cap - 1);
	ns->skip = skip;
}

static void
nameset_insert(struct listset *l, struct nameset *ns, uint32_t idx)
{
	const char *k = l->pool + l->meta[idx].key_off + ns->skip;
	uint32_t i = (uint32_t)hash_mem(k, strlen(k)) & ns->mask;

	while (ns->slot[i] != UINT32_MAX) {
		const char *o = l->pool + l->meta[ns->slot[i]].key_off + ns->skip;

		if (strcmp(o, k) == 0) {
			ns->slot[i] = idx;	/* duplicate key: the later entry wins */
			return;
		}
		i = (i + 1) & ns->mask;
	}
	ns->slot[i] = idx;
}

static uint32_t
nameset_find(const struct listset *l, const struct nameset *ns, const char *k, size_t n)
{
	uint32_t i = (uint32_t)hash_mem(k, n) & ns->mask;

	while (ns->slot[i] != UINT32_MAX) {
		const char *o = l->pool + l->meta[ns->slot[i]].key_off + ns->skip;

		if (strncmp(o, k, n) == 0 && o[n] == '\0')
			return ns->slot[i];
		i = (i + 1) & ns->mask;
	}
	return UINT32_MAX;
}

static uint32_t
pool_add(struct listset *l, size_t *cap, const char *s)
{
	size_t n = strlen(s) + 1;
	uint32_t off;

	if (l->pool_len + n > *cap) {
		while (l->pool_len + n > *cap)
			*cap *= 2;
		l->pool = xrealloc(l->pool, *cap);
	}
	off = (uint32_t)l->pool_len;
	memcpy(l->pool + off, s, n);
	l->pool_len += n;
	return off;
}

struct listset *
listset_build(const struct entry_vec *v, long long now)
{
	struct listset *l = xcalloc(1, sizeof(*l));
	struct cidrtab_builder *b = cidrtab_builder_new();
	size_t cap = 4096, nk[ENTRY_KINDS] = { 0 };

	l->refs = 1;
	l->meta = xreallocarray(NULL, v->n ? v->n : 1, sizeof(struct meta));
	l->pool = xmalloc(cap);
	for (size_t i = 0; i < v->n; i++) {
		const struct list_entry *e = &v->v[i];
		struct meta *m;

		if (e->expires != 0 && e->expires <= now)
			continue;
		if (e->expires != 0 && (l->next_expiry == 0 || e->expires < l->next_expiry))
			l->next_expiry = e->expires;
		m = &l->meta[l->n];
		m->key_off = pool_add(l, &cap, e->key);
		m->reason_off = e->reason ? pool_add(l, &cap, e->reason) : NOREASON;
		m->expires = e->expires > (long long)UINT32_MAX ? UINT32_MAX : (uint32_t)e->expires;
		m->origin = (uint8_t)e->origin;
		m->kind = (uint8_t)e->kind;
		nk[e->kind]++;
		if (e->kind == ENTRY_ADDR)
			cidrtab_builder_add(b, &e->cidr, (uint32_t)l->n);
		l->n++;
	}
	l->pool = xrealloc(l->pool, l->pool_len ? l->pool_len : 1);
	l->meta = xreallocarray(l->meta, l->n ? l->n : 1, sizeof(struct meta));
	l->addrs = cidrtab_build(&b);
	nameset_init(&l->host, nk[ENTRY_HOST], 5);	/* "host:" */
	nameset_init(&l->suffix, nk[ENTRY_HOST_SUFFIX], 5);	/* "host:" keeps the dot */
	nameset_init(&l->sender, nk[ENTRY_SENDER], 0);
	nameset_init(&l->domain, nk[ENTRY_SENDER_DOMAIN], 0);
	nameset_init(&l->country, nk[ENTRY_COUNTRY], 8);	/* "country:" */
	for (size_t i = 0; i < l->n; i++) {
		switch (l->meta[i].kind) {
		case ENTRY_HOST: nameset_insert(l, &l->host, (uint32_t)i); break;
		case ENTRY_HOST_SUFFIX: nameset_insert(l, &l->suffix, (uint32_t)i); break;
		case ENTRY_SENDER: nameset_insert(l, &l->sender, (uint32_t)i); break;
		case ENTRY_SENDER_DOMAIN: nameset_insert(l, &l->domain, (uint32_t)i); break;
		case ENTRY_COUNTRY: nameset_insert(l, &l->country, (uint32_t)i); break;
		default: break;
		}
	}
	return l;
}

struct listset *
listset_ref(struct listset *l)
{
	l->refs++;
	return l;
}

void
listset_free(struct listset **lp)
{
	struct listset *l = *lp;

	if (l == NULL)
		return;
	*lp = NULL;
	if (--l->refs > 0)
		return;
	cidrtab_free(&l->addrs);
	free(l->host.slot);
	free(l->suffix.slot);
	free(l->sender.slot);
	free(l->domain.slot);
	free(l->country.slot);
	free(l->meta);
	free(l->pool);
	free(l);
	*lp = NULL;
}

static int
hit(const struct listset *l, uint32_t idx, long long now, struct listset_match *m_r)
{
	const struct meta *m;

	if (idx == UINT32_MAX)
		return 0;
	m = &l->meta[idx];
	if (m->expires != 0 && (long long)m->expires <= now)
		return 0;
	m_r->kind = (enum entry_kind)m->kind;
	m_r->key = l->pool + m->key_off;
	m_r->reason = m->reason_off == NOREASON ? NULL : l->pool + m->reason_off;
	m_r->origin = (enum entry_origin)m->origin;
	m_r->expires = m->expires;
	return 1;
}

int
listset_match_client(const struct listset *l, const struct ipaddr *addr,
    const char *hostname, long long now, struct listset_match *m_r)
{
	char name[256];
	size_t n;

	if (addr != NULL && hit(l, cidrtab_lookup(l->addrs, addr), now, m_r))
		return 1;
	if (hostname == NULL || *hostname == '\0')
		return 0;
	n = strlen(hostname);
	if (n >= sizeof(name))
		return 0;
	for (size_t i = 0; i < n; i++)
		name[i] = (char)tolower((unsigned char)hostname[i]);
	if (n > 1 && name[n - 1] == '.')
		n--;
	name[n] = '\0';
	if (hit(l, nameset_find(l, &l->host, name, n), now, m_r))
		return 1;
	/* host:.example.com matches a.example.com and a.b.example.com */
	for (size_t i = 0; i < n; i++)
		if (name[i] == '.' &&
		    hit(l, nameset_find(l, &l->suffix, name + i, n - i), now, m_r))
			return 1;
	return 0;
}

int
listset_match_sender(const struct listset *l, const struct mailaddr *sender,
    long long now, struct listset_match *m_r)
{
	char key[2 * MAILADDR_PART_MAX + 2];
	const char *at;

	if (sender->is_null || sender->domain[0] == '\0')
		return 0;
	mailaddr_key(sender, key);
	if (hit(l, nameset_find(l, &l->sender, key, strlen(key)), now, m_r))
		return 1;
	at = strrchr(key, '@');
	return at != NULL && hit(l, nameset_find(l, &l->domain, at, strlen(at)), now, m_r);
}

int
listset_match_country(const struct listset *l, const char *country, long long now,
    struct listset_match *m_r)
{
	if (country == NULL || country[0] == '\0')
		return 0;
	return hit(l, nameset_find(l, &l->country, country, strlen(country)), now, m_r);
}

size_t
listset_count(const struct listset *l)
{
	return l->n;
}

size_t
listset_memory(const struct listset *l)
{
	return sizeof(*l) + l->n * sizeof(struct meta) + l->pool_len +
	    cidrtab_memory(l->addrs) +
	    ((size_t)l->host.mask + l->suffix.mask + l->sender.mask + l->domain.mask +
	    l->country.mask + 5) * 4;
}

long long
listset_next_expiry(const struct listset *l)
{
	return l->next_expiry;
}
