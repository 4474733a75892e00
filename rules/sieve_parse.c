/*
 * sieve_parse.c - the RFC 5228 grammar: tokens -> a tree of commands,
 * arguments, tests and blocks. No meaning yet (sieve_compile.c checks it).
 *
 *   sv_parse()      the whole script; -1 after reporting syntax errors
 *   sv_node_free()  one node and everything under it
 *
 * Nesting (blocks and tests) is capped by max_nesting; string lists by
 * SIEVE_MAX_LIST; arguments by SIEVE_MAX_ARGS. After an error the parser
 * skips to the next ';' or block end and goes on, so one run reports
 * several errors, as Pigeonhole does.
 */
#include <string.h>
#include <stdlib.h>
#include "rules/sieve_ast.h"
#include "common/xmalloc.h"

struct parser {
	struct sv_lexer *lx;
	unsigned max_nesting;
	int errors;
};

static void perr(struct parser *p, const char *fmt, const char *a, const char *b)
{
	sieve_error_add(p->lx->err, p->lx->name, p->lx->tline, p->lx->tcol, fmt, a, b);
	p->errors++;
}

void sv_node_free(struct sieve_node *n)
{
	if (n == NULL)
		return;
	free(n->name);
	for (size_t i = 0; i < n->nargs; i++) {
		free(n->args[i].tag);
		for (size_t j = 0; j < n->args[i].n; j++)
			free(n->args[i].v[j].s);
		free(n->args[i].v);
		free(n->args[i].sv);
	}
	free(n->args);
	for (size_t i = 0; i < n->ntests; i++)
		sv_node_free(n->tests[i]);
	free(n->tests);
	for (size_t i = 0; i < n->ncmds; i++)
		sv_node_free(n->cmds[i]);
	free(n->cmds);
	if (n->regex)
		sv_regex_free(n->regex);
	if (n->incl && !n->incl_borrowed)
		sieve_script_free(&n->incl);
	free(n);
}

static char *take_text(struct sv_lexer *lx, size_t *len_r)
{
	char *t = lx->text ? lx->text : xstrdup("");
	*len_r = lx->len;
	lx->text = NULL;
	return t;
}

static void push_str(struct sv_arg *a, struct sv_lexer *lx)
{
	a->v = xreallocarray(a->v, a->n + 1, sizeof(*a->v));
	a->v[a->n].s = take_text(lx, &a->v[a->n].len);
	a->n++;
}

static int parse_args(struct parser *p, struct sieve_node *n, unsigned depth);

static struct sieve_node *parse_test(struct parser *p, unsigned depth)
{
	struct sv_lexer *lx = p->lx;
	if (depth > p->max_nesting) {
		perr(p, "cannot nest tests deeper than %s levels%s", "32", "");
		return NULL;
	}
	if (lx->tok != TK_ID) {
		perr(p, "expected test name, but found %s%s", sv_tok_name(lx->tok), "");
		return NULL;
	}
	struct sieve_node *n = xcalloc(1, sizeof(*n));
	n->is_test = 1;
	n->line = lx->tline;
	n->col = lx->tcol;
	size_t dummy;
	n->name = take_text(lx, &dummy);
	sv_lex_next(lx);
	if (parse_args(p, n, depth) < 0) {
		sv_node_free(n);
		return NULL;
	}
	return n;
}

static void push_test(struct sieve_node *n, struct sieve_node *t)
{
	n->tests = xreallocarray(n->tests, n->ntests + 1, sizeof(*n->tests));
	n->tests[n->ntests++] = t;
}

static int parse_args(struct parser *p, struct sieve_node *n, unsigned depth)
{
	struct sv_lexer *lx = p->lx;
	for (;;) {
		if (lx->tok != TK_STR && lx->tok != TK_NUM && lx->tok != TK_TAG &&
		    lx->tok != TK_LBRACKET)
			break;
		if (n->nargs >= SIEVE_MAX_ARGS) {
			perr(p, "too many arguments%s%s", "", "");
			return -1;
		}
		n->args = xreallocarray(n->args, n->nargs + 1, sizeof(*n->args));
		struct sv_arg *a = &n->args[n->nargs++];
		memset(a, 0, sizeof(*a));
		a->line = lx->tline;
		a->col = lx->tcol;
		if (lx->tok == TK_STR) {
			a->type = ARG_STR;
			push_str(a, lx);
		} else if (lx->tok == TK_NUM) {
			a->type = ARG_NUM;
			a->num = lx->num;
		} else if (lx->tok == TK_TAG) {
			size_t dummy;
			a->type = ARG_TAG;
			a->tag = take_text(lx, &dummy);
		} else {
			a->type = ARG_LIST;
			sv_lex_next(lx);
			for (;;) {
				if (lx->tok != TK_STR) {
					perr(p, "expecting string after ',' or '[' in string list, "
					    "but found %s%s", sv_tok_name(lx->tok), "");
					return -1;
				}
				if (a->n >= SIEVE_MAX_LIST) {
					perr(p, "string list is too long%s%s", "", "");
					return -1;
				}
				push_str(a, lx);
				sv_lex_next(lx);
				if (lx->tok == TK_RBRACKET)
					break;
				if (lx->tok != TK_COMMA) {
					perr(p, "expecting ',' or end of string list ']', but found %s%s",
					    sv_tok_name(lx->tok), "");
					return -1;
				}
				sv_lex_next(lx);
			}
		}
		sv_lex_next(lx);
	}
	if (lx->tok == TK_ID) {
		n->has_tests = 1;
		struct sieve_node *t = parse_test(p, depth + 1);
		if (t == NULL)
			return -1;
		push_test(n, t);
	} else if (lx->tok == TK_LPAREN) {
		n->has_tests = 2;
		sv_lex_next(lx);
		for (;;) {
			struct sieve_node *t = parse_test(p, depth + 1);
			if (t == NULL)
				return -1;
			push_test(n, t);
			if (lx->tok == TK_RPAREN)
				break;
			if (lx->tok != TK_COMMA) {
				perr(p, "expecting ',' or end of test list ')', but found %s%s",
				    sv_tok_name(lx->tok), "");
				return -1;
			}
			sv_lex_next(lx);
		}
		sv_lex_next(lx);
	}
	return 0;
}

