/*
 * imap_bodystructure: the ENVELOPE and BODYSTRUCTURE / BODY writers of
 * imap_mime (see imap_mime.h), moved out of imap_mime.c unchanged.
 *
 *   imap_mime_envelope         ENVELOPE of a scanned message
 *   imap_mime_bodystructure    BODYSTRUCTURE (extensible) or BODY
 *
 * Works on the parts imap_mime.c's scan found (imap_mime_int.h), with the
 * header and address tokenisers imap_mime.c lends; writes IMAP strings as
 * Dovecot 2.3 does, byte for byte. Never touches the file beyond the
 * mapping, never logs message bytes; one object, one thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/xmalloc.h"
#include "pop-imap-proxy/imap_mime.h"
#include "pop-imap-proxy/imap_mime_int.h"

/* ---- IMAP strings, as Dovecot writes them ---- */

static void
imap_literal(struct str *s, const char *src)
{
	str_printf(s, "{%zu}\r\n", strlen(src));
	str_adds(s, src);
}

static void
imap_quoted(struct str *s, const char *src)
{
	str_addc(s, '"');
	for (; *src != '\0'; src++) {
		unsigned char c = (unsigned char)*src;
		if (c == '\r' || c == '\n' || c >= 0x80)
			continue;
		if (c == '"' || c == '\\')
			str_addc(s, '\\');
		str_addc(s, (char)c);
	}
	str_addc(s, '"');
}

static void
imap_nstring(struct str *s, const char *src)
{
	unsigned escapes = 0;

	if (src == NULL) {
		str_adds(s, "NIL");
		return;
	}
	for (const char *p = src; *p != '\0'; p++) {
		unsigned char c = (unsigned char)*p;
		if (c == '"' || c == '\\') {
			if (escapes++ < 4)
				continue;
			imap_literal(s, src);
			return;
		}
		if (c == '\r' || c == '\n' || c >= 0x80) {
			imap_literal(s, src);
			return;
		}
	}
	imap_quoted(s, src);
}

static void
imap_nstring_nolf(struct str *s, const char *src)
{
	if (src == NULL || strpbrk(src, "\r\n") == NULL) {
		imap_nstring(s, src);
		return;
	}
	struct str t = { 0 };
	for (size_t i = 0; src[i] != '\0'; i++) {
		if (src[i] != '\r' && src[i] != '\n')
			str_addc(&t, src[i]);
		else if (src[i + 1] != ' ' && src[i + 1] != '\t' && src[i + 1] != '\r' &&
		    src[i + 1] != '\n' && src[i + 1] != '\0')
			str_addc(&t, ' ');
	}
	imap_nstring(s, str_c(&t));
	str_free(&t);
}

/* whitespace runs become one space, none at the ends; 8-bit -> literal */
static void
imap_string_for_humans(struct str *s, const unsigned char *src, size_t size)
{
	size_t i, remove = 0;
	int ws_prefix = 1, last_lwsp = 1, modify = 0;

	for (i = 0; i < size; i++) {
		switch (src[i]) {
		case 0:
			last_lwsp = 0;
			modify = 1;
			break;
		case '\r':
		case '\n':
		case '\t':
			modify = 1;
			/* fall through */
		case ' ':
			if (last_lwsp) {
				modify = 1;
				remove++;
			}
			last_lwsp = 1;
			break;
		case '"':
		case '\\':
			modify = 1;
			last_lwsp = 0;
			break;
		default:
			if (src[i] & 0x80)
				modify = 1;
			last_lwsp = 0;
			break;
		}
		if (!last_lwsp)
			ws_prefix = 0;
	}
	if (last_lwsp && i > 0 && !ws_prefix) {
		modify = 1;
		remove++;
	}
	if (!modify) {
		str_addc(s, '"');
		str_add(s, src, size);
		str_addc(s, '"');
		return;
	}
	if (size == remove) {
		str_adds(s, "\"\"");
		return;
	}
	str_printf(s, "{%zu}\r\n", size - remove);
	size_t start = s->len;
	last_lwsp = 1;
	ws_prefix = 1;
	for (i = 0; i < size; i++) {
		switch (src[i]) {
		case 0:
			str_addc(s, (char)0x80);
			last_lwsp = 0;
			break;
		case '\r':
		case '\n':
		case '\t':
		case ' ':
			if (!last_lwsp)
				str_addc(s, ' ');
			last_lwsp = 1;
			break;
		default:
			last_lwsp = 0;
			str_addc(s, (char)src[i]);
			break;
		}
		if (!last_lwsp)
			ws_prefix = 0;
	}
	if (last_lwsp && i > 0 && !ws_prefix)
		str_trunc(s, s->len - 1);
	(void)start;
}

