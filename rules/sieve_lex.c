/*
 * sieve_lex.c - the RFC 5228 lexer: identifiers, tags, numbers with K/M/G,
 * quoted strings (\x escapes), multi-line text: strings with dot-stuffing,
 * # and C comments, punctuation.
 *
 *   sv_lex_init() / sv_lex_next() / sv_lex_deinit()
 *
 * Every error is reported as FILE:LINE:COLUMN into lx->err and yields
 * TK_ERR; the token after it starts past the bad bytes. Never reads past
 * lx->end; a string longer than SIEVE_MAX_STRING is an error, not a cut.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdio.h>
#include "rules/sieve_ast.h"
#include "common/xmalloc.h"

#define MAX_IDENT 32

void sv_lex_init(struct sv_lexer *lx, const char *name, const char *text, size_t len,
    struct sieve_errors *err)
{
	memset(lx, 0, sizeof(*lx));
	lx->name = name;
	lx->p = text;
	lx->end = text + len;
	lx->line = 1;
	lx->col = 1;
	lx->err = err;
}

void sv_lex_deinit(struct sv_lexer *lx)
{
	free(lx->text);
	lx->text = NULL;
}

const char *sv_tok_name(enum sv_tok t)
{
	static const char *const names[] = {
		"end of script", "invalid token", "identifier", "tag", "number", "string",
		"'['", "']'", "'('", "')'", "'{'", "'}'", "','", "';'",
	};
	return names[t];
}

static int peekc(struct sv_lexer *lx, size_t off)
{
	return lx->p + off < lx->end ? (unsigned char)lx->p[off] : -1;
}

static void adv(struct sv_lexer *lx)
{
	if (lx->p >= lx->end)
		return;
	if (*lx->p == '\n') {
		lx->line++;
		lx->col = 1;
	} else {
		lx->col++;
	}
	lx->p++;
}

static void lerr(struct sv_lexer *lx, const char *msg)
{
	sieve_error_add(lx->err, lx->name, lx->tline, lx->tcol, "%s", msg);
	lx->nerrors++;
	lx->tok = TK_ERR;
}

struct sbuf { char *s; size_t len, cap; };
static void sb_put(struct sbuf *b, char c)
{
	if (b->len + 2 > b->cap) {
		b->cap = b->cap ? b->cap * 2 : 64;
		b->s = xrealloc(b->s, b->cap);
	}
	b->s[b->len++] = c;
	b->s[b->len] = '\0';
}

static int isidstart(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static int isidchar(int c) { return isidstart(c) || (c >= '0' && c <= '9'); }

static int skip_ws(struct sv_lexer *lx)
{
	for (;;) {
		int c = peekc(lx, 0);
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			adv(lx);
		} else if (c == '#') {
			while (peekc(lx, 0) >= 0 && peekc(lx, 0) != '\n')
				adv(lx);
		} else if (c == '/' && peekc(lx, 1) == '*') {
			lx->tline = lx->line;
			lx->tcol = lx->col;
			adv(lx);
			adv(lx);
			for (;;) {
				if (peekc(lx, 0) < 0) {
					lerr(lx, "end of file before end of bracket comment ('/* ... */') "
					    "started at this position");
					return -1;
				}
				if (peekc(lx, 0) == '*' && peekc(lx, 1) == '/') {
					adv(lx);
					adv(lx);
					break;
				}
				adv(lx);
			}
		} else {
			return 0;
		}
	}
}

static void lex_quoted(struct sv_lexer *lx)
{
	struct sbuf b = { 0 };
	adv(lx);
	sb_put(&b, 0);
	b.len = 0;
	for (;;) {
		int c = peekc(lx, 0);
		if (c < 0) {
			free(b.s);
			lerr(lx, "end of file before end of quoted string");
			return;
		}
		adv(lx);
		if (c == '"')
			break;
		if (c == '\\') {
			c = peekc(lx, 0);
			if (c < 0)
				continue;
			adv(lx);
		}
		if (b.len >= SIEVE_MAX_STRING) {
			free(b.s);
			while (peekc(lx, 0) >= 0 && peekc(lx, 0) != '"')
				adv(lx);
			adv(lx);
			lerr(lx, "string is too long");
			return;
		}
		/* line ends in strings are CRLF (RFC 5228 2.4.2), as Pigeonhole has them */
		if (c == '\n' && (b.len == 0 || b.s[b.len - 1] != '\r'))
			sb_put(&b, '\r');
		sb_put(&b, (char)c);
	}
	lx->text = b.s;
	lx->len = b.len;
	lx->tok = TK_STR;
}

