/*
 * redis_schema - list entries <-> Redis keys and hash fields.
 *
 *   redis_schema_key()        kind + entry -> key name
 *   redis_schema_split_key()  key name -> kind + entry
 *   redis_schema_decode()     hash fields + EXPIRETIME -> entry (validated)
 *
 * Redis data is input: names and values are checked as strictly as a list
 * file's. Unknown fields are an admin's notes and are ignored.
 */
#include <stdlib.h>
#include <string.h>

#include "common/xmalloc.h"
#include "storage-adapter/redis_schema.h"

char *
redis_schema_key(const char *prefix, enum list_kind k, const char *entry)
{
	return xasprintf("%s%s:%s", prefix, list_kind_name(k), entry);
}

int
redis_schema_split_key(const char *prefix, const char *rkey, enum list_kind *k_r,
    const char **entry_r)
{
	size_t pl = strlen(prefix);
	const char *rest, *colon;
	char kind[16];

	if (strncmp(rkey, prefix, pl) != 0)
		return -1;
	rest = rkey + pl;
	colon = strchr(rest, ':');
	if (colon == NULL || (size_t)(colon - rest) >= sizeof(kind))
		return -1;
	memcpy(kind, rest, (size_t)(colon - rest));
	kind[colon - rest] = '\0';
	if (list_kind_parse(kind, k_r) < 0)
		return -1;
	*entry_r = colon + 1;
	return 0;
}

static int
field_is(const char *name, size_t len, const char *want)
{
	return len == strlen(want) && memcmp(name, want, len) == 0;
}

int
redis_schema_decode(const char *entry, const char *const *fv, const size_t *fvlen,
    size_t nfv, long long expiretime, long long offset, struct list_entry *e,
    const char **error_r)
{
	char buf[32];

	if (listentry_parse_key(entry, e, error_r) < 0)
		return -1;
	for (size_t i = 0; i + 1 < nfv; i += 2) {
		const char *f = fv[i], *v = fv[i + 1];
		size_t fl = fvlen[i], vl = fvlen[i + 1];

		if (field_is(f, fl, "added")) {
			char *end;
			long long t;

			if (vl == 0 || vl >= sizeof(buf))
				goto bad_added;
			memcpy(buf, v, vl);
			buf[vl] = '\0';
			t = strtoll(buf, &end, 10);
			if (*end != '\0' || t < 0 || buf[0] < '0' || buf[0] > '9')
				goto bad_added;
			e->added = t;
		} else if (field_is(f, fl, "origin")) {
			if (vl >= sizeof(buf))
				goto bad_origin;
			memcpy(buf, v, vl);
			buf[vl] = '\0';
			if (listentry_origin_parse(buf, &e->origin) < 0)
				goto bad_origin;
		} else if (field_is(f, fl, "reason")) {
			char *r = xstrndup(v, vl);

			if (strlen(r) != vl || !listentry_reason_is_valid(r)) {
				free(r);
				*error_r = "field reason: control characters or longer than 200 bytes";
				goto bad;
			}
			free(e->reason);
			e->reason = vl ? r : NULL;
			if (!vl)
				free(r);
		}
	}
	e->expires = expiretime > 0 ? expiretime - offset : 0;	/* Redis's clock -> ours */
	return 0;
bad_added:
	*error_r = "field added: not a unix time";
	goto bad;
bad_origin:
	*error_r = "field origin: not admin, auto-ban, auth-ban or import";
bad:
	listentry_clear(e);
	return -1;
}

long long
redis_schema_clock_offset(long long their_s, long long their_us, long long t0_s, long t0_ns,
    long long t1_s, long t1_ns)
{
	long long theirs, ours, d;

	/* a reply no clock gives (garbage from the peer): no offset, and no
	 * overflow on the way */
	if (their_s < 0 || their_s > REDIS_CLOCK_MAX_S || their_us < 0 || their_us >= 1000000 ||
	    t0_s < 0 || t0_s > REDIS_CLOCK_MAX_S || t1_s < 0 || t1_s > REDIS_CLOCK_MAX_S)
		return 0;
	theirs = their_s * 1000000LL + their_us;
	ours = (t0_s + t1_s) * 500000LL + ((long long)t0_ns + (long long)t1_ns) / 2000;
	d = theirs - ours;

	return (d >= 0 ? d + 500000 : d - 500000) / 1000000;
}