/* ---- ENVELOPE ---- */

struct envelope {
	const char *date, *subject, *in_reply_to, *message_id;
	struct addr *from, *sender, *reply_to, *to, *cc, *bcc;
	/* where each list ends and how long it is (headers repeat: no rescans) */
	struct addr **tail[6];
	unsigned count[6];
};

static void
envelope_add(struct pool *pl, struct envelope *e, const struct hdr *h)
{
	static const char *const names[] = {
		"Date", "Subject", "From", "Sender", "Reply-To", "To", "Cc", "Bcc",
		"In-Reply-To", "Message-ID",
	};
	struct addr **ap = NULL;
	const char **sp = NULL;
	size_t i;
	int li = -1;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (hdr_is(h, names[i]))
			break;
	switch (i) {
	case 0: sp = &e->date; break;
	case 1: sp = &e->subject; break;
	case 2: ap = &e->from; li = 0; break;
	case 3: ap = &e->sender; li = 1; break;
	case 4: ap = &e->reply_to; li = 2; break;
	case 5: ap = &e->to; li = 3; break;
	case 6: ap = &e->cc; li = 4; break;
	case 7: ap = &e->bcc; li = 5; break;
	case 8: sp = &e->in_reply_to; break;
	case 9: sp = &e->message_id; break;
	default: return;
	}
	if (ap != NULL) {
		/* repeated headers add to the list (as Dovecot merges them), up
		   to ADDR_MAX addresses in all: bounded memory */
		if (e->count[li] >= ADDR_MAX)
			return;
		struct addr *a = addr_parse(pl, (const unsigned char *)h->value.p, h->value.len);
		if (e->tail[li] != NULL)
			ap = e->tail[li];
		while (*ap != NULL)
			ap = &(*ap)->next;
		*ap = a;
		for (; *ap != NULL; ap = &(*ap)->next)
			e->count[li]++;
		e->tail[li] = ap;
	} else {
		*sp = pool_hdrdup(pl, (const unsigned char *)h->value.p, h->value.len);
	}
}

static void
write_addrs(struct str *s, const struct addr *a)
{
	if (a == NULL) {
		str_adds(s, "NIL");
		return;
	}
	str_addc(s, '(');
	for (; a != NULL; a = a->next) {
		str_addc(s, '(');
		if (a->name == NULL)
			str_adds(s, "NIL");
		else
			imap_string_for_humans(s, (const unsigned char *)a->name, strlen(a->name));
		str_addc(s, ' ');
		imap_nstring(s, a->route);
		str_addc(s, ' ');
		imap_nstring(s, a->mailbox);
		str_addc(s, ' ');
		imap_nstring(s, a->domain);
		str_addc(s, ')');
	}
	str_addc(s, ')');
}

static void
write_envelope(struct str *s, const struct envelope *e)
{
	if (e == NULL) {
		str_adds(s, "NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL");
		return;
	}
	imap_nstring_nolf(s, e->date);
	str_addc(s, ' ');
	if (e->subject == NULL)
		str_adds(s, "NIL");
	else
		imap_string_for_humans(s, (const unsigned char *)e->subject, strlen(e->subject));
	str_addc(s, ' ');
	write_addrs(s, e->from);
	str_addc(s, ' ');
	write_addrs(s, e->sender ? e->sender : e->from);
	str_addc(s, ' ');
	write_addrs(s, e->reply_to ? e->reply_to : e->from);
	str_addc(s, ' ');
	write_addrs(s, e->to);
	str_addc(s, ' ');
	write_addrs(s, e->cc);
	str_addc(s, ' ');
	write_addrs(s, e->bcc);
	str_addc(s, ' ');
	imap_nstring_nolf(s, e->in_reply_to);
	str_addc(s, ' ');
	imap_nstring_nolf(s, e->message_id);
}

