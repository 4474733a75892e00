/*
 * imap_parser: the IMAP4rev1 command parser (see imap_parser.h).
 *
 *   imap_parser_new/free          one per connection
 *   imap_parser_feed              bytes in, at most one event out
 *   imap_parser_set_limits        tighter before login, wider after
 *   imap_parser_set_idle          the next line is DONE
 *   imap_seqset_parse/contains    sequence sets, for the protocol layer too
 *
 * Two stages: a byte-at-a-time lexer builds the argument tree of one command
 * (tag, name, atoms, quoted strings, literals, lists), counting every byte
 * outside literals against line_max and every literal against literal_max;
 * at the end of the line a table of per-command checks types the arguments
 * (sequence sets, FETCH attributes, SEARCH keys, STORE, APPEND). Any error
 * turns the lexer into "skip to the end of the line" (following LITERAL+
 * literals so their bytes are never taken for commands) and yields one
 * tagged BAD; bad_max errors in a row end in BYE.
 *
 * All memory of a command is in one arena, dropped at the next feed: the
 * parser never holds more than line_max + literal_max (plus bookkeeping).
 * Never aborts on input, never logs peer bytes.
 */
#include "pop-imap-proxy/imap_parser.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/xmalloc.h"

#define DEPTH_HARD_MAX 64

enum lex_state {
	L_START,	/* a token may start here (line start, after SP, after '(') */
	L_AFTER,	/* a token ended: SP, ')', CR or LF */
	L_ATOM,
	L_BRACKET,	/* inside [...] of an atom */
	L_BRACKET_Q,	/* a quoted string inside [...] */
	L_BRACKET_QE,
	L_QUOTED,
	L_QUOTED_ESC,
	L_LIT_LEN,
	L_LIT_PLUS,	/* "{n+" seen: '}' must follow */
	L_LIT_CLOSE,	/* "}" seen: CR or LF */
	L_LIT_CR,
	L_LIT_DATA,
	L_CR,		/* CR at the end of the line: LF must follow */
	L_SKIP,		/* error: to the end of the line */
	L_SKIP_LIT,	/* error: skipping a LITERAL+ literal's bytes */
	L_IDLE,		/* collecting the line after IDLE */
	L_APPEND_WAIT,	/* IMAP_EV_APPEND given: waiting for imap_parser_append_continue */
	L_APPEND_DATA,	/* streaming an APPEND message */
};

struct arena_block {
	struct arena_block *next;
	size_t used, cap;
	max_align_t data[];
};

struct argvec {
	struct imap_arg *a;
	size_t n, cap;
};

struct imap_parser {
	struct imap_parser_limits lim, next_lim;
	enum lex_state st;
	struct arena_block *arena;
	struct argvec stack[DEPTH_HARD_MAX + 1];
	unsigned depth;
	size_t linelen;		/* bytes outside literals */
	size_t littotal;	/* literal bytes of this command */
	char *tok;		/* the token being read */
	size_t toklen, tokcap;
	unsigned long long litn;
	int litplus;
	int in_line;		/* some byte of a command was seen */
	int have_tag;
	char tag[IMAP_TAG_MAX + 1];
	const char *err;	/* set: the line is refused */
	const char *errcode;	/* response code, or NULL */
	int err_no;		/* NO rather than BAD */
	/* LITERAL+ recognition while skipping: 0 none, 1 '{', 2 digits, 3 '+', 4 '}' */
	int sk;
	unsigned long long skn;
	int skplus;
	unsigned bad;
	int dead;
	int idle;
	int cmd_ready;		/* the arena holds an event's command: drop it first */
	struct imap_cmd cmd;
	/* APPEND streaming */
	int append_stream;
	int append_sync;
	int append_streamed;	/* this line's message was streamed */
	int silent;		/* skipping a refused APPEND: no reply of our own */
	uint64_t append_size, append_left;
};

/* ---- arena ---- */

static void *
arena_alloc(struct imap_parser *p, size_t n)
{
	struct arena_block *b = p->arena;
	size_t al = sizeof(max_align_t);

	n = (n + al - 1) / al * al;
	if (n == 0)
		n = al;
	if (b == NULL || b->cap - b->used < n) {
		size_t cap = n > 8192 ? n : 8192;

		b = xmalloc(sizeof(*b) + cap);
		b->cap = cap;
		b->used = 0;
		b->next = p->arena;
		p->arena = b;
	}
	void *r = (char *)b->data + b->used;

	b->used += n;
	return r;
}

static char *
arena_strndup(struct imap_parser *p, const char *s, size_t n)
{
	char *r = arena_alloc(p, n + 1);

	memcpy(r, s, n);
	r[n] = '\0';
	return r;
}

static void
arena_reset(struct imap_parser *p)
{
	struct arena_block *b = p->arena, *next;

	/* keep one block: most commands fit in it */
	if (b == NULL)
		return;
	for (next = b->next; next != NULL; ) {
		struct arena_block *n2 = next->next;

		free(next);
		next = n2;
	}
	b->next = NULL;
	b->used = 0;
	if (b->cap > 8192) {
		free(b);
		p->arena = NULL;
	}
}

/* ---- setup ---- */

void
imap_parser_limits_default(struct imap_parser_limits *lim_r, int authenticated)
{
	lim_r->line_max = authenticated ? IMAP_LINE_MAX : IMAP_LINE_MAX_PRELOGIN;
	lim_r->literal_max = authenticated ? IMAP_LITERAL_MAX : IMAP_LITERAL_MAX_PRELOGIN;
	lim_r->depth_max = IMAP_DEPTH_MAX;
	lim_r->list_max = IMAP_LIST_MAX;
	lim_r->bad_max = authenticated ? IMAP_BAD_MAX : IMAP_BAD_MAX_PRELOGIN;
}

static void
limits_sane(struct imap_parser_limits *l)
{
	if (l->depth_max > DEPTH_HARD_MAX)
		l->depth_max = DEPTH_HARD_MAX;
	if (l->depth_max == 0)
		l->depth_max = 1;
	if (l->line_max < 64)
		l->line_max = 64;
	if (l->list_max == 0)
		l->list_max = 1;
}

struct imap_parser *
imap_parser_new(const struct imap_parser_limits *lim)
{
	struct imap_parser *p = xcalloc(1, sizeof(*p));

	if (lim != NULL)
		p->lim = *lim;
	else
		imap_parser_limits_default(&p->lim, 0);
	limits_sane(&p->lim);
	p->next_lim = p->lim;
	p->st = L_START;
	return p;
}

void
imap_parser_free(struct imap_parser **pp)
{
	struct imap_parser *p = *pp;

	if (p == NULL)
		return;
	arena_reset(p);
	free(p->arena);
	for (unsigned i = 0; i <= DEPTH_HARD_MAX; i++)
		free(p->stack[i].a);
	free(p->tok);
	free(p);
	*pp = NULL;
}

void
imap_parser_set_limits(struct imap_parser *p, const struct imap_parser_limits *lim)
{
	p->next_lim = *lim;
	limits_sane(&p->next_lim);
	if (!p->in_line)
		p->lim = p->next_lim;
}

void
imap_parser_set_idle(struct imap_parser *p)
{
	p->idle = 1;
	if (!p->in_line)
		p->st = L_IDLE;
}

/* ---- the lexer ---- */

static void
line_reset(struct imap_parser *p)
{
	for (unsigned i = 0; i <= p->depth; i++)
		p->stack[i].n = 0;
	p->depth = 0;
	p->linelen = 0;
	p->littotal = 0;
	p->toklen = 0;
	p->in_line = 0;
	p->have_tag = 0;
	p->tag[0] = '\0';
	p->err = NULL;
	p->errcode = NULL;
	p->err_no = 0;
	p->sk = 0;
	p->append_streamed = 0;
	p->silent = 0;
	p->lim = p->next_lim;
	if (!p->cmd_ready)
		arena_reset(p);
	if (p->tokcap > 65536) {
		/* an idle connection keeps no big literal's buffer */
		free(p->tok);
		p->tok = NULL;
		p->tokcap = 0;
	}
	p->st = p->idle ? L_IDLE : L_START;
}

