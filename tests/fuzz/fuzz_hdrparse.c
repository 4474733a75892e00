/*
 * libFuzzer target: the RFC 5322 header-section parser. Property: feeding
 * the input whole and in two pieces (split at the first byte's value) gives
 * the same fields, the same body offset; nothing crashes, nothing grows.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/hdrparse.h"

struct sum {
	unsigned long long h;
	unsigned n;
};

static int
fold(void *arg, const struct hdr_field *f)
{
	struct sum *s = arg;

	if (f->name_len == 0 || f->value_len > HDR_FIELD_MAX || strlen(f->name) != f->name_len)
		abort();
	for (size_t i = 0; i < f->name_len; i++)
		s->h = s->h * 131 + (unsigned char)f->name[i];
	for (size_t i = 0; i < f->value_len; i++)
		s->h = s->h * 137 + (unsigned char)f->value[i];
	s->n++;
	return 0;
}

static void
run(const uint8_t *d, size_t n, size_t split, struct sum *s, unsigned long long *off_r)
{
	struct hdrparse *hp = hdrparse_new(fold, s);
	int stop;

	hdrparse_reset(hp);
	if (split > n)
		split = n;
	(void)hdrparse_feed(hp, (const char *)d, split, &stop);
	if (!hdrparse_done(hp))
		(void)hdrparse_feed(hp, (const char *)d + split, n - split, &stop);
	(void)hdrparse_finish(hp, &stop);
	*off_r = hdrparse_body_offset(hp);
	if (*off_r > n)
		abort();
	hdrparse_free(&hp);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sum a = { 0, 0 }, b = { 0, 0 };
	unsigned long long oa, ob;

	run(data, size, size, &a, &oa);
	run(data, size, size ? data[0] : 0, &b, &ob);
	if (a.h != b.h || a.n != b.n || oa != ob)
		abort();
	return 0;
}