static void
envelope_of(struct imap_mime *m, const struct part *p, struct pool *pl, struct envelope *e)
{
	struct hdr_iter it;
	struct hdr h;

	memset(e, 0, sizeof(*e));
	memset(&h, 0, sizeof(h));
	hdr_iter_init(&it, m, p, HDR_DATA);
	while (hdr_next(&it, &h) > 0)
		envelope_add(pl, e, &h);
	str_free(&h.value);
}

char *
imap_mime_envelope(struct imap_mime *m, size_t *len_r)
{
	struct pool pl = { 0 };
	struct envelope e;
	struct str s = { 0 };

	envelope_of(m, m->root, &pl, &e);
	str_addc(&s, '(');
	write_envelope(&s, &e);
	str_addc(&s, ')');
	pool_free(&pl);
	*len_r = s.len;
	return s.p;
}

/* ---- BODYSTRUCTURE ---- */

struct pdata {
	const char *type, *subtype;	/* NULL: no Content-Type */
	struct param *params;
	size_t nparams;
	const char *id, *description, *cte, *md5, *location;
	const char *disposition;
	struct param *dparams;
	size_t ndparams;
	const char **lang;		/* NULL-terminated */
	struct envelope *env;		/* a message/rfc822 part's message */
};

static void
pdata_content_type(struct pool *pl, struct pdata *pd, const struct hdr *h)
{
	struct rp r;
	struct str s = { 0 };

	rp_init(&r, (const unsigned char *)h->value.p, h->value.len);
	rp_skip_lwsp(&r);
	int ret = rp_content_type(&r, &s);
	const char *v = str_c(&s), *slash = strchr(v, '/');
	if (slash != NULL) {
		pd->type = pool_strndup(pl, v, slash - v);
		pd->subtype = pool_strdup(pl, slash + 1);
	} else {
		pd->type = pool_strdup(pl, v);
		pd->subtype = "";
	}
	if (ret >= 0)
		params_parse(&r, pl, &pd->params, &pd->nparams);
	str_free(&s);
}

static void
pdata_token(struct pool *pl, const struct hdr *h, const char **out)
{
	struct rp r;
	struct str s = { 0 };

	rp_init(&r, (const unsigned char *)h->value.p, h->value.len);
	rp_skip_lwsp(&r);
	if (rp_mime_token(&r, &s) >= 0 && rp_skip_lwsp(&r) == 0 && s.len > 0)
		*out = pool_strdup(pl, str_c(&s));
	str_free(&s);
}

static void
pdata_disposition(struct pool *pl, struct pdata *pd, const struct hdr *h)
{
	struct rp r;
	struct str s = { 0 };

	rp_init(&r, (const unsigned char *)h->value.p, h->value.len);
	rp_skip_lwsp(&r);
	if (rp_mime_token(&r, &s) >= 0) {
		pd->disposition = pool_strdup(pl, str_c(&s));
		params_parse(&r, pl, &pd->dparams, &pd->ndparams);
	}
	str_free(&s);
}

static void
pdata_language(struct pool *pl, struct pdata *pd, const struct hdr *h)
{
	struct rp r;
	struct str s = { 0 };
	const char **list = NULL;
	size_t n = 0, cap = 0;

	rp_init(&r, (const unsigned char *)h->value.p, h->value.len);
	rp_skip_lwsp(&r);
	while (n < 1000 && rp_atom(&r, &s) >= 0) {
		if (n + 2 > cap) {
			cap = cap ? cap * 2 : 8;
			list = xreallocarray(list, cap, sizeof(*list));
		}
		list[n++] = pool_strdup(pl, str_c(&s));
		str_trunc(&s, 0);
		if (r.d >= r.end || *r.d != ',')
			break;
		r.d++;
		rp_skip_lwsp(&r);
	}
	if (n > 0) {
		pd->lang = pool_alloc(pl, (n + 1) * sizeof(*list));
		memcpy(pd->lang, list, n * sizeof(*list));
		pd->lang[n] = NULL;
	}
	free(list);
	str_free(&s);
}