static void
fail(struct imap_parser *p, const char *code, const char *text)
{
	if (p->err == NULL) {
		p->err = text;
		p->errcode = code;
	}
	p->st = L_SKIP;
	p->sk = 0;
}

static int
tok_add(struct imap_parser *p, const char *s, size_t n)
{
	if (p->toklen + n + 1 > p->tokcap) {
		size_t cap = p->tokcap ? p->tokcap : 256;

		while (cap < p->toklen + n + 1)
			cap *= 2;
		p->tok = xrealloc(p->tok, cap);
		p->tokcap = cap;
	}
	memcpy(p->tok + p->toklen, s, n);
	p->toklen += n;
	p->tok[p->toklen] = '\0';
	return 0;
}

static int
is_tag_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && strchr("(){\"\\%*+", c) == NULL;
}

static int
is_strict_atom_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && strchr("(){\"%*]\\[", c) == NULL;
}

static int
is_atom_char(unsigned char c)
{
	/* lenient: ATOM-CHAR plus resp-specials, list-wildcards and '\' (flags) */
	return c > 0x20 && c < 0x7f && strchr("(){\"", c) == NULL;
}

static void
arg_push(struct imap_parser *p, struct imap_arg a)
{
	struct argvec *v = &p->stack[p->depth];

	if (v->n >= p->lim.list_max) {
		fail(p, NULL, "Too many arguments");
		return;
	}
	if (v->n == v->cap) {
		v->cap = v->cap ? v->cap * 2 : 16;
		v->a = xreallocarray(v->a, v->cap, sizeof(*v->a));
	}
	v->a[v->n++] = a;
}

static void
token_end(struct imap_parser *p, enum imap_arg_type type)
{
	struct imap_arg a = { 0 };

	a.type = type;
	a.len = p->toklen;
	a.str = arena_strndup(p, p->tok ? p->tok : "", p->toklen);
	p->toklen = 0;
	if (p->depth == 0 && p->stack[0].n == 0) {
		/* the tag */
		if (type != IMAP_ARG_ATOM || a.len > IMAP_TAG_MAX) {
			fail(p, NULL, "Invalid tag");
			return;
		}
		for (size_t i = 0; i < a.len; i++)
			if (!is_tag_char((unsigned char)a.str[i])) {
				fail(p, NULL, "Invalid tag");
				return;
			}
		memcpy(p->tag, a.str, a.len + 1);
		p->have_tag = 1;
	}
	arg_push(p, a);
	if (p->err == NULL)
		p->st = L_AFTER;
}

static void
list_open(struct imap_parser *p)
{
	if (p->depth == 0 && p->stack[0].n < 2) {
		fail(p, NULL, p->stack[0].n == 0 ? "Invalid tag" : "Invalid command name");
		return;
	}
	if (p->depth + 1 > p->lim.depth_max) {
		fail(p, NULL, "Too deeply nested");
		return;
	}
	p->depth++;
	p->stack[p->depth].n = 0;
	p->st = L_START;
}

static void
list_close(struct imap_parser *p)
{
	struct argvec *v;
	struct imap_arg a = { 0 };

	if (p->depth == 0) {
		fail(p, NULL, "Unexpected ')'");
		return;
	}
	v = &p->stack[p->depth];
	a.type = IMAP_ARG_LIST;
	a.count = v->n;
	if (v->n > 0) {
		struct imap_arg *l = arena_alloc(p, v->n * sizeof(*l));

		memcpy(l, v->a, v->n * sizeof(*l));
		a.list = l;
	}
	v->n = 0;
	p->depth--;
	arg_push(p, a);
	if (p->err == NULL)
		p->st = L_AFTER;
}

static int check_flag_list(struct imap_parser *p, const struct imap_arg *a, size_t n,
    struct imap_cmd *c);
static int is_astring(const struct imap_arg *a);
static int is_date_time(const char *s);
static int fail_cmd(struct imap_parser *p, const char *text);

/* an APPEND's message literal: the command so far for the caller, then wait */
static enum imap_event_type
append_begin(struct imap_parser *p, struct imap_event *ev)
{
	struct argvec *v = &p->stack[0];
	struct imap_cmd *c = &p->cmd;
	struct imap_arg *args = arena_alloc(p, v->n * sizeof(*args));
	size_t i = 1, n = v->n - 2;
	const struct imap_arg *a;

	memcpy(args, v->a, v->n * sizeof(*args));
	memset(c, 0, sizeof(*c));
	c->tag = args[0].str;
	c->name = "APPEND";
	c->args = a = args + 2;
	c->nargs = n;
	if (!is_astring(&a[0]))
		fail_cmd(p, "Invalid arguments");
	if (p->err == NULL && i < n && a[i].type == IMAP_ARG_LIST &&
	    check_flag_list(p, a[i].list, a[i].count, c) == 0)
		i++;
	if (p->err == NULL && i < n && a[i].type == IMAP_ARG_QUOTED) {
		if (!is_date_time(a[i].str))
			fail_cmd(p, "Invalid date-time");
		c->append_date = a[i].str;
		i++;
	}
	if (p->err == NULL && i != n)
		fail_cmd(p, "Invalid arguments");
	if (p->err != NULL) {
		if (!p->litplus)
			return IMAP_EV_REPLY;
		p->st = L_SKIP_LIT;
		return IMAP_EV_NONE;
	}
	p->append_size = p->append_left = p->litn;
	p->append_sync = !p->litplus;
	p->st = L_APPEND_WAIT;
	ev->cmd = c;
	ev->append_size = p->append_size;
	ev->append_sync = p->append_sync;
	return IMAP_EV_APPEND;
}

/* the streamed message stands in the arguments as an empty literal of its size */
static void
append_done(struct imap_parser *p)
{
	struct imap_arg a = { 0 };

	a.type = IMAP_ARG_LITERAL;
	a.str = arena_strndup(p, "", 0);
	a.len = (size_t)p->append_size;
	p->append_streamed = 1;
	arg_push(p, a);
	if (p->err == NULL)
		p->st = L_AFTER;
}

void
imap_parser_set_append_stream(struct imap_parser *p, int on)
{
	p->append_stream = on;
}

void
imap_parser_append_continue(struct imap_parser *p, int accept)
{
	if (p->st != L_APPEND_WAIT)
		return;
	if (accept) {
		p->st = L_APPEND_DATA;
		if (p->append_left == 0)
			append_done(p);
		return;
	}
	p->silent = 1;
	if (p->append_sync) {
		/* the client sends no more of this command */
		line_reset(p);
		return;
	}
	fail(p, NULL, "APPEND refused");
	p->st = L_SKIP_LIT;
	p->litn = p->append_left;
	if (p->litn == 0)
		p->st = L_SKIP;
}

/* at the end of the literal's header line: returns an event type, or IMAP_EV_NONE */
static enum imap_event_type
literal_begin(struct imap_parser *p, struct imap_event *ev)
{
	const char *err = NULL, *code = NULL;

	if (p->depth == 0 && p->stack[0].n < 2)
		err = p->stack[0].n == 0 ? "Invalid tag" : "Invalid command name";
	else if (p->litn > p->lim.literal_max || p->littotal + p->litn > p->lim.literal_max) {
		err = "Literal too big";
		code = "TOOBIG";
	}
	if (err != NULL) {
		if (!p->litplus) {
			/* the client waits for "+": it sends nothing more of this command */
			p->err = err;
			p->errcode = code;
			p->err_no = code != NULL;
			return IMAP_EV_REPLY;
		}
		if (p->litn > p->lim.literal_max) {
			snprintf(ev->reply, sizeof(ev->reply),
			    "* BYE [TOOBIG] Literal too big\r\n");
			p->dead = 1;
			return IMAP_EV_DISCONNECT;
		}
		/* its bytes come anyway: skip them, then the rest of the line */
		fail(p, code, err);
		p->st = L_SKIP_LIT;
		return IMAP_EV_NONE;
	}
	p->littotal += p->litn;
	p->toklen = 0;
	if (p->append_stream && p->depth == 0 && p->stack[0].n >= 3 &&
	    p->stack[0].a[1].type == IMAP_ARG_ATOM && strcasecmp(p->stack[0].a[1].str, "APPEND") == 0)
		return append_begin(p, ev);
	p->st = L_LIT_DATA;
	if (!p->litplus) {
		snprintf(ev->reply, sizeof(ev->reply), "+ OK\r\n");
		return IMAP_EV_CONTINUE;
	}
	return IMAP_EV_NONE;
}

