/*
 * libFuzzer target: the Maildir backend's parsers (storage-adapter/
 * mailstore_maildir.h), fed hostile store files. The first byte picks:
 *   0  a file name: mdname_parse, then mdname_set_flags; the renamed name
 *      parses again to the flags and keywords that were set, same base;
 *   1  a dovecot-uidlist: parse; what parses formats, and the text parses
 *      again to the same records (a round trip);
 *   2  dovecot-keywords: parse, format, parse again: the same names.
 * Nothing crashes, nothing reads past the input.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "storage-adapter/mailstore.h"
#include "storage-adapter/mailstore_maildir.h"

static void
names(const char *s, unsigned char seed)
{
	struct mdname a, b;
	char out[MAX_MAILSTORE_FNAME + 1];
	unsigned flags = seed & MAILSTORE_FLAGS_ALL;
	uint32_t kw = (uint32_t)seed * 0x01010101u & 0x3ffffffu;

	if (mdname_parse(s, &a) < 0)
		return;
	if (a.baselen == 0 || a.baselen > strlen(s))
		abort();
	if (mdname_set_flags(s, flags, kw, out, sizeof(out)) < 0)
		return;
	if (mdname_parse(out, &b) < 0 || b.flags != flags || b.keywords != kw)
		abort();
	(void)mdname_sort_cmp(s, out);
}

static void
uidlist(const char *s, size_t n)
{
	struct md_uidlist a, b;
	const char *error;
	char *text;
	size_t len;

	if (md_uidlist_parse(s, n, &a, &error) < 0) {
		md_uidlist_clear(&a);
		return;
	}
	if (a.guid[0] == '\0')
		memcpy(a.guid, "0123456789abcdef0123456789abcdef", 33);
	text = md_uidlist_format(&a, &len);
	if (md_uidlist_parse(text, len, &b, &error) < 0 || b.n != a.n ||
	    b.uidvalidity != a.uidvalidity || b.next_uid != a.next_uid)
		abort();
	for (size_t i = 0; i < a.n; i++)
		if (a.recs[i].uid != b.recs[i].uid || strcmp(a.recs[i].base, b.recs[i].base) != 0)
			abort();
	free(text);
	md_uidlist_clear(&a);
	md_uidlist_clear(&b);
}

static void
keywords(const char *s, size_t n)
{
	char *a[26], *b[26], *text;
	size_t len;

	md_keywords_parse(s, n, a);
	text = md_keywords_format(a, &len);
	md_keywords_parse(text, len, b);
	for (int i = 0; i < 26; i++) {
		if ((a[i] == NULL) != (b[i] == NULL) || (a[i] && strcmp(a[i], b[i]) != 0))
			abort();
		free(a[i]);
		free(b[i]);
	}
	free(text);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s;

	if (size < 2)
		return 0;
	s = malloc(size);
	memcpy(s, data + 2, size - 2);
	s[size - 2] = '\0';
	switch (data[0] % 3) {
	case 0:
		names(s, data[1]);
		break;
	case 1:
		uidlist(s, size - 2);
		break;
	default:
		keywords(s, size - 2);
		break;
	}
	free(s);
	return 0;
}