static void
pdata_of(struct imap_mime *m, const struct part *p, struct pool *pl, struct pdata *pd)
{
	struct hdr_iter it;
	struct hdr h;
	int want_env = p->parent != NULL && (p->parent->flags & PF_RFC822);
	int ct_seen = 0;

	memset(pd, 0, sizeof(*pd));
	memset(&h, 0, sizeof(h));
	if (want_env)
		pd->env = pool_alloc(pl, sizeof(*pd->env));
	hdr_iter_init(&it, m, p, HDR_DATA);
	while (hdr_next(&it, &h) > 0) {
		if (want_env)
			envelope_add(pl, pd->env, &h);
		if (h.name == NULL || h.name_len < 8 || strncasecmp((const char *)h.name, "Content-", 8) != 0)
			continue;
		if (hdr_is(&h, "Content-Type")) {
			if (!ct_seen)
				pdata_content_type(pl, pd, &h);
			ct_seen = 1;
		} else if (hdr_is(&h, "Content-Transfer-Encoding")) {
			/* an empty or broken one does not count: the next may */
			if (pd->cte == NULL)
				pdata_token(pl, &h, &pd->cte);
		} else if (hdr_is(&h, "Content-ID")) {
			if (pd->id == NULL)
				pd->id = pool_hdrdup(pl, (const unsigned char *)h.value.p, h.value.len);
		} else if (hdr_is(&h, "Content-MD5")) {
			if (pd->md5 == NULL)
				pd->md5 = pool_hdrdup(pl, (const unsigned char *)h.value.p, h.value.len);
		} else if (hdr_is(&h, "Content-Description")) {
			if (pd->description == NULL)
				pd->description = pool_hdrdup(pl, (const unsigned char *)h.value.p, h.value.len);
		} else if (hdr_is(&h, "Content-Location")) {
			if (pd->location == NULL)
				pd->location = pool_hdrdup(pl, (const unsigned char *)h.value.p, h.value.len);
		} else if (hdr_is(&h, "Content-Language")) {
			if (pd->lang == NULL)
				pdata_language(pl, pd, &h);
		} else if (hdr_is(&h, "Content-Disposition")) {
			if (pd->dparams == NULL)
				pdata_disposition(pl, pd, &h);
		}
	}
	str_free(&h.value);
	if (!(p->flags & PF_IS_MIME)) {
		struct envelope *env = pd->env;
		memset(pd, 0, sizeof(*pd));
		pd->env = env;
	}
}

static void
write_params(struct str *s, const struct param *pp, size_t n, int default_charset)
{
	int seen = 0;

	if (!default_charset && n == 0) {
		str_adds(s, "NIL");
		return;
	}
	str_addc(s, '(');
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			str_addc(s, ' ');
		if (default_charset && strcasecmp(pp[i].name, "charset") == 0)
			seen = 1;
		imap_nstring(s, pp[i].name);
		str_addc(s, ' ');
		imap_nstring(s, pp[i].value);
	}
	if (default_charset && !seen) {
		if (n > 0)
			str_addc(s, ' ');
		str_adds(s, "\"charset\" \"us-ascii\"");
	}
	str_addc(s, ')');
}

static void
write_common(struct str *s, const struct pdata *pd)
{
	str_addc(s, ' ');
	if (pd->disposition == NULL) {
		str_adds(s, "NIL");
	} else {
		str_addc(s, '(');
		imap_nstring(s, pd->disposition);
		str_addc(s, ' ');
		write_params(s, pd->dparams, pd->ndparams, 0);
		str_addc(s, ')');
	}
	str_addc(s, ' ');
	if (pd->lang == NULL) {
		str_adds(s, "NIL");
	} else {
		str_addc(s, '(');
		for (size_t i = 0; pd->lang[i] != NULL; i++) {
			if (i > 0)
				str_addc(s, ' ');
			imap_nstring(s, pd->lang[i]);
		}
		str_addc(s, ')');
	}
	str_addc(s, ' ');
	imap_nstring_nolf(s, pd->location);
}