/* ---- typed checks, on the complete argument tree ---- */

static int
fail_cmd(struct imap_parser *p, const char *text)
{
	if (p->err == NULL)
		p->err = text;
	return -1;
}

int
imap_arg_is_astring(const struct imap_arg *a)
{
	return a->type == IMAP_ARG_ATOM || a->type == IMAP_ARG_QUOTED ||
	    a->type == IMAP_ARG_LITERAL;
}

int
imap_arg_is_nil(const struct imap_arg *a)
{
	return a->type == IMAP_ARG_ATOM && strcasecmp(a->str, "NIL") == 0;
}

static int
is_strict_atom(const char *s)
{
	if (*s == '\0')
		return 0;
	for (; *s != '\0'; s++)
		if (!is_atom_char((unsigned char)*s) || strchr("%*]\\[", *s) != NULL)
			return 0;
	return 1;
}

/* astring-char only (atom chars plus ']'), or quoted/literal */
static int
is_astring(const struct imap_arg *a)
{
	if (a->type == IMAP_ARG_QUOTED || a->type == IMAP_ARG_LITERAL)
		return 1;
	if (a->type != IMAP_ARG_ATOM)
		return 0;
	for (const char *s = a->str; *s != '\0'; s++)
		if (strchr("%*\\[", *s) != NULL)
			return 0;
	return 1;
}

/* LIST patterns may hold '%' and '*' */
static int
is_list_mailbox(const struct imap_arg *a)
{
	if (a->type != IMAP_ARG_ATOM)
		return imap_arg_is_astring(a);
	for (const char *s = a->str; *s != '\0'; s++)
		if (strchr("\\[", *s) != NULL)
			return 0;
	return 1;
}

/* nz-number or number into *r; returns chars used, 0 on error */
static size_t
parse_num(const char *s, int nz, uint32_t *r)
{
	uint64_t v = 0;
	size_t i = 0;

	if (!isdigit((unsigned char)s[0]))
		return 0;
	if (s[0] == '0' && (nz || isdigit((unsigned char)s[1])))
		return 0;
	for (; isdigit((unsigned char)s[i]); i++) {
		v = v * 10 + (uint64_t)(s[i] - '0');
		if (v > UINT32_MAX)
			return 0;
	}
	*r = (uint32_t)v;
	return i;
}

static size_t
parse_seqnum(const char *s, uint32_t *r)
{
	if (s[0] == '*') {
		*r = 0;
		return 1;
	}
	return parse_num(s, 1, r);
}

int
imap_seqset_parse(struct imap_parser *p, const char *s, struct imap_seqset *r,
    const char **error_r)
{
	size_t n = 1, k = 0;
	struct imap_seqrange *v;

	if (strcmp(s, "$") == 0) {
		r->r = NULL;
		r->n = 0;
		r->saved = 1;
		return 0;
	}
	for (const char *c = s; *c != '\0'; c++)
		if (*c == ',')
			n++;
	if (n > p->lim.list_max) {
		*error_r = "Too many sequence ranges";
		return -1;
	}
	v = arena_alloc(p, n * sizeof(*v));
	while (k < n) {
		size_t u = parse_seqnum(s, &v[k].lo);

		if (u == 0)
			goto bad;
		s += u;
		v[k].hi = v[k].lo;
		if (*s == ':') {
			u = parse_seqnum(s + 1, &v[k].hi);
			if (u == 0)
				goto bad;
			s += u + 1;
		}
		k++;
		if (*s == ',' && k < n)
			s++;
		else if (*s != '\0')
			goto bad;
	}
	if (*s != '\0')
		goto bad;
	r->r = v;
	r->n = n;
	r->saved = 0;
	return 0;
bad:
	*error_r = "Invalid sequence set";
	return -1;
}

int
imap_seqset_contains(const struct imap_seqset *set, uint32_t n, uint32_t max)
{
	for (size_t i = 0; i < set->n; i++) {
		uint32_t lo = set->r[i].lo ? set->r[i].lo : max;
		uint32_t hi = set->r[i].hi ? set->r[i].hi : max;

		if (lo > hi) {
			uint32_t t = lo;

			lo = hi;
			hi = t;
		}
		if (n >= lo && n <= hi)
			return 1;
	}
	return 0;
}

static int
check_seqset(struct imap_parser *p, const struct imap_arg *a, struct imap_seqset *r)
{
	const char *err;

	if (a->type != IMAP_ARG_ATOM)
		return fail_cmd(p, "Invalid sequence set");
	if (imap_seqset_parse(p, a->str, r, &err) < 0)
		return fail_cmd(p, err);
	return 0;
}

/* a flag for STORE/APPEND: \System or a keyword atom */
static int
check_flag(const struct imap_arg *a)
{
	if (a->type != IMAP_ARG_ATOM)
		return 0;
	return a->str[0] == '\\' ? is_strict_atom(a->str + 1) : is_strict_atom(a->str);
}

static int
check_flag_list(struct imap_parser *p, const struct imap_arg *a, size_t n, struct imap_cmd *c)
{
	const char **f = arena_alloc(p, (n ? n : 1) * sizeof(*f));

	for (size_t i = 0; i < n; i++) {
		if (!check_flag(&a[i]))
			return fail_cmd(p, "Invalid flag");
		f[i] = a[i].str;
	}
	c->flags = f;
	c->nflags = n;
	return 0;
}

/* ---- FETCH attributes ---- */

static const struct {
	const char *name;
	enum imap_fetch_kind kind;
} fetch_simple[] = {
	{ "ENVELOPE", IMAP_FETCH_ENVELOPE }, { "FLAGS", IMAP_FETCH_FLAGS },
	{ "INTERNALDATE", IMAP_FETCH_INTERNALDATE }, { "RFC822", IMAP_FETCH_RFC822 },
	{ "RFC822.HEADER", IMAP_FETCH_RFC822_HEADER }, { "RFC822.SIZE", IMAP_FETCH_RFC822_SIZE },
	{ "RFC822.TEXT", IMAP_FETCH_RFC822_TEXT }, { "BODY", IMAP_FETCH_BODY },
	{ "BODYSTRUCTURE", IMAP_FETCH_BODYSTRUCTURE }, { "UID", IMAP_FETCH_UID },
};

static int
prefix(const char *s, const char *pre, const char **rest_r)
{
	size_t n = strlen(pre);

	if (strncasecmp(s, pre, n) != 0)
		return 0;
	*rest_r = s + n;
	return 1;
}

/* the header field names of HEADER.FIELDS: " (name name ...)" to the end of S */
static int
parse_fields(struct imap_parser *p, const char *s, struct imap_fetch_att *f)
{
	size_t cap = 0, n = 0;
	const char **v;

	if (s[0] != ' ' || s[1] != '(')
		return -1;
	s += 2;
	for (const char *c = s; *c != '\0'; c++)
		if (*c == ' ')
			cap++;
	cap++;
	if (cap > p->lim.list_max)
		return -1;
	v = arena_alloc(p, cap * sizeof(*v));
	for (;;) {
		char *out;
		size_t len = 0;

		if (n >= cap)
			return -1;
		if (*s == '"') {
			out = arena_alloc(p, strlen(s) + 1);
			for (s++; *s != '"'; s++) {
				if (*s == '\0')
					return -1;
				if (*s == '\\') {
					s++;
					if (*s != '\\' && *s != '"')
						return -1;
				}
				out[len++] = *s;
			}
			s++;
			out[len] = '\0';
			if (len == 0)
				return -1;
		} else {
			const char *st = s;

			while (*s != '\0' && *s != ' ' && *s != ')') {
				if (!is_atom_char((unsigned char)*s) || strchr("%*\\[", *s) != NULL)
					return -1;
				s++;
			}
			if (s == st)
				return -1;
			out = arena_strndup(p, st, (size_t)(s - st));
		}
		v[n++] = out;
		if (*s == ')')
			break;
		if (*s != ' ')
			return -1;
		s++;
	}
	if (s[1] != '\0')
		return -1;
	f->fields = v;
	f->nfields = n;
	return 0;
}

