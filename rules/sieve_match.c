/*
 * sieve_match.c - comparators (i;octet, i;ascii-casemap, i;ascii-numeric),
 * match types (:is, :contains, :matches with * ? and \ escapes), the
 * relational operators, RFC 5322 address lists and RFC 2047 words.
 *
 *   sv_cmp_eq / sv_cmp_order / sv_contains / sv_glob / sv_rel_*
 *   sv_addr_list()   "A <a@b>, c@d (x), g: e@f;" -> ["a@b", "c@d", "e@f"]
 *   sv_mime_decode() =?utf-8?q?..?= and =?..?b?..?= words -> text
 *
 * :matches is iterative (the last '*' backtracks, never recursion), so a
 * pattern costs at most O(pattern x string) steps, counted in *steps.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "rules/sieve_ast.h"
#include "common/xmalloc.h"

/* i;ascii-casemap folds ASCII letters only (tolower() in the C locale) */
static inline int fold(int comp, unsigned char c)
{
	return comp == CMP_CASEMAP && c >= 'A' && c <= 'Z' ? c | 0x20 : c;
}

/* i;ascii-numeric: the leading digits; none means +infinity */
static int num_cmp(const char *a, size_t al, const char *b, size_t bl)
{
	int ai = !(al > 0 && isdigit((unsigned char)a[0]));
	int bi = !(bl > 0 && isdigit((unsigned char)b[0]));
	if (ai || bi)
		return ai == bi ? 0 : ai ? 1 : -1;
	size_t i = 0, j = 0;
	while (i < al && a[i] == '0') i++;
	while (j < bl && b[j] == '0') j++;
	size_t ae = i, be = j;
	while (ae < al && isdigit((unsigned char)a[ae])) ae++;
	while (be < bl && isdigit((unsigned char)b[be])) be++;
	if (ae - i != be - j)
		return ae - i < be - j ? -1 : 1;
	int r = memcmp(a + i, b + j, ae - i);
	return r < 0 ? -1 : r > 0;
}

int sv_cmp_order(int comp, const char *a, size_t al, const char *b, size_t bl)
{
	if (comp == CMP_NUMERIC)
		return num_cmp(a, al, b, bl);
	size_t n = al < bl ? al : bl;
	for (size_t i = 0; i < n; i++) {
		int x = fold(comp, (unsigned char)a[i]), y = fold(comp, (unsigned char)b[i]);
		if (x != y)
			return x < y ? -1 : 1;
	}
	return al == bl ? 0 : al < bl ? -1 : 1;
}

int sv_cmp_eq(int comp, const char *a, size_t al, const char *b, size_t bl)
{
	if (comp == CMP_NUMERIC)
		return num_cmp(a, al, b, bl) == 0;
	if (al != bl)	/* the folds keep lengths */
		return 0;
	if (comp == CMP_OCTET)
		return memcmp(a, b, al) == 0;
	for (size_t i = 0; i < al; i++)
		if (fold(comp, (unsigned char)a[i]) != fold(comp, (unsigned char)b[i]))
			return 0;
	return 1;
}

/*
 * The candidates (where the first octet matches, in either case) are found
 * with memchr(); the steps counted are what the plain scan counts: one for
 * each position, and the length matched there.
 */
int sv_contains(int comp, const char *h, size_t hl, const char *nd, size_t nl, unsigned long *steps)
{
	if (nl == 0)
		return 1;
	if (nl > hl)
		return 0;
	size_t last = hl - nl, i = 0;
	int f0 = fold(comp, (unsigned char)nd[0]);
	int alt = comp == CMP_CASEMAP && f0 >= 'a' && f0 <= 'z' ? f0 & ~0x20 : -1;
	while (i <= last) {
		const char *c = memchr(h + i, f0, last - i + 1);
		if (alt >= 0) {
			const char *u = memchr(h + i, alt, c != NULL ? (size_t)(c - h) - i :
			    last - i + 1);
			if (u != NULL)
				c = u;
		}
		if (c == NULL) {
			if (steps)
				*steps += last - i + 1;
			return 0;
		}
		size_t at = (size_t)(c - h), j = 1;
		while (j < nl && fold(comp, (unsigned char)h[at + j]) == fold(comp, (unsigned char)nd[j]))
			j++;
		if (steps)
			*steps += (at - i) + j + 1;
		if (j == nl)
			return 1;
		i = at + 1;
	}
	return 0;
}

static size_t u8len(const char *s, size_t left)
{
	unsigned char c = (unsigned char)s[0];
	size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
	return n > left ? left : n;
}

enum { G_LIT, G_ANY, G_STAR };
struct gtok { int t; char c; };