/* skip to just past the next ';' or a '}' of this level (left in place) */
static void recover(struct parser *p)
{
	struct sv_lexer *lx = p->lx;
	int depth = 0;
	while (lx->tok != TK_EOF) {
		if (lx->tok == TK_SEMI && depth == 0) {
			sv_lex_next(lx);
			return;
		}
		if (lx->tok == TK_LBRACE)
			depth++;
		if (lx->tok == TK_RBRACE) {
			if (depth == 0)
				return;
			if (--depth == 0) {
				sv_lex_next(lx);
				return;
			}
		}
		sv_lex_next(lx);
	}
}

static int parse_commands(struct parser *p, unsigned depth, int in_block,
    struct sieve_node ***cmds_r, size_t *n_r);

static struct sieve_node *parse_command(struct parser *p, unsigned depth)
{
	struct sv_lexer *lx = p->lx;
	struct sieve_node *n = xcalloc(1, sizeof(*n));
	n->line = lx->tline;
	n->col = lx->tcol;
	size_t dummy;
	n->name = take_text(lx, &dummy);
	sv_lex_next(lx);
	if (parse_args(p, n, 0) < 0)
		goto fail;
	if (lx->tok == TK_SEMI) {
		sv_lex_next(lx);
		return n;
	}
	if (lx->tok == TK_LBRACE) {
		if (depth + 1 > p->max_nesting) {
			perr(p, "cannot nest command blocks deeper than %s levels%s", "32", "");
			goto fail;
		}
		n->has_block = 1;
		sv_lex_next(lx);
		if (parse_commands(p, depth + 1, 1, &n->cmds, &n->ncmds) < 0)
			return n;	/* errors reported; the tree is kept for counting */
		if (lx->tok != TK_RBRACE) {
			perr(p, "expected end of command block '}', but found %s%s",
			    sv_tok_name(lx->tok), "");
			return n;
		}
		sv_lex_next(lx);
		return n;
	}
	perr(p, "expected end of command ';' or the beginning of a compound block '{', "
	    "but found %s%s", sv_tok_name(lx->tok), "");
fail:
	recover(p);
	return n;
}

static int parse_commands(struct parser *p, unsigned depth, int in_block,
    struct sieve_node ***cmds_r, size_t *n_r)
{
	struct sv_lexer *lx = p->lx;
	while (lx->tok != TK_EOF) {
		if (p->errors >= SIEVE_MAX_ERRORS)
			return -1;
		if (lx->tok == TK_RBRACE) {
			if (in_block)
				return 0;
			perr(p, "unexpected '}'%s%s", "", "");
			sv_lex_next(lx);
			continue;
		}
		if (lx->tok == TK_ERR) {
			perr(p, "expected identifier, but found %s%s", sv_tok_name(lx->tok), "");
			sv_lex_next(lx);
			recover(p);
			continue;
		}
		if (lx->tok != TK_ID) {
			perr(p, "expected identifier, but found %s%s", sv_tok_name(lx->tok), "");
			recover(p);
			continue;
		}
		struct sieve_node *n = parse_command(p, depth);
		*cmds_r = xreallocarray(*cmds_r, *n_r + 1, sizeof(**cmds_r));
		(*cmds_r)[(*n_r)++] = n;
	}
	if (in_block) {
		perr(p, "end of file before end of command block '}'%s%s", "", "");
		return -1;
	}
	return 0;
}

int sv_parse(struct sv_lexer *lx, unsigned max_nesting, struct sieve_node ***cmds_r, size_t *n_r)
{
	struct parser p = { lx, max_nesting, 0 };
	*cmds_r = NULL;
	*n_r = 0;
	sv_lex_next(lx);
	(void)parse_commands(&p, 0, 0, cmds_r, n_r);
	return p.errors > 0 || lx->nerrors > 0 ? -1 : 0;
}