/* S: the text between '[' and its ']' */
static int
parse_section(struct imap_parser *p, const char *s, struct imap_fetch_att *f)
{
	const char *rest;

	while (isdigit((unsigned char)*s)) {
		size_t u;

		if (f->nparts == IMAP_SECTION_PARTS_MAX)
			return -1;
		u = parse_num(s, 1, &f->part[f->nparts]);
		if (u == 0)
			return -1;
		f->nparts++;
		s += u;
		if (*s == '\0')
			return 0;
		if (*s != '.')
			return -1;
		s++;
	}
	if (*s == '\0')
		return f->nparts == 0 ? 0 : -1;	/* "1." */
	if (prefix(s, "HEADER.FIELDS.NOT", &rest)) {
		f->text = IMAP_SECTION_HEADER_FIELDS_NOT;
		return parse_fields(p, rest, f);
	}
	if (prefix(s, "HEADER.FIELDS", &rest)) {
		f->text = IMAP_SECTION_HEADER_FIELDS;
		return parse_fields(p, rest, f);
	}
	if (strcasecmp(s, "HEADER") == 0) {
		f->text = IMAP_SECTION_HEADER;
		return 0;
	}
	if (strcasecmp(s, "TEXT") == 0) {
		f->text = IMAP_SECTION_TEXT;
		return 0;
	}
	if (strcasecmp(s, "MIME") == 0 && f->nparts > 0) {
		f->text = IMAP_SECTION_MIME;
		return 0;
	}
	return -1;
}

static int
parse_fetch_att(struct imap_parser *p, const char *s, struct imap_fetch_att *f)
{
	const char *rest, *close;
	char *sec;
	size_t u;

	memset(f, 0, sizeof(*f));
	for (size_t i = 0; i < sizeof(fetch_simple) / sizeof(fetch_simple[0]); i++)
		if (strcasecmp(s, fetch_simple[i].name) == 0) {
			f->kind = fetch_simple[i].kind;
			return 0;
		}
	if (prefix(s, "BODY.PEEK[", &rest))
		f->peek = 1;
	else if (!prefix(s, "BODY[", &rest))
		return -1;
	f->kind = IMAP_FETCH_SECTION;
	/* the section ends at the last ']' (a quoted field name may hold one) */
	close = strrchr(rest, ']');
	if (close == NULL)
		return -1;
	sec = arena_strndup(p, rest, (size_t)(close - rest));
	if (parse_section(p, sec, f) < 0)
		return -1;
	s = close + 1;
	if (*s == '\0')
		return 0;
	if (*s != '<')
		return -1;
	u = parse_num(s + 1, 0, &f->offset);
	if (u == 0)
		return -1;
	s += 1 + u;
	if (*s != '.')
		return -1;
	u = parse_num(s + 1, 1, &f->length);
	if (u == 0)
		return -1;
	s += 1 + u;
	if (s[0] != '>' || s[1] != '\0')
		return -1;
	f->partial = 1;
	return 0;
}

