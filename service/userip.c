/*
 * userip - sessions per (user, client address) (see userip.h).
 *
 *   userip_new/free       one table per loop
 *   userip_acquire        a login: counted unless the pair is at max
 *   userip_release        its session ended
 *   userip_count          the pair's sessions
 *
 * A chained hash table keyed by SipHash of the user and the address
 * (the process key: names and addresses are the peer's choice), doubled
 * when it holds twice as many pairs as buckets; a pair whose count drops
 * to 0 is freed.
 */
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "service/userip.h"

struct pair {
	struct pair *next;
	uint64_t h;
	struct ipaddr addr;
	unsigned count;
	char user[];
};

struct userip {
	struct pair **b;
	size_t nb, n;
};

struct userip *
userip_new(void)
{
	struct userip *u = xcalloc(1, sizeof(*u));

	u->nb = 64;
	u->b = xcalloc(u->nb, sizeof(*u->b));
	return u;
}

void
userip_free(struct userip **up)
{
	struct userip *u = *up;

	if (u == NULL)
		return;
	for (size_t i = 0; i < u->nb; i++)
		while (u->b[i] != NULL) {
			struct pair *p = u->b[i];

			u->b[i] = p->next;
			free(p);
		}
	free(u->b);
	free(u);
	*up = NULL;
}

static uint64_t
pair_hash(const char *user, const struct ipaddr *a)
{
	uint64_t v[4] = { a->family, a->v4, a->hi, a->lo };

	return hash_str(user) ^ hash_mem(v, sizeof(v));
}

static int
same_addr(const struct ipaddr *a, const struct ipaddr *b)
{
	return a->family == b->family && a->v4 == b->v4 && a->hi == b->hi && a->lo == b->lo;
}

static struct pair **
find(const struct userip *u, const char *user, const struct ipaddr *a, uint64_t h)
{
	struct pair **pp = &u->b[h & (u->nb - 1)];

	for (; *pp != NULL; pp = &(*pp)->next)
		if ((*pp)->h == h && same_addr(&(*pp)->addr, a) && strcmp((*pp)->user, user) == 0)
			return pp;
	return pp;
}

static void
grow(struct userip *u)
{
	size_t nb = u->nb * 2;
	struct pair **b = xcalloc(nb, sizeof(*b));

	for (size_t i = 0; i < u->nb; i++)
		while (u->b[i] != NULL) {
			struct pair *p = u->b[i];

			u->b[i] = p->next;
			p->next = b[p->h & (nb - 1)];
			b[p->h & (nb - 1)] = p;
		}
	free(u->b);
	u->b = b;
	u->nb = nb;
}

int
userip_acquire(struct userip *u, const char *user, const struct ipaddr *addr, unsigned max,
    unsigned *count_r)
{
	uint64_t h = pair_hash(user, addr);
	struct pair **pp = find(u, user, addr, h), *p = *pp;
	size_t l;

	*count_r = p != NULL ? p->count : 0;
	if (max > 0 && *count_r >= max)
		return 0;
	if (p == NULL) {
		l = strlen(user);
		p = xcalloc(1, sizeof(*p) + l + 1);
		memcpy(p->user, user, l + 1);
		p->h = h;
		p->addr = *addr;
		*pp = p;
		if (++u->n > 2 * u->nb)
			grow(u);
	}
	p->count++;
	return 1;
}

void
userip_release(struct userip *u, const char *user, const struct ipaddr *addr)
{
	uint64_t h = pair_hash(user, addr);
	struct pair **pp = find(u, user, addr, h), *p = *pp;

	if (p == NULL || p->count == 0)
		panic("userip: %s released more often than acquired", user);
	if (--p->count > 0)
		return;
	*pp = p->next;
	free(p);
	u->n--;
}

unsigned
userip_count(const struct userip *u, const char *user, const struct ipaddr *addr)
{
	uint64_t h = pair_hash(user, addr);
	struct pair *p = *find(u, user, addr, h);

	return p != NULL ? p->count : 0;
}