int sv_glob(int comp, const char *pat, size_t pl, const char *s, size_t sl,
    char **caps, unsigned long *steps)
{
	struct gtok *tk = xmalloc((pl + 1) * sizeof(*tk));
	size_t nt = 0;
	for (size_t i = 0; i < pl; i++) {
		if (pat[i] == '\\' && i + 1 < pl) {
			tk[nt].t = G_LIT;
			tk[nt++].c = pat[++i];
		} else if (pat[i] == '*') {
			tk[nt++].t = G_STAR;
		} else if (pat[i] == '?') {
			tk[nt++].t = G_ANY;
		} else {
			tk[nt].t = G_LIT;
			tk[nt++].c = pat[i];
		}
	}
	/* wildcard positions: start/len per token */
	size_t *cs = xcalloc(nt + 1, sizeof(size_t)), *cl = xcalloc(nt + 1, sizeof(size_t));
	size_t ti = 0, si = 0, star_ti = (size_t)-1, star_si = 0;
	int ok = 1;
	while (si < sl) {
		if (steps)
			(*steps)++;
		if (ti < nt && tk[ti].t == G_ANY) {
			size_t n = u8len(s + si, sl - si);
			cs[ti] = si;
			cl[ti] = n;
			si += n;
			ti++;
		} else if (ti < nt && tk[ti].t == G_LIT &&
		    fold(comp, (unsigned char)tk[ti].c) == fold(comp, (unsigned char)s[si])) {
			ti++;
			si++;
		} else if (ti < nt && tk[ti].t == G_STAR) {
			star_ti = ti;
			star_si = si;
			cs[ti] = si;
			cl[ti] = 0;
			ti++;
		} else if (star_ti != (size_t)-1) {
			star_si += u8len(s + star_si, sl - star_si);
			cl[star_ti] = star_si - cs[star_ti];
			ti = star_ti + 1;
			si = star_si;
		} else {
			ok = 0;
			break;
		}
	}
	if (ok) {
		while (ti < nt && tk[ti].t == G_STAR) {
			cs[ti] = si;
			cl[ti] = 0;
			ti++;
		}
		ok = ti == nt;
	}
	if (ok && caps) {
		for (int k = 0; k < SV_NCAPS; k++) {
			free(caps[k]);
			caps[k] = NULL;
		}
		caps[0] = xstrndup(s, sl);
		int k = 1;
		for (size_t i = 0; i < nt && k < SV_NCAPS; i++)
			if (tk[i].t != G_LIT)
				caps[k++] = xstrndup(s + cs[i], cl[i]);
	}
	free(tk);
	free(cs);
	free(cl);
	return ok;
}

uint64_t sv_hname_bit(const char *name, size_t len)
{
	uint32_t h = 2166136261u;	/* FNV-1a */
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];
		if (c >= 0x80)
			return ~(uint64_t)0;
		if (c >= 'A' && c <= 'Z')
			c |= 0x20;
		h = (h ^ c) * 16777619u;
	}
	return (uint64_t)1 << ((h ^ (h >> 16)) & 63);
}

int sv_rel_parse(const char *s)
{
	static const char *const ops[] = { "gt", "ge", "lt", "le", "eq", "ne" };
	for (int i = 0; i < 6; i++)
		if (strcasecmp(s, ops[i]) == 0)
			return i;
	return -1;
}

int sv_rel_holds(int rel, int ord)
{
	switch (rel) {
	case REL_GT: return ord > 0;
	case REL_GE: return ord >= 0;
	case REL_LT: return ord < 0;
	case REL_LE: return ord <= 0;
	case REL_EQ: return ord == 0;
	default: return ord != 0;
	}
}

/* ---- addresses ---- */

static void skip_cfws(const char **pp)
{
	const char *p = *pp;
	for (;;) {
		while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
			p++;
		if (*p != '(')
			break;
		int d = 0;
		do {
			if (*p == '\\' && p[1]) p++;
			else if (*p == '(') d++;
			else if (*p == ')') d--;
			p++;
		} while (*p && d > 0);
	}
	*pp = p;
}

/* one addr-spec or a display name word run; appends the bare text */
static char *read_phrase(const char **pp, const char *stops)
{
	const char *p = *pp;
	size_t cap = strlen(p) + 1, n = 0;
	char *o = xmalloc(cap);
	for (;;) {
		skip_cfws(&p);
		if (*p == '\0' || strchr(stops, *p))
			break;
		if (*p == '"') {
			p++;
			while (*p && *p != '"') {
				if (*p == '\\' && p[1])
					p++;
				o[n++] = *p++;
			}
			if (*p == '"')
				p++;
			continue;
		}
		while (*p && !strchr(stops, *p) && *p != '(' && *p != '"' && *p != ' ' &&
		    *p != '\t' && *p != '\r' && *p != '\n')
			o[n++] = *p++;
		/* keep words of a dotted local part together; drop folding spaces */
	}
	o[n] = '\0';
	*pp = p;
	return xrealloc(o, n + 1);	/* never hold the rest of the header per address */
}

