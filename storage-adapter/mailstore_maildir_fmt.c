/*
 * mailstore_maildir_fmt - the pure parts of the Maildir++ backend, in the
 * formats Dovecot writes (see mailstore_maildir.c for the layout):
 *
 *   mdname_parse()        BASE[:2,FLAGS] -> flags, keyword letters, ,S= ,W=
 *   mdname_set_flags()    a name with new flags, sorted, unknown letters kept
 *   mdname_sort_cmp()     Dovecot's order for new files (UIDs follow it)
 *   mdname_base_cmp()     names equal up to ':'
 *   md_uidlist_parse()    dovecot-uidlist v3 (and v1) -> records; refuses
 *                         what Dovecot calls corrupt, with the reason
 *   md_uidlist_format()   the v3 text
 *   md_keywords_parse()   dovecot-keywords; bad lines skipped
 *   md_keywords_format()
 *
 * Every parser is bounded (MAX_MAILSTORE_* in mailstore.h), takes its input
 * as hostile (tests/fuzz/fuzz_mailstore.c) and touches no file.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/xmalloc.h"
#include "storage-adapter/mailstore.h"
#include "storage-adapter/mailstore_maildir.h"

static _Thread_local char errbuf[256];

static const char *
err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static const char *
err(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(errbuf, sizeof(errbuf), fmt, ap);
	va_end(ap);
	return errbuf;
}

/* ------------------------------------------------------------------ */
/* file names                                                           */

static const char flag_letters[] = "DFRST";
static const unsigned flag_bits[] = {
	MAILSTORE_DRAFT, MAILSTORE_FLAGGED, MAILSTORE_ANSWERED, MAILSTORE_SEEN, MAILSTORE_DELETED
};

static unsigned
flag_of(char c)
{
	const char *p = c ? strchr(flag_letters, c) : NULL;

	return p ? flag_bits[p - flag_letters] : 0;
}

int
mdname_parse(const char *f, struct mdname *r)
{
	size_t n = strnlen(f, MAX_MAILSTORE_FNAME + 1);
	const char *colon, *info;

	if (n == 0 || n > MAX_MAILSTORE_FNAME)
		return -1;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)f[i];

		if (c < 0x20 || c == 0x7f || c == '/')
			return -1;
	}
	memset(r, 0, sizeof(*r));
	colon = memchr(f, ':', n);
	r->baselen = colon ? (size_t)(colon - f) : n;
	if (r->baselen == 0)
		return -1;
	for (size_t i = 0; i + 2 < r->baselen; i++) {
		uint64_t v = 0;
		size_t j, digits = 0;

		if (f[i] != ',' || (f[i + 1] != 'S' && f[i + 1] != 'W') || f[i + 2] != '=')
			continue;
		for (j = i + 3; j < r->baselen && f[j] >= '0' && f[j] <= '9'; j++, digits++) {
			if (digits >= 18)
				break;	/* a size past 10^18 is no size */
			v = v * 10 + (uint64_t)(f[j] - '0');
		}
		if (digits == 0 || (j < r->baselen && f[j] != ','))
			continue;
		if (f[i + 1] == 'S' && !r->has_size) {
			r->size = v;
			r->has_size = 1;
		} else if (f[i + 1] == 'W' && !r->has_vsize) {
			r->vsize = v;
			r->has_vsize = 1;
		}
	}
	info = memrchr(f, ':', n);
	if (info != NULL) {
		r->has_info = 1;
		if (info[1] == '2' && info[2] == ',') {
			for (const char *p = info + 3; *p && *p != ','; p++) {
				if (*p >= 'a' && *p <= 'z')
					r->keywords |= 1u << (*p - 'a');
				else
					r->flags |= flag_of(*p);
			}
		}
	}
	return 0;
}

static int
is_known_letter(char c)
{
	return (c >= 'a' && c <= 'z') || flag_of(c) != 0;
}