static int
check_fetch(struct imap_parser *p, const struct imap_arg *a, struct imap_cmd *c)
{
	static const char *const macro[][5] = {
		{ "ALL", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE" },
		{ "FAST", "FLAGS", "INTERNALDATE", "RFC822.SIZE", NULL },
		{ "FULL", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE" },
	};
	struct imap_fetch_att *f;
	size_t n;

	if (a->type == IMAP_ARG_ATOM) {
		for (size_t m = 0; m < 3; m++) {
			if (strcasecmp(a->str, macro[m][0]) != 0)
				continue;
			n = macro[m][4] != NULL ? 4 : 3;
			f = arena_alloc(p, (n + 1) * sizeof(*f));
			for (size_t i = 0; i < n; i++)
				(void)parse_fetch_att(p, macro[m][i + 1], &f[i]);
			if (m == 2) {
				memset(&f[n], 0, sizeof(f[n]));
				f[n++].kind = IMAP_FETCH_BODY;
			}
			c->fetch = f;
			c->nfetch = n;
			return 0;
		}
		f = arena_alloc(p, sizeof(*f));
		if (parse_fetch_att(p, a->str, f) < 0)
			return fail_cmd(p, "Invalid fetch attribute");
		c->fetch = f;
		c->nfetch = 1;
		return 0;
	}
	if (a->type != IMAP_ARG_LIST || a->count == 0)
		return fail_cmd(p, "Invalid fetch attribute");
	f = arena_alloc(p, a->count * sizeof(*f));
	for (size_t i = 0; i < a->count; i++)
		if (a->list[i].type != IMAP_ARG_ATOM ||
		    parse_fetch_att(p, a->list[i].str, &f[i]) < 0)
			return fail_cmd(p, "Invalid fetch attribute");
	c->fetch = f;
	c->nfetch = a->count;
	return 0;
}

/* ---- SEARCH ---- */

static const struct {
	const char *name;
	enum imap_search_key key;
	char arg;	/* 0 none, 's' astring, 'h' two astrings, 'f' flag, 'd' date, 'n' number,
			   'u' seqset, 'k' key, 'o' two keys */
} search_keys[] = {
	{ "ALL", IMAP_SK_ALL, 0 }, { "ANSWERED", IMAP_SK_ANSWERED, 0 },
	{ "BCC", IMAP_SK_BCC, 's' }, { "BEFORE", IMAP_SK_BEFORE, 'd' },
	{ "BODY", IMAP_SK_BODY, 's' }, { "CC", IMAP_SK_CC, 's' },
	{ "DELETED", IMAP_SK_DELETED, 0 }, { "DRAFT", IMAP_SK_DRAFT, 0 },
	{ "FLAGGED", IMAP_SK_FLAGGED, 0 }, { "FROM", IMAP_SK_FROM, 's' },
	{ "HEADER", IMAP_SK_HEADER, 'h' }, { "KEYWORD", IMAP_SK_KEYWORD, 'f' },
	{ "LARGER", IMAP_SK_LARGER, 'n' }, { "NEW", IMAP_SK_NEW, 0 },
	{ "NOT", IMAP_SK_NOT, 'k' }, { "OLD", IMAP_SK_OLD, 0 },
	{ "ON", IMAP_SK_ON, 'd' }, { "OR", IMAP_SK_OR, 'o' },
	{ "RECENT", IMAP_SK_RECENT, 0 }, { "SEEN", IMAP_SK_SEEN, 0 },
	{ "SENTBEFORE", IMAP_SK_SENTBEFORE, 'd' }, { "SENTON", IMAP_SK_SENTON, 'd' },
	{ "SENTSINCE", IMAP_SK_SENTSINCE, 'd' }, { "SINCE", IMAP_SK_SINCE, 'd' },
	{ "SMALLER", IMAP_SK_SMALLER, 'n' }, { "SUBJECT", IMAP_SK_SUBJECT, 's' },
	{ "TEXT", IMAP_SK_TEXT, 's' }, { "TO", IMAP_SK_TO, 's' },
	{ "UID", IMAP_SK_UID, 'u' }, { "UNANSWERED", IMAP_SK_UNANSWERED, 0 },
	{ "UNDELETED", IMAP_SK_UNDELETED, 0 }, { "UNDRAFT", IMAP_SK_UNDRAFT, 0 },
	{ "UNFLAGGED", IMAP_SK_UNFLAGGED, 0 }, { "UNKEYWORD", IMAP_SK_UNKEYWORD, 'f' },
	{ "UNSEEN", IMAP_SK_UNSEEN, 0 },
};

static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul",
	"Aug", "Sep", "Oct", "Nov", "Dec" };

/* date = d[d]-Mon-yyyy */
static int
parse_date(const char *s, int *y, int *m, int *d)
{
	int day = 0, mon = -1, year = 0, i = 0;

	if (!isdigit((unsigned char)s[0]))
		return -1;
	day = s[0] - '0';
	i = 1;
	if (isdigit((unsigned char)s[1])) {
		day = day * 10 + s[1] - '0';
		i = 2;
	}
	if (s[i] != '-' || day < 1 || day > 31)
		return -1;
	i++;
	for (int k = 0; k < 12; k++)
		if (strncasecmp(s + i, months[k], 3) == 0)
			mon = k;
	if (mon < 0 || s[i + 3] != '-')
		return -1;
	i += 4;
	for (int k = 0; k < 4; k++) {
		if (!isdigit((unsigned char)s[i + k]))
			return -1;
		year = year * 10 + s[i + k] - '0';
	}
	if (s[i + 4] != '\0')
		return -1;
	*y = year;
	*m = mon + 1;
	*d = day;
	return 0;
}

static int search_key(struct imap_parser *p, const struct imap_arg *a, size_t n, size_t *i,
    unsigned depth, struct imap_search *r);

static int
search_list(struct imap_parser *p, const struct imap_arg *a, size_t n, unsigned depth,
    struct imap_search *r)
{
	struct imap_search *ch;
	size_t i = 0, k = 0;

	if (n == 0)
		return fail_cmd(p, "Missing search key");
	ch = arena_alloc(p, n * sizeof(*ch));
	while (i < n)
		if (search_key(p, a, n, &i, depth + 1, &ch[k++]) < 0)
			return -1;
	memset(r, 0, sizeof(*r));
	r->key = IMAP_SK_AND;
	r->child = ch;
	r->nchild = k;
	return 0;
}

static int
search_key(struct imap_parser *p, const struct imap_arg *a, size_t n, size_t *i,
    unsigned depth, struct imap_search *r)
{
	const struct imap_arg *k = &a[*i];
	const char *err;

	if (depth > p->lim.depth_max)
		return fail_cmd(p, "Search program too deeply nested");
	memset(r, 0, sizeof(*r));
	(*i)++;
	if (k->type == IMAP_ARG_LIST)
		return search_list(p, k->list, k->count, depth, r);
	if (k->type != IMAP_ARG_ATOM)
		return fail_cmd(p, "Invalid search key");
	if (isdigit((unsigned char)k->str[0]) || k->str[0] == '*' || k->str[0] == '$') {
		r->key = IMAP_SK_SEQSET;
		if (imap_seqset_parse(p, k->str, &r->set, &err) < 0)
			return fail_cmd(p, err);
		return 0;
	}
	for (size_t t = 0; t < sizeof(search_keys) / sizeof(search_keys[0]); t++) {
		char want;

		if (strcasecmp(k->str, search_keys[t].name) != 0)
			continue;
		r->key = search_keys[t].key;
		want = search_keys[t].arg;
		if (want == 0)
			return 0;
		if (*i >= n)
			return fail_cmd(p, "Missing search argument");
		k = &a[*i];
		switch (want) {
		case 's':
		case 'h':
			if (!imap_arg_is_astring(k))
				return fail_cmd(p, "Invalid search argument");
			r->str = k->str;
			(*i)++;
			if (want == 'h') {
				if (*i >= n || !imap_arg_is_astring(&a[*i]))
					return fail_cmd(p, "Invalid search argument");
				r->str2 = a[(*i)++].str;
			}
			return 0;
		case 'f':
			if (!check_flag(k) || k->str[0] == '\\')
				return fail_cmd(p, "Invalid keyword");
			r->str = k->str;
			(*i)++;
			return 0;
		case 'd':
			if ((k->type != IMAP_ARG_ATOM && k->type != IMAP_ARG_QUOTED) ||
			    parse_date(k->str, &r->year, &r->month, &r->day) < 0)
				return fail_cmd(p, "Invalid search date");
			(*i)++;
			return 0;
		case 'n':
			if (k->type != IMAP_ARG_ATOM || parse_num(k->str, 0, &r->num) != k->len)
				return fail_cmd(p, "Invalid search number");
			(*i)++;
			return 0;
		case 'u':
			(*i)++;
			if (k->type != IMAP_ARG_ATOM || imap_seqset_parse(p, k->str, &r->set, &err) < 0)
				return fail_cmd(p, "Invalid UID set");
			return 0;
		case 'k':
		case 'o': {
			size_t nch = want == 'k' ? 1 : 2;
			struct imap_search *ch = arena_alloc(p, nch * sizeof(*ch));

			for (size_t j = 0; j < nch; j++) {
				if (*i >= n)
					return fail_cmd(p, "Missing search key");
				if (search_key(p, a, n, i, depth + 1, &ch[j]) < 0)
					return -1;
			}
			r->child = ch;
			r->nchild = nch;
			return 0;
		}
		}
	}
	if (k->len <= 40) {
		/* Dovecot's text names it */
		char *t = arena_alloc(p, k->len + 20);

		snprintf(t, k->len + 20, "Unknown argument %s", k->str);
		for (char *c = t + 17; *c != '\0'; c++)
			*c = (char)toupper((unsigned char)*c);
		return fail_cmd(p, t);
	}
	return fail_cmd(p, "Unknown search key");
}

static int
check_search(struct imap_parser *p, struct imap_cmd *c)
{
	const struct imap_arg *a = c->args;
	size_t n = c->nargs, i = 0;
	struct imap_search *root;

	if (i + 1 < n && a[i].type == IMAP_ARG_ATOM && strcasecmp(a[i].str, "RETURN") == 0 &&
	    a[i + 1].type == IMAP_ARG_LIST) {
		static const struct { const char *n; unsigned bit; } opts[] = {
			{ "MIN", IMAP_SEARCH_RETURN_MIN }, { "MAX", IMAP_SEARCH_RETURN_MAX },
			{ "ALL", IMAP_SEARCH_RETURN_ALL }, { "COUNT", IMAP_SEARCH_RETURN_COUNT },
			{ "SAVE", IMAP_SEARCH_RETURN_SAVE },
		};
		const struct imap_arg *l = &a[i + 1];

		c->search_return = IMAP_SEARCH_RETURN_ESEARCH;
		for (size_t j = 0; j < l->count; j++) {
			size_t o;

			for (o = 0; o < sizeof(opts) / sizeof(opts[0]); o++)
				if (l->list[j].type == IMAP_ARG_ATOM &&
				    strcasecmp(l->list[j].str, opts[o].n) == 0)
					break;
			if (o == sizeof(opts) / sizeof(opts[0]))
				return fail_cmd(p, "Unknown search return option");
			c->search_return |= opts[o].bit;
		}
		i += 2;
	}
	if (i + 1 < n && a[i].type == IMAP_ARG_ATOM && strcasecmp(a[i].str, "CHARSET") == 0) {
		if (!imap_arg_is_astring(&a[i + 1]))
			return fail_cmd(p, "Invalid charset");
		c->charset = a[i + 1].str;
		i += 2;
	}
	root = arena_alloc(p, sizeof(*root));
	if (search_list(p, a + i, n - i, 0, root) < 0)
		return -1;
	c->search = root;
	return 0;
}

/* ---- the command table ---- */

static int
chk_none(struct imap_parser *p, struct imap_cmd *c)
{
	return c->nargs == 0 ? 0 : fail_cmd(p, "Unexpected arguments");
}

static int
chk_authenticate(struct imap_parser *p, struct imap_cmd *c)
{
	if (c->nargs < 1 || c->nargs > 2 || c->args[0].type != IMAP_ARG_ATOM ||
	    !is_strict_atom(c->args[0].str) ||
	    (c->nargs == 2 && c->args[1].type != IMAP_ARG_ATOM))
		return fail_cmd(p, "Invalid arguments");
	return 0;
}

static int
chk_astrings(struct imap_parser *p, struct imap_cmd *c, size_t want)
{
	if (c->nargs != want)
		return fail_cmd(p, "Invalid arguments");
	for (size_t i = 0; i < want; i++)
		if (!is_astring(&c->args[i]))
			return fail_cmd(p, "Invalid arguments");
	return 0;
}

static int chk_one_astring(struct imap_parser *p, struct imap_cmd *c) { return chk_astrings(p, c, 1); }
static int chk_two_astrings(struct imap_parser *p, struct imap_cmd *c) { return chk_astrings(p, c, 2); }

/* mailbox [ (params) ]: SELECT, EXAMINE, CREATE */
static int
chk_mailbox_params(struct imap_parser *p, struct imap_cmd *c)
{
	if (c->nargs < 1 || c->nargs > 2 || !is_astring(&c->args[0]) ||
	    (c->nargs == 2 && c->args[1].type != IMAP_ARG_LIST))
		return fail_cmd(p, "Invalid arguments");
	return 0;
}

/* LIST [(selection)] reference pattern|(patterns) [RETURN (options)] (RFC 5258) */
static int
chk_list(struct imap_parser *p, struct imap_cmd *c)
{
	const struct imap_arg *a = c->args;
	size_t n = c->nargs, i = 0;

	if (n > 0 && a[0].type == IMAP_ARG_LIST)
		i++;
	if (i + 2 > n || !is_astring(&a[i]))
		return fail_cmd(p, "Invalid arguments");
	if (a[i + 1].type == IMAP_ARG_LIST) {
		if (a[i + 1].count == 0)
			return fail_cmd(p, "Invalid arguments");
		for (size_t j = 0; j < a[i + 1].count; j++)
			if (!is_list_mailbox(&a[i + 1].list[j]))
				return fail_cmd(p, "Invalid arguments");
	} else if (!is_list_mailbox(&a[i + 1])) {
		return fail_cmd(p, "Invalid arguments");
	}
	i += 2;
	if (i == n)
		return 0;
	if (i + 2 == n && a[i].type == IMAP_ARG_ATOM && strcasecmp(a[i].str, "RETURN") == 0 &&
	    a[i + 1].type == IMAP_ARG_LIST)
		return 0;
	return fail_cmd(p, "Invalid arguments");
}

static int
chk_lsub(struct imap_parser *p, struct imap_cmd *c)
{
	if (c->nargs != 2 || !is_astring(&c->args[0]) || !is_list_mailbox(&c->args[1]))
		return fail_cmd(p, "Invalid arguments");
	return 0;
}

static int
chk_status(struct imap_parser *p, struct imap_cmd *c)
{
	const struct imap_arg *l;

	if (c->nargs != 2 || !is_astring(&c->args[0]) || c->args[1].type != IMAP_ARG_LIST ||
	    c->args[1].count == 0)
		return fail_cmd(p, "Invalid arguments");
	l = &c->args[1];
	for (size_t i = 0; i < l->count; i++)
		if (l->list[i].type != IMAP_ARG_ATOM || !is_strict_atom(l->list[i].str))
			return fail_cmd(p, "Invalid status item");
	return 0;
}

/* date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE */
static int
is_date_time(const char *s)
{
	static const char shape[] = "dd-MMM-yyyy hh:mm:ss +zzzz";
	int y, m, d;
	char day[16];

	if (strlen(s) != sizeof(shape) - 1)
		return 0;
	for (size_t i = 11; i < sizeof(shape) - 1; i++) {
		char want = shape[i];

		if (want == '+') {
			if (s[i] != '+' && s[i] != '-')
				return 0;
		} else if (strchr("hmsz", want) != NULL) {
			if (!isdigit((unsigned char)s[i]))
				return 0;
		} else if (s[i] != want) {
			return 0;
		}
	}
	memcpy(day, s, 11);
	day[11] = '\0';
	return parse_date(day[0] == ' ' ? day + 1 : day, &y, &m, &d) == 0;
}

static int
chk_append(struct imap_parser *p, struct imap_cmd *c)
{
	const struct imap_arg *a = c->args;
	size_t n = c->nargs, i = 1;

	if (n < 2 || !is_astring(&a[0]))
		return fail_cmd(p, "Invalid arguments");
	if (i < n - 1 && a[i].type == IMAP_ARG_LIST) {
		if (check_flag_list(p, a[i].list, a[i].count, c) < 0)
			return -1;
		i++;
	}
	if (i < n - 1 && a[i].type == IMAP_ARG_QUOTED) {
		if (!is_date_time(a[i].str))
			return fail_cmd(p, "Invalid date-time");
		c->append_date = a[i].str;
		i++;
	}
	if (i != n - 1 || a[i].type != IMAP_ARG_LITERAL)
		return fail_cmd(p, "Invalid arguments");
	c->append_msg = &a[i];
	return 0;
}

static int
chk_search(struct imap_parser *p, struct imap_cmd *c)
{
	return check_search(p, c);
}

static int
chk_fetch(struct imap_parser *p, struct imap_cmd *c)
{
	/* an optional trailing modifier list (RFC 4466) is left to the protocol layer */
	if (c->nargs < 2 || c->nargs > 3 || (c->nargs == 3 && c->args[2].type != IMAP_ARG_LIST))
		return fail_cmd(p, "Invalid arguments");
	if (check_seqset(p, &c->args[0], &c->seq) < 0)
		return -1;
	return check_fetch(p, &c->args[1], c);
}

static int
chk_store(struct imap_parser *p, struct imap_cmd *c)
{
	const char *item;

	if (c->nargs < 3 || c->args[1].type != IMAP_ARG_ATOM)
		return fail_cmd(p, "Invalid arguments");
	if (check_seqset(p, &c->args[0], &c->seq) < 0)
		return -1;
	item = c->args[1].str;
	c->store_mode = IMAP_STORE_REPLACE;
	if (item[0] == '+' || item[0] == '-') {
		c->store_mode = item[0] == '+' ? IMAP_STORE_ADD : IMAP_STORE_REMOVE;
		item++;
	}
	if (strcasecmp(item, "FLAGS.SILENT") == 0)
		c->store_silent = 1;
	else if (strcasecmp(item, "FLAGS") != 0)
		return fail_cmd(p, "Invalid arguments");
	if (c->nargs == 3 && c->args[2].type == IMAP_ARG_LIST)
		return check_flag_list(p, c->args[2].list, c->args[2].count, c);
	return check_flag_list(p, c->args + 2, c->nargs - 2, c);
}

static int
chk_copy(struct imap_parser *p, struct imap_cmd *c)
{
	if (c->nargs != 2 || !is_astring(&c->args[1]))
		return fail_cmd(p, "Invalid arguments");
	return check_seqset(p, &c->args[0], &c->seq);
}

static int
chk_expunge(struct imap_parser *p, struct imap_cmd *c)
{
	if (!c->uid)
		return chk_none(p, c);
	if (c->nargs != 1)
		return fail_cmd(p, "Invalid arguments");
	return check_seqset(p, &c->args[0], &c->seq);
}

static int
chk_enable(struct imap_parser *p, struct imap_cmd *c)
{
	if (c->nargs == 0)
		return fail_cmd(p, "Invalid arguments");
	for (size_t i = 0; i < c->nargs; i++)
		if (c->args[i].type != IMAP_ARG_ATOM || !is_strict_atom(c->args[i].str))
			return fail_cmd(p, "Invalid arguments");
	return 0;
}

/* ID ( "name" "value" ... ) or NIL (RFC 2971: at most 30 pairs) */
static int
chk_id(struct imap_parser *p, struct imap_cmd *c)
{
	const struct imap_arg *l;

	if (c->nargs != 1)
		return fail_cmd(p, "Invalid arguments");
	if (imap_arg_is_nil(&c->args[0]))
		return 0;
	l = &c->args[0];
	if (l->type != IMAP_ARG_LIST || l->count % 2 != 0 || l->count > 60)
		return fail_cmd(p, "Invalid arguments");
	for (size_t i = 0; i < l->count; i++)
		if (l->list[i].type == IMAP_ARG_LIST ||
		    (i % 2 == 0 && imap_arg_is_nil(&l->list[i])))
			return fail_cmd(p, "Invalid arguments");
	return 0;
}

static const struct {
	const char *name;
	int (*check)(struct imap_parser *, struct imap_cmd *);
	int uid_ok;	/* may follow UID */
} commands[] = {
	{ "CAPABILITY", chk_none, 0 }, { "NOOP", chk_none, 0 }, { "LOGOUT", chk_none, 0 },
	{ "STARTTLS", chk_none, 0 }, { "AUTHENTICATE", chk_authenticate, 0 },
	{ "LOGIN", chk_two_astrings, 0 }, { "SELECT", chk_mailbox_params, 0 },
	{ "EXAMINE", chk_mailbox_params, 0 }, { "CREATE", chk_mailbox_params, 0 },
	{ "DELETE", chk_one_astring, 0 }, { "RENAME", chk_two_astrings, 0 },
	{ "SUBSCRIBE", chk_one_astring, 0 }, { "UNSUBSCRIBE", chk_one_astring, 0 },
	{ "LIST", chk_list, 0 }, { "LSUB", chk_lsub, 0 }, { "STATUS", chk_status, 0 },
	{ "APPEND", chk_append, 0 }, { "CHECK", chk_none, 0 }, { "CLOSE", chk_none, 0 },
	{ "UNSELECT", chk_none, 0 }, { "EXPUNGE", chk_expunge, 1 },
	{ "SEARCH", chk_search, 1 }, { "FETCH", chk_fetch, 1 }, { "STORE", chk_store, 1 },
	{ "COPY", chk_copy, 1 }, { "MOVE", chk_copy, 1 }, { "IDLE", chk_none, 0 },
	{ "NAMESPACE", chk_none, 0 }, { "ENABLE", chk_enable, 0 }, { "ID", chk_id, 0 },
};

/* the top-level arguments are complete: type them; 0 ok, -1 p->err set */
static int
command_finish(struct imap_parser *p)
{
	struct argvec *v = &p->stack[0];
	struct imap_cmd *c = &p->cmd;
	struct imap_arg *args;
	char *name;
	size_t skip = 2;

	memset(c, 0, sizeof(*c));
	if (v->n < 2 || v->a[1].type != IMAP_ARG_ATOM)
		return fail_cmd(p, v->n < 2 ? "Missing command" : "Invalid command name");
	args = arena_alloc(p, v->n * sizeof(*args));
	memcpy(args, v->a, v->n * sizeof(*args));
	c->tag = args[0].str;
	name = (char *)args[1].str;
	for (char *s = name; *s != '\0'; s++)
		*s = (char)toupper((unsigned char)*s);
	if (strcmp(name, "UID") == 0) {
		if (v->n < 3 || args[2].type != IMAP_ARG_ATOM)
			return fail_cmd(p, "Missing UID command");
		c->uid = 1;
		name = (char *)args[2].str;
		for (char *s = name; *s != '\0'; s++)
			*s = (char)toupper((unsigned char)*s);
		skip = 3;
	}
	c->name = name;
	c->args = args + skip;
	c->nargs = v->n - skip;
	c->append_streamed = p->append_streamed;
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(commands[i].name, name) != 0)
			continue;
		if (c->uid && !commands[i].uid_ok)
			return fail_cmd(p, "Unknown UID command");
		return commands[i].check(p, c);
	}
	return fail_cmd(p, "Unknown command");
}

