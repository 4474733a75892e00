/*
 * libFuzzer target: the Maildir backend's message string cache file
 * (storage-adapter/mailstore_cache.h, "portcullis.cache"), a file in the
 * user's store and so hostile input. Parse; what parses formats again to
 * the same bytes (the format has one spelling), and every record read
 * stays inside the input. Nothing crashes, nothing reads past the input.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "storage-adapter/mailstore.h"
#include "storage-adapter/mailstore_cache.h"

struct ctx {
	const char *in;
	size_t len;
	char *out;
	size_t olen, cap, n;
};

static int
rec(void *p, const struct mscache_rec *r)
{
	struct ctx *c = p;

	if (r->base < c->in || r->base + r->baselen > c->in + c->len)
		abort();
	for (int i = 0; i < MSCACHE_FIELDS; i++)
		if (r->val[i] != NULL && (r->val[i] < c->in || r->val[i] + r->len[i] > c->in + c->len))
			abort();
	mscache_format_rec(&c->out, &c->olen, &c->cap, r);
	c->n++;
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ctx c = { .in = (const char *)data, .len = size };
	const char *error;

	mscache_format_head(&c.out, &c.olen, &c.cap);
	if (mscache_parse((const char *)data, size, rec, &c, &error) == 0) {
		mscache_format_tail(&c.out, &c.olen, &c.cap, c.n);
		if (c.olen != size || memcmp(c.out, data, size) != 0)
			abort();
	}
	free(c.out);
	return 0;
}