char **sv_addr_list(const char *v, size_t *n_r)
{
	char **out = NULL;
	size_t n = 0;
	const char *p = v;
	while (*p) {
		skip_cfws(&p);
		if (*p == ',') {
			p++;
			continue;
		}
		if (*p == '\0')
			break;
		char *first = read_phrase(&p, ",<:;");
		if (*p == ':') {
			/* group: name: a, b; */
			free(first);
			p++;
			continue;
		}
		if (*p == '<') {
			free(first);
			p++;
			skip_cfws(&p);
			if (*p == '@') {	/* obsolete route */
				while (*p && *p != ':' && *p != '>')
					p++;
				if (*p == ':')
					p++;
			}
			char *a = read_phrase(&p, ">,");
			if (*p == '>')
				p++;
			out = xreallocarray(out, n + 1, sizeof(char *));
			out[n++] = a;
			while (*p && *p != ',' && *p != ';')
				p++;
		} else {
			if (*first) {
				out = xreallocarray(out, n + 1, sizeof(char *));
				out[n++] = first;
			} else {
				free(first);
			}
		}
		if (*p == ';')
			p++;
		if (n >= SIEVE_MAX_LIST)
			break;
	}
	*n_r = n;
	return out;
}

int sv_addr_split(const char *a, char **local_r, char **domain_r)
{
	const char *at = strrchr(a, '@');
	if (at == NULL || at == a || at[1] == '\0') {
		*local_r = NULL;
		*domain_r = NULL;
		return -1;
	}
	*local_r = xstrndup(a, (size_t)(at - a));
	*domain_r = xstrdup(at + 1);
	return 0;
}

/* ---- RFC 2047 ---- */

static int b64v(int c)
{
	if (c >= 'A' && c <= 'Z') return c - 'A';
	if (c >= 'a' && c <= 'z') return c - 'a' + 26;
	if (c >= '0' && c <= '9') return c - '0' + 52;
	if (c == '+') return 62;
	if (c == '/') return 63;
	return -1;
}

static int hexv(int c)
{
	if (c >= '0' && c <= '9') return c - '0';
	c = tolower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* decode one word at p ("=?cs?e?text?="); 0 and *end_r past it, or -1 */
static int decode_word(const char *p, char **o, const char **end_r)
{
	const char *q = strchr(p + 2, '?');
	if (!q || (q[1] != 'q' && q[1] != 'Q' && q[1] != 'b' && q[1] != 'B') || q[2] != '?')
		return -1;
	int b = q[1] == 'b' || q[1] == 'B';
	const char *t = q + 3, *e = strstr(t, "?=");
	if (!e)
		return -1;
	char *w = *o;
	if (b) {
		unsigned acc = 0;
		int bits = 0;
		for (const char *x = t; x < e; x++) {
			int v = b64v((unsigned char)*x);
			if (v < 0)
				continue;
			acc = (acc << 6) | (unsigned)v;
			bits += 6;
			if (bits >= 8) {
				bits -= 8;
				*w++ = (char)((acc >> bits) & 0xff);
			}
		}
	} else {
		for (const char *x = t; x < e; x++) {
			if (*x == '_')
				*w++ = ' ';
			else if (*x == '=' && x + 2 < e + 1 && hexv((unsigned char)x[1]) >= 0 &&
			    hexv((unsigned char)x[2]) >= 0) {
				*w++ = (char)(hexv((unsigned char)x[1]) * 16 + hexv((unsigned char)x[2]));
				x += 2;
			} else
				*w++ = *x;
		}
	}
	*o = w;
	*end_r = e + 2;
	return 0;
}

char *sv_mime_decode(const char *v)
{
	if (strstr(v, "=?") == NULL)
		return xstrdup(v);
	char *out = xmalloc(strlen(v) + 1), *o = out;
	const char *p = v;
	int prev_word = 0;
	while (*p) {
		if (p[0] == '=' && p[1] == '?') {
			const char *end;
			char *save = o;
			if (decode_word(p, &o, &end) == 0) {
				p = end;
				prev_word = 1;
				continue;
			}
			o = save;
		}
		if (prev_word && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) {
			const char *q = p;
			while (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\n')
				q++;
			if (q[0] == '=' && q[1] == '?') {
				p = q;
				continue;
			}
		}
		prev_word = 0;
		*o++ = *p++;
	}
	*o = '\0';
	return out;
}

int sv_utf8_valid(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	while (*p) {
		if (*p < 0x80) {
			p++;
			continue;
		}
		int n = (*p >> 5) == 6 ? 1 : (*p >> 4) == 14 ? 2 : (*p >> 3) == 30 ? 3 : -1;
		if (n < 0 || *p == 0xc0 || *p == 0xc1 || *p > 0xf4)
			return 0;
		p++;
		for (int i = 0; i < n; i++, p++)
			if ((*p & 0xc0) != 0x80)
				return 0;
	}
	return 1;
}