int
mdname_set_flags(const char *fname, unsigned flags, uint32_t keywords, char *out, size_t outsz)
{
	size_t n = strnlen(fname, MAX_MAILSTORE_FNAME + 1), o = 0, cap;
	const char *info = n <= MAX_MAILSTORE_FNAME ? memrchr(fname, ':', n) : NULL;
	const char *old = "";
	unsigned left = flags & MAILSTORE_FLAGS_ALL;
	int kw_done = 0;

	if (n == 0 || n > MAX_MAILSTORE_FNAME)
		return -1;
	cap = outsz < MAX_MAILSTORE_FNAME + 1 ? outsz : MAX_MAILSTORE_FNAME + 1;
#define PUT(c) do { if (o + 1 >= cap) return -1; out[o++] = (c); } while (0)
	{
		size_t base = info ? (size_t)(info - fname) : n;

		if (base == 0 || base + 4 > cap)
			return -1;
		memcpy(out, fname, base);
		o = base;
		if (info && info[1] == '2' && info[2] == ',')
			old = info + 3;
	}
	PUT(':');
	PUT('2');
	PUT(',');
	for (;;) {
		int next;

		while (is_known_letter(*old))
			old++;
		next = (*old == '\0' || *old == ',') ? 256 : (unsigned char)*old;
		for (int i = 0; i < 5; i++) {
			if ((left & flag_bits[i]) && next > flag_letters[i]) {
				PUT(flag_letters[i]);
				left &= ~flag_bits[i];
			}
		}
		if (!kw_done && next > 'a') {
			for (int i = 0; i < MAX_MAILSTORE_KEYWORDS; i++)
				if (keywords & (1u << i))
					PUT((char)('a' + i));
			kw_done = 1;
		}
		if (*old == '\0' || *old == ',')
			break;
		PUT(*old);
		old++;
	}
	while (*old)
		PUT(*old++);	/* a second flag set we do not know: kept */
#undef PUT
	out[o] = '\0';
	return 0;
}

static int
fname_usecs(const char *f, long *usecs_r)
{
	if (*f != '.')
		return 0;
	for (f++; *f && *f != '.' && *f != ':';) {
		if (*f++ == 'M') {
			long u = 0;

			for (int k = 0; *f >= '0' && *f <= '9' && k < 9; f++, k++)
				u = u * 10 + (*f - '0');
			*usecs_r = u;
			return 1;
		}
	}
	return 0;
}

int
mdname_base_cmp(const char *a, const char *b)
{
	while (*a == *b && *a != ':' && *a != '\0') {
		a++;
		b++;
	}
	if ((*a == '\0' || *a == ':') && (*b == '\0' || *b == ':'))
		return 0;
	return (unsigned char)*a - (unsigned char)*b;
}

int
mdname_sort_cmp(const char *a, const char *b)
{
	long long sa = 0, sb = 0;
	const char *pa = a, *pb = b;
	long ua, ub;

	for (int k = 0; *pa >= '0' && *pa <= '9'; pa++, k++)
		if (k < 15)
			sa = sa * 10 + (*pa - '0');
	for (int k = 0; *pb >= '0' && *pb <= '9'; pb++, k++)
		if (k < 15)
			sb = sb * 10 + (*pb - '0');
	if (sa != sb)
		return sa < sb ? -1 : 1;
	if (fname_usecs(pa, &ua) && fname_usecs(pb, &ub) && ua != ub)
		return ua < ub ? -1 : 1;
	return mdname_base_cmp(pa, pb);
}

/* ------------------------------------------------------------------ */
/* dovecot-uidlist                                                      */

void
md_uidlist_add(struct md_uidlist *ul, uint32_t uid, const char *base, size_t baselen,
    const char *ext)
{
	if (ul->n == ul->cap) {
		ul->cap = ul->cap ? ul->cap * 2 : 64;
		ul->recs = xreallocarray(ul->recs, ul->cap, sizeof(*ul->recs));
	}
	ul->recs[ul->n].uid = uid;
	ul->recs[ul->n].base = xstrndup(base, baselen);
	ul->recs[ul->n].ext = ext && *ext ? xstrdup(ext) : NULL;
	ul->n++;
}

void
md_uidlist_clear(struct md_uidlist *ul)
{
	for (size_t i = 0; i < ul->n; i++) {
		free(ul->recs[i].base);
		free(ul->recs[i].ext);
	}
	free(ul->recs);
	free(ul->hdr_ext);
	memset(ul, 0, sizeof(*ul));
}

/* a decimal uint32 at *pp; advances; 0 on success */
static int
parse_u32(const char **pp, const char *end, uint32_t *v_r)
{
	const char *p = *pp;
	uint64_t v = 0;

	if (p >= end || *p < '0' || *p > '9')
		return -1;
	for (; p < end && *p >= '0' && *p <= '9'; p++) {
		v = v * 10 + (uint64_t)(*p - '0');
		if (v > UINT32_MAX)
			return -1;
	}
	*v_r = (uint32_t)v;
	*pp = p;
	return 0;
}