static void write_part(struct imap_mime *m, const struct part *p, struct str *s, int ext);

static void
write_children(struct imap_mime *m, const struct part *p, struct str *s, int ext)
{
	for (const struct part *c = p->children; c != NULL; c = c->next) {
		str_addc(s, '(');
		write_part(m, c, s, ext);
		str_addc(s, ')');
	}
}

static int
part_is_truncated(const struct part *p, const struct pdata *pd)
{
	if (pd->type != NULL) {
		if (strcasecmp(pd->type, "message") == 0 && strcasecmp(pd->subtype, "rfc822") == 0)
			return 1;
		if (strcasecmp(pd->type, "multipart") == 0)
			return 1;
	} else if (p->parent != NULL && (p->parent->flags & PF_DIGEST)) {
		return 1;
	}
	return 0;
}

static void
write_part(struct imap_mime *m, const struct part *p, struct str *s, int ext)
{
	struct pool pl = { 0 };
	struct pdata pd;
	int text;

	pdata_of(m, p, &pl, &pd);
	if (p->flags & PF_MULTIPART) {
		if (p->children != NULL) {
			write_children(m, p, s, ext);
		} else if (!ext) {
			str_adds(s, "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)");
		} else {
			str_adds(s, "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0 "
			    "NIL NIL NIL NIL)");
		}
		str_addc(s, ' ');
		imap_nstring(s, pd.subtype ? pd.subtype : "");
		if (ext) {
			str_addc(s, ' ');
			write_params(s, pd.params, pd.nparams, 0);
			write_common(s, &pd);
		}
		pool_free(&pl);
		return;
	}
	if (p->flags & PF_RFC822) {
		str_adds(s, "\"message\" \"rfc822\"");
		text = 0;
	} else if (part_is_truncated(p, &pd)) {
		str_adds(s, "\"application\" \"octet-stream\"");
		text = 0;
	} else if (pd.type == NULL) {
		text = 1;
		str_adds(s, "\"text\" \"plain\"");
	} else {
		text = strcasecmp(pd.type, "text") == 0;
		imap_nstring(s, pd.type);
		str_addc(s, ' ');
		imap_nstring(s, pd.subtype);
	}
	str_addc(s, ' ');
	write_params(s, pd.params, pd.nparams, text);
	str_addc(s, ' ');
	imap_nstring_nolf(s, pd.id);
	str_addc(s, ' ');
	imap_nstring_nolf(s, pd.description);
	str_addc(s, ' ');
	if (pd.cte != NULL)
		imap_nstring(s, pd.cte);
	else
		str_adds(s, "\"7bit\"");
	str_printf(s, " %llu", (unsigned long long)p->body.virt);
	if (text) {
		str_printf(s, " %llu", (unsigned long long)p->body.lines);
	} else if (p->flags & PF_RFC822) {
		struct pool pl2 = { 0 };
		struct pdata cd;
		pdata_of(m, p->children, &pl2, &cd);
		str_adds(s, " (");
		write_envelope(s, cd.env);
		str_adds(s, ") ");
		pool_free(&pl2);
		write_children(m, p, s, ext);
		str_printf(s, " %llu", (unsigned long long)p->body.lines);
	}
	if (ext) {
		str_addc(s, ' ');
		imap_nstring_nolf(s, pd.md5);
		write_common(s, &pd);
	}
	pool_free(&pl);
}

char *
imap_mime_bodystructure(struct imap_mime *m, int extensible, size_t *len_r)
{
	struct str s = { 0 };

	str_addc(&s, '(');
	write_part(m, m->root, &s, extensible);
	str_addc(&s, ')');
	*len_r = s.len;
	return s.p;
}