static void lex_multiline(struct sv_lexer *lx)
{
	struct sbuf b = { 0 };
	/* "text:" then whitespace, an optional # comment, the line end */
	while (peekc(lx, 0) == ' ' || peekc(lx, 0) == '\t')
		adv(lx);
	if (peekc(lx, 0) == '#') {
		while (peekc(lx, 0) >= 0 && peekc(lx, 0) != '\n')
			adv(lx);
	}
	if (peekc(lx, 0) == '\r')
		adv(lx);
	if (peekc(lx, 0) != '\n') {
		while (peekc(lx, 0) >= 0 && peekc(lx, 0) != '\n')
			adv(lx);
		lerr(lx, "invalid character after text: in multi-line string");
		return;
	}
	adv(lx);
	sb_put(&b, 0);
	b.len = 0;
	for (;;) {
		/* at the start of a line */
		if (peekc(lx, 0) < 0) {
			free(b.s);
			lerr(lx, "end of file before end of multi-line string");
			return;
		}
		if (peekc(lx, 0) == '.') {
			int c1 = peekc(lx, 1);
			if (c1 == '\n' || (c1 == '\r' && peekc(lx, 2) == '\n') || c1 < 0) {
				adv(lx);
				if (peekc(lx, 0) == '\r')
					adv(lx);
				adv(lx);
				break;
			}
			if (c1 == '.')
				adv(lx);
		}
		for (;;) {
			int c = peekc(lx, 0);
			if (c < 0)
				break;
			adv(lx);
			if (b.len >= SIEVE_MAX_STRING) {
				free(b.s);
				lerr(lx, "string is too long");
				return;
			}
			if (c == '\n' && (b.len == 0 || b.s[b.len - 1] != '\r'))
				sb_put(&b, '\r');
			sb_put(&b, (char)c);
			if (c == '\n')
				break;
		}
	}
	lx->text = b.s;
	lx->len = b.len;
	lx->tok = TK_STR;
}

static void lex_number(struct sv_lexer *lx)
{
	uint64_t v = 0;
	int over = 0;
	while (peekc(lx, 0) >= '0' && peekc(lx, 0) <= '9') {
		unsigned d = (unsigned)(peekc(lx, 0) - '0');
		if (v > (UINT64_MAX - d) / 10)
			over = 1;
		else
			v = v * 10 + d;
		adv(lx);
	}
	int c = peekc(lx, 0);
	unsigned shift = 0;
	if (c == 'k' || c == 'K')
		shift = 10;
	else if (c == 'm' || c == 'M')
		shift = 20;
	else if (c == 'g' || c == 'G')
		shift = 30;
	if (shift) {
		adv(lx);
		if (v > (UINT64_MAX >> shift))
			over = 1;
		else
			v <<= shift;
	}
	if (isidchar(peekc(lx, 0))) {
		while (isidchar(peekc(lx, 0)))
			adv(lx);
		lerr(lx, "invalid character in number");
		return;
	}
	if (over) {
		lerr(lx, "number exceeds integer limits");
		v = UINT64_MAX;
	}
	lx->num = v;
	lx->tok = TK_NUM;
}

void sv_lex_next(struct sv_lexer *lx)
{
	free(lx->text);
	lx->text = NULL;
	lx->len = 0;
	if (skip_ws(lx) < 0)
		return;
	lx->tline = lx->line;
	lx->tcol = lx->col;
	int c = peekc(lx, 0);
	switch (c) {
	case -1: lx->tok = TK_EOF; return;
	case '[': adv(lx); lx->tok = TK_LBRACKET; return;
	case ']': adv(lx); lx->tok = TK_RBRACKET; return;
	case '(': adv(lx); lx->tok = TK_LPAREN; return;
	case ')': adv(lx); lx->tok = TK_RPAREN; return;
	case '{': adv(lx); lx->tok = TK_LBRACE; return;
	case '}': adv(lx); lx->tok = TK_RBRACE; return;
	case ',': adv(lx); lx->tok = TK_COMMA; return;
	case ';': adv(lx); lx->tok = TK_SEMI; return;
	case '"': lex_quoted(lx); return;
	default: break;
	}
	if (c >= '0' && c <= '9') {
		lex_number(lx);
		return;
	}
	int tag = 0;
	if (c == ':') {
		tag = 1;
		adv(lx);
		if (!isidstart(peekc(lx, 0))) {
			lerr(lx, "missing identifier after ':' of tagged argument");
			return;
		}
	}
	if (isidstart(peekc(lx, 0))) {
		const char *start = lx->p;
		while (isidchar(peekc(lx, 0)))
			adv(lx);
		size_t n = (size_t)(lx->p - start);
		if (!tag && n == 4 && strncasecmp(start, "text", 4) == 0 && peekc(lx, 0) == ':') {
			adv(lx);
			lex_multiline(lx);
			return;
		}
		if (n > MAX_IDENT)
			lerr(lx, tag ? "tagged argument is too long" : "identifier is too long");
		lx->text = xstrndup(start, n);
		lx->len = n;
		lx->tok = tag ? TK_TAG : TK_ID;
		return;
	}
	char msg[80];
	if (c >= 0x20 && c < 0x7f)
		snprintf(msg, sizeof(msg), "unexpected character '%c'", c);
	else
		snprintf(msg, sizeof(msg), "unexpected character 0x%02x", (unsigned)c);
	/* one error for a run of garbage (NUL included; always past one byte) */
	adv(lx);
	while (peekc(lx, 0) == 0 || (peekc(lx, 0) > 0 && !strchr(" \t\r\n;{}()[],\"#", peekc(lx, 0))))
		adv(lx);
	lerr(lx, msg);
}