/* ---- events ---- */

/* an atom upper-cased onto OUT at *N; 0, or -1 when it is not a plain atom */
static int
name_part(const struct imap_arg *a, char *out, size_t *n, size_t cap)
{
	for (size_t i = 0; i < a->len; i++) {
		unsigned char c = (unsigned char)a->str[i];

		if (!is_strict_atom_char(c) || *n + 1 >= cap)
			return -1;
		out[(*n)++] = (char)toupper(c);
	}
	out[*n] = '\0';
	return 0;
}

/* the command name of the line so far ("UID FETCH"), for the error text;
 * "" when there is none yet or it is too odd to repeat */
static void
cmd_name(const struct imap_parser *p, char *out, size_t cap)
{
	const struct argvec *v = &p->stack[0];
	size_t n = 0;

	out[0] = '\0';
	if (!p->have_tag || v->n < 2 || v->a[1].type != IMAP_ARG_ATOM || v->a[1].len > 32 ||
	    p->err == NULL || strcmp(p->err, "Invalid command name") == 0)
		return;
	if (name_part(&v->a[1], out, &n, cap) < 0) {
		out[0] = '\0';
		return;
	}
	if (v->n >= 3 && strcmp(out, "UID") == 0 && v->a[2].type == IMAP_ARG_ATOM &&
	    v->a[2].len <= 12) {
		out[n++] = ' ';
		if (name_part(&v->a[2], out, &n, cap) < 0)
			out[0] = '\0';
	}
}