static int
is_hex32(const char *p, size_t n)
{
	if (n != 32)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!isxdigit((unsigned char)p[i]))
			return 0;
	return 1;
}

static int
parse_header(const char *p, const char *end, struct md_uidlist *ul, const char **error_r)
{
	if (p >= end || *p < '0' || *p > '9' || p + 1 >= end || p[1] != ' ') {
		*error_r = err("corrupted header (invalid version number)");
		return -1;
	}
	ul->version = (unsigned)(*p - '0');
	p += 2;
	if (ul->version == 1) {
		if (parse_u32(&p, end, &ul->uidvalidity) < 0 || p >= end || *p++ != ' ' ||
		    parse_u32(&p, end, &ul->next_uid) < 0) {
			*error_r = err("corrupted header (version 1)");
			return -1;
		}
	} else if (ul->version == 3) {
		while (p < end) {
			const char *f = p, *fe;
			char key = *p;

			fe = memchr(p, ' ', (size_t)(end - p));
			if (fe == NULL)
				fe = end;
			p = f + 1;
			if (key == 'V' || key == 'N') {
				uint32_t v;

				if (parse_u32(&p, fe, &v) < 0 || p != fe) {
					*error_r = err("invalid header field %c", key);
					return -1;
				}
				*(key == 'V' ? &ul->uidvalidity : &ul->next_uid) = v;
			} else if (key == 'G') {
				if (!is_hex32(p, (size_t)(fe - p))) {
					*error_r = err("invalid mailbox GUID");
					return -1;
				}
				memcpy(ul->guid, p, 32);
				ul->guid[32] = '\0';
			} else if (fe > f) {
				/* another field: kept verbatim */
				size_t old = ul->hdr_ext ? strlen(ul->hdr_ext) : 0;
				size_t add = (size_t)(fe - f);

				ul->hdr_ext = xrealloc(ul->hdr_ext, old + add + 2);
				if (old)
					ul->hdr_ext[old++] = ' ';
				memcpy(ul->hdr_ext + old, f, add);
				ul->hdr_ext[old + add] = '\0';
			}
			p = fe;
			while (p < end && *p == ' ')
				p++;
		}
	} else {
		*error_r = err("unsupported version %u", ul->version);
		return -1;
	}
	if (ul->uidvalidity == 0 || ul->next_uid == 0) {
		*error_r = err("broken header (uidvalidity %u, next uid %u)", ul->uidvalidity,
		    ul->next_uid);
		return -1;
	}
	return 0;
}

static int
fname_ok(const char *p, size_t n)
{
	if (n == 0 || n > MAX_MAILSTORE_FNAME || p[0] == '.')
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];

		if (c < 0x20 || c == 0x7f || c == '/')
			return 0;
	}
	return 1;
}

int
md_uidlist_parse(const char *buf, size_t len, struct md_uidlist *ul, const char **error_r)
{
	const char *p = buf, *end = buf + len;
	uint32_t prev = 0;
	size_t line = 0;

	memset(ul, 0, sizeof(*ul));
	if (len == 0) {
		*error_r = err("empty file");
		return -1;
	}
	if (len > MAX_MAILSTORE_UIDLIST_BYTES) {
		*error_r = err("file too large");
		return -1;
	}
	if (memchr(buf, '\0', len) != NULL) {
		*error_r = err("NUL byte in file");
		return -1;
	}
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;

		line++;
		if ((size_t)(le - p) > MAX_MAILSTORE_UIDLIST_LINE) {
			*error_r = err("line %zu too long", line);
			return -1;
		}
		if (line == 1) {
			if (parse_header(p, le, ul, error_r) < 0)
				return -1;
		} else if (le > p) {
			const char *q = p, *ext = NULL, *exte = NULL, *name;
			uint32_t uid;
			char extbuf[MAX_MAILSTORE_UIDLIST_LINE + 1];

			if (parse_u32(&q, le, &uid) < 0 || uid == 0 || q >= le || *q != ' ') {
				*error_r = err("invalid data at line %zu", line);
				return -1;
			}
			if (uid <= prev) {
				*error_r = err("UIDs not ordered at line %zu (%u <= %u)", line, uid, prev);
				return -1;
			}
			if (uid == UINT32_MAX) {
				*error_r = err("UID too high at line %zu", line);
				return -1;
			}
			if (ul->version == 1 && uid >= ul->next_uid) {
				*error_r = err("UID larger than next UID at line %zu", line);
				return -1;
			}
			while (q < le && *q == ' ')
				q++;
			if (ul->version == 3) {
				ext = q;
				while (q < le && *q != ':') {
					if (*q < 'A' || *q > 'Z') {
						*error_r = err("invalid extended fields at line %zu", line);
						return -1;
					}
					while (q < le && *q != ' ')
						q++;
					exte = q;
					while (q < le && *q == ' ')
						q++;
				}
				if (q >= le) {
					*error_r = err("no file name at line %zu", line);
					return -1;
				}
				q++;	/* ':' */
			}
			name = q;
			{
				/* a name with its ":2,..." (old lists): the base is before it */
				const char *colon = memchr(name, ':', (size_t)(le - name));

				if (colon != NULL)
					le = colon;
			}
			if (!fname_ok(name, (size_t)(le - name))) {
				*error_r = err("broken file name at line %zu", line);
				return -1;
			}
			if (ul->n >= MAX_MAILSTORE_MESSAGES) {
				*error_r = err("too many records");
				return -1;
			}
			extbuf[0] = '\0';
			if (exte && exte > ext) {
				memcpy(extbuf, ext, (size_t)(exte - ext));
				extbuf[exte - ext] = '\0';
			}
			md_uidlist_add(ul, uid, name, (size_t)(le - name), extbuf);
			prev = uid;
			if (uid >= ul->next_uid)
				ul->next_uid = uid + 1;	/* a record saved before its header */
		}
		p = nl ? nl + 1 : end;
	}
	return 0;
}