static enum imap_event_type
error_reply(struct imap_parser *p, struct imap_event *ev)
{
	char name[48];
	int n;

	if (p->silent) {
		/* a refused APPEND's line: the caller has answered */
		line_reset(p);
		return IMAP_EV_NONE;
	}
	cmd_name(p, name, sizeof(name));
	if (name[0] != '\0' && !p->err_no && p->errcode == NULL) {
		/* Dovecot's form: "BAD Error in IMAP command FETCH: Invalid arguments." */
		size_t el = strlen(p->err);

		n = snprintf(ev->reply, sizeof(ev->reply), "%s BAD Error in IMAP command %s: %s%s\r\n",
		    p->have_tag ? p->tag : "*", name, p->err,
		    el > 0 && p->err[el - 1] == '.' ? "" : ".");
	} else {
		n = snprintf(ev->reply, sizeof(ev->reply), "%s %s %s%s%s%s\r\n",
		    p->have_tag ? p->tag : "*", p->err_no ? "NO" : "BAD",
		    p->errcode ? "[" : "", p->errcode ? p->errcode : "", p->errcode ? "] " : "",
		    p->err);
	}
	if (n < 0 || (size_t)n >= sizeof(ev->reply))
		snprintf(ev->reply, sizeof(ev->reply), "* BAD Invalid command\r\n");
	if (!p->err_no && ++p->bad > p->lim.bad_max) {
		size_t len = strlen(ev->reply);

		snprintf(ev->reply + len, sizeof(ev->reply) - len,
		    "* BYE Too many invalid IMAP commands.\r\n");
		p->dead = 1;
		line_reset(p);
		return IMAP_EV_DISCONNECT;
	}
	line_reset(p);
	return IMAP_EV_REPLY;
}

/* the line ended (LF seen, outside a literal) */
static enum imap_event_type
line_end(struct imap_parser *p, struct imap_event *ev)
{
	if (p->err == NULL && p->depth > 0)
		fail_cmd(p, "Missing ')'");
	if (p->err == NULL && command_finish(p) == 0) {
		p->bad = 0;
		ev->cmd = &p->cmd;
		p->cmd_ready = 1;	/* before line_reset: the arena holds the command */
		line_reset(p);
		return IMAP_EV_COMMAND;
	}
	return error_reply(p, ev);
}

static enum imap_event_type
idle_byte(struct imap_parser *p, unsigned char c, struct imap_event *ev)
{
	if (c == '\n') {
		int done = p->toklen == 4 && strncasecmp(p->tok, "DONE", 4) == 0;

		p->idle = 0;
		if (done) {
			line_reset(p);
			return IMAP_EV_IDLE_DONE;
		}
		p->err = "Expected DONE";
		return error_reply(p, ev);
	}
	if (c == '\r')
		return IMAP_EV_NONE;
	if (p->toklen < 8)
		tok_add(p, (const char *)&c, 1);
	else
		p->toklen = 8;	/* too long to be DONE; keep reading the line */
	return IMAP_EV_NONE;
}

/* while skipping: follow "{n+}" at the end of a line, whose bytes come anyway */
static enum imap_event_type
skip_byte(struct imap_parser *p, unsigned char c, struct imap_event *ev)
{
	if (c == '\n') {
		if (p->sk == 4 && p->skplus) {
			if (p->skn > p->lim.literal_max) {
				snprintf(ev->reply, sizeof(ev->reply),
				    "* BYE [TOOBIG] Literal too big\r\n");
				p->dead = 1;
				return IMAP_EV_DISCONNECT;
			}
			p->st = L_SKIP_LIT;
			p->litn = p->skn;
			p->sk = 0;
			return IMAP_EV_NONE;
		}
		return error_reply(p, ev);
	}
	switch (p->sk) {
	case 1:
	case 2:
		if (isdigit(c)) {
			p->skn = p->skn * 10 + (c - '0');
			if (p->skn > (1ull << 40))
				p->skn = 1ull << 40;
			p->sk = 2;
		} else if (c == '+' && p->sk == 2) {
			p->skplus = 1;
			p->sk = 3;
		} else if (c == '}' && p->sk == 2) {
			p->sk = 4;
		} else {
			p->sk = c == '{';
		}
		break;
	case 3:
		p->sk = c == '}' ? 4 : (c == '{');
		break;
	case 4:
		if (c != '\r')
			p->sk = c == '{';
		break;
	default:
		p->sk = c == '{';
		break;
	}
	if (p->sk == 1) {
		p->skn = 0;
		p->skplus = 0;
	}
	return IMAP_EV_NONE;
}

size_t
imap_parser_feed(struct imap_parser *p, const void *data, size_t len, struct imap_event *ev)
{
	const unsigned char *s = data;
	size_t i = 0;
	enum imap_event_type t = IMAP_EV_NONE;

	ev->type = IMAP_EV_NONE;
	ev->cmd = NULL;
	ev->reply[0] = '\0';
	ev->data = NULL;
	ev->datalen = 0;
	if (p->cmd_ready) {
		arena_reset(p);
		p->cmd_ready = 0;
	}
	if (p->dead)
		return 0;
	while (i < len && t == IMAP_EV_NONE) {
		unsigned char c = s[i];

		if (p->st == L_APPEND_WAIT)
			break;
		if (p->st == L_APPEND_DATA) {
			size_t take = len - i;

			if (take > p->append_left)
				take = (size_t)p->append_left;
			ev->data = (const char *)s + i;
			ev->datalen = take;
			i += take;
			p->append_left -= take;
			t = IMAP_EV_APPEND_DATA;
			if (p->append_left == 0)
				append_done(p);
			continue;
		}
		if (p->st == L_LIT_DATA) {
			size_t take = len - i;

			if (take > p->litn)
				take = (size_t)p->litn;
			tok_add(p, (const char *)s + i, take);
			i += take;
			p->litn -= take;
			if (p->litn == 0)
				token_end(p, IMAP_ARG_LITERAL);
			continue;
		}
		if (p->st == L_SKIP_LIT) {
			size_t take = len - i;

			if (take > p->litn)
				take = (size_t)p->litn;
			i += take;
			p->litn -= take;
			if (p->litn == 0)
				p->st = L_SKIP;
			continue;
		}
		i++;
		if (p->st == L_IDLE) {
			t = idle_byte(p, c, ev);
			continue;
		}
		if (p->st == L_SKIP) {
			t = skip_byte(p, c, ev);
			continue;
		}
		if (!p->in_line && (c == '\n' || c == '\r') && p->st == L_START) {
			continue;	/* empty lines are ignored */
		}
		p->in_line = 1;
		if (++p->linelen > p->lim.line_max) {
			fail(p, "TOOBIG", "Line too long");
			t = skip_byte(p, c, ev);
			continue;
		}
		switch (p->st) {
		case L_START:
			if (c == '"') {
				p->toklen = 0;
				tok_add(p, "", 0);
				p->st = L_QUOTED;
			} else if (c == '(') {
				list_open(p);
			} else if (c == ')' && p->depth > 0 && p->stack[p->depth].n == 0) {
				list_close(p);	/* "()" */
			} else if (c == '{') {
				p->litn = 0;
				p->litplus = 0;
				p->toklen = 0;
				p->st = L_LIT_LEN;
			} else if (c == '\r' || c == '\n') {
				/* a trailing space is tolerated, as Dovecot does */
				if (c == '\r')
					p->st = L_CR;
				else
					t = line_end(p, ev);
			} else if (is_atom_char(c)) {
				p->toklen = 0;
				tok_add(p, (const char *)&c, 1);
				p->st = c == '[' ? L_BRACKET : L_ATOM;
			} else {
				fail(p, NULL, c == ' ' ? "Double space" : "Invalid character");
			}
			break;
		case L_ATOM:
			if (is_atom_char(c)) {
				tok_add(p, (const char *)&c, 1);
				if (c == '[')
					p->st = L_BRACKET;
				break;
			}
			token_end(p, IMAP_ARG_ATOM);
			if (p->err != NULL)
				break;
			/* the byte that ended the atom is read as after a token */
			__attribute__((fallthrough));
		case L_AFTER:
			if (c == ' ')
				p->st = L_START;
			else if (c == ')')
				list_close(p);
			else if (c == '\r')
				p->st = L_CR;
			else if (c == '\n')
				t = line_end(p, ev);
			else
				fail(p, NULL, c >= 0x80 || c < 0x20 ? "Invalid character" :
				    "Missing space");
			break;
		case L_BRACKET:
			if (c == '\r' || c == '\n' || c == '{' || c >= 0x80 || c < 0x20) {
				fail(p, NULL, "Invalid BODY[..] parameter: Missing ']'");
				break;
			}
			tok_add(p, (const char *)&c, 1);
			if (c == ']')
				p->st = L_ATOM;
			else if (c == '"')
				p->st = L_BRACKET_Q;
			break;
		case L_BRACKET_Q:
		case L_BRACKET_QE:
			if (c == '\r' || c == '\n' || c == '\0') {
				fail(p, NULL, "Unterminated quoted string");
				break;
			}
			tok_add(p, (const char *)&c, 1);
			if (p->st == L_BRACKET_QE)
				p->st = L_BRACKET_Q;
			else if (c == '\\')
				p->st = L_BRACKET_QE;
			else if (c == '"')
				p->st = L_BRACKET;
			break;
		case L_QUOTED:
			if (c == '"') {
				token_end(p, IMAP_ARG_QUOTED);
			} else if (c == '\\') {
				p->st = L_QUOTED_ESC;
			} else if (c == '\r' || c == '\n' || c == '\0') {
				fail(p, NULL, "Unterminated quoted string");
			} else {
				tok_add(p, (const char *)&c, 1);
			}
			break;
		case L_QUOTED_ESC:
			if (c == '"' || c == '\\') {
				tok_add(p, (const char *)&c, 1);
				p->st = L_QUOTED;
			} else {
				fail(p, NULL, "Invalid escape in quoted string");
			}
			break;
		case L_LIT_LEN:
			if (isdigit(c)) {
				p->litn = p->litn * 10 + (c - '0');
				p->toklen++;	/* digits seen */
				if (p->litn > (1ull << 40))
					p->litn = 1ull << 40;
			} else if (c == '+' && p->toklen > 0) {
				p->litplus = 1;
				p->st = L_LIT_PLUS;
			} else if (c == '}' && p->toklen > 0) {
				p->st = L_LIT_CLOSE;
			} else {
				fail(p, NULL, "Invalid literal");
			}
			break;
		case L_LIT_PLUS:
			if (c == '}') {
				p->st = L_LIT_CLOSE;
			} else {
				fail(p, NULL, "Invalid literal");
			}
			break;
		case L_LIT_CLOSE:
		case L_LIT_CR:
			if (c == '\r' && p->st == L_LIT_CLOSE) {
				p->st = L_LIT_CR;
			} else if (c == '\n') {
				t = literal_begin(p, ev);
				if (t == IMAP_EV_REPLY)
					t = error_reply(p, ev);
				else if (p->st == L_LIT_DATA && p->litn == 0)
					token_end(p, IMAP_ARG_LITERAL);
				else if (p->st == L_SKIP_LIT && p->litn == 0)
					p->st = L_SKIP;
			} else {
				fail(p, NULL, "Missing line end after literal");
			}
			break;
		case L_CR:
			if (c == '\n') {
				t = line_end(p, ev);
			} else {
				fail(p, NULL, "Bare CR");
			}
			break;
		default:
			break;
		}
		/* an error found at the line's LF: the line is over */
		if (t == IMAP_EV_NONE && p->st == L_SKIP && c == '\n')
			t = skip_byte(p, c, ev);
	}
	ev->type = t;
	if (t == IMAP_EV_COMMAND || t == IMAP_EV_APPEND)
		ev->cmd = &p->cmd;
	return i;
}