char *
md_uidlist_format(const struct md_uidlist *ul, size_t *len_r)
{
	size_t cap = 128 + (ul->hdr_ext ? strlen(ul->hdr_ext) : 0), o;
	char *s;

	for (size_t i = 0; i < ul->n; i++)
		cap += 16 + strlen(ul->recs[i].base) + (ul->recs[i].ext ? strlen(ul->recs[i].ext) + 1 : 0);
	s = xmalloc(cap);
	o = (size_t)snprintf(s, cap, "3 V%u N%u G%s%s%s\n", ul->uidvalidity, ul->next_uid, ul->guid,
	    ul->hdr_ext ? " " : "", ul->hdr_ext ? ul->hdr_ext : "");
	for (size_t i = 0; i < ul->n; i++) {
		const struct md_uidrec *r = &ul->recs[i];

		o += (size_t)snprintf(s + o, cap - o, "%u%s%s :%s\n", r->uid, r->ext ? " " : "",
		    r->ext ? r->ext : "", r->base);
	}
	*len_r = o;
	return s;
}

/* ------------------------------------------------------------------ */
/* dovecot-keywords                                                     */

int
md_keyword_is_valid(const char *p, size_t n)
{
	if (n == 0 || n > MAX_MAILSTORE_KEYWORD_LEN)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];

		if (c <= 0x20 || c >= 0x7f || strchr("(){%*\"\\]", c))
			return 0;
	}
	return 1;
}

void
md_keywords_parse(const char *buf, size_t len, char *names[26])
{
	const char *p = buf, *end = buf + len;

	for (int i = 0; i < 26; i++)
		names[i] = NULL;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p)), *le = nl ? nl : end, *q = p;
		uint32_t idx;

		if (parse_u32(&q, le, &idx) == 0 && q < le && *q == ' ' && idx < 26 &&
		    names[idx] == NULL && md_keyword_is_valid(q + 1, (size_t)(le - q - 1))) {
			int dup = 0;

			for (int i = 0; i < 26; i++)
				if (names[i] && strlen(names[i]) == (size_t)(le - q - 1) &&
				    strncasecmp(names[i], q + 1, (size_t)(le - q - 1)) == 0)
					dup = 1;
			if (!dup)
				names[idx] = xstrndup(q + 1, (size_t)(le - q - 1));
		}
		p = nl ? nl + 1 : end;
	}
}

char *
md_keywords_format(char *const names[26], size_t *len_r)
{
	size_t cap = 1, o = 0;
	char *s;

	for (int i = 0; i < 26; i++)
		if (names[i])
			cap += strlen(names[i]) + 4;
	s = xmalloc(cap);
	s[0] = '\0';
	for (int i = 0; i < 26; i++)
		if (names[i])
			o += (size_t)snprintf(s + o, cap - o, "%d %s\n", i, names[i]);
	*len_r = o;
	return s;
}
