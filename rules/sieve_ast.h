#ifndef PC_SIEVE_AST_H
#define PC_SIEVE_AST_H
/*
 * Internal to the Sieve interpreter: tokens, the syntax tree, the command
 * table. Owner of every node: its script (sieve_script_free frees all).
 */
#include "rules/sieve.h"

enum sv_tok {
	TK_EOF, TK_ERR, TK_ID, TK_TAG, TK_NUM, TK_STR, TK_LBRACKET, TK_RBRACKET,
	TK_LPAREN, TK_RPAREN, TK_LBRACE, TK_RBRACE, TK_COMMA, TK_SEMI,
};

struct sv_lexer {
	const char *name;
	const char *p, *end;
	unsigned line, col;
	struct sieve_errors *err;
	/* current token */
	enum sv_tok tok;
	unsigned tline, tcol;
	char *text;		/* identifier / tag / string (owned until taken) */
	size_t len;
	uint64_t num;
	int nerrors;
};
void sv_lex_init(struct sv_lexer *lx, const char *name, const char *text, size_t len,
    struct sieve_errors *err);
void sv_lex_next(struct sv_lexer *lx);
void sv_lex_deinit(struct sv_lexer *lx);
const char *sv_tok_name(enum sv_tok t);

enum sv_argtype { ARG_NUM, ARG_STR, ARG_LIST, ARG_TAG };
struct sv_str { char *s; size_t len; };
struct sv_arg {
	enum sv_argtype type;
	unsigned line, col;
	uint64_t num;
	char *tag;
	struct sv_str *v;	/* strings; ARG_STR has exactly one */
	size_t n;
	char **sv;		/* v[].s as a NULL-terminated list, once compiled */
};

struct sv_def;
struct sieve_node {
	/* what a run reads, first: a test touches a few cache lines of its
	 * node, not all of them (filled by the compile step) */
	const struct sv_def *def;
	const struct sieve_extdef *ext;
	unsigned line;
	int mtype, rel, comp, apart;
	int indexed;		/* has :index (found once at compile time) */
	int ihave_dead;		/* `if ihave` of something unavailable: block never runs */
	int nomatch_empty;	/* no value to match: false, no error (not :count, not a
				 * :regex key compiled at run time) */
	uint64_t hmask;		/* header, address, exists: the bits of the header names
				 * (sv_hname_bit); 0 unknown */
	struct sieve_node **tests;
	size_t ntests;
	struct sieve_node **cmds;
	size_t ncmds;
	struct sv_arg *pos[8];	/* positional arguments */
	unsigned npos;
	void *regex;		/* compiled regex keys (sieve_regex) */
	int tagset[12];
	/* the rest */
	char *name;
	unsigned col;
	int is_test;
	struct sv_arg *args;
	size_t nargs;
	int has_tests;		/* a "( ... )" list or a single test was written */
	int has_block;
	struct sv_arg *mtarg;	/* :value/:count relation */
	struct sv_arg *tagv[12];	/* by index in def->tags */
	struct sieve_script *incl;	/* include: the included script */
	int once, optional, global;
	int incl_borrowed;	/* incl is an ancestor (include :once cycle), not owned */
};


#define SV_NCAPS (SIEVE_MAX_MATCH_INDEX + 1)	/* match values ${0}..${32} */

enum { MT_IS, MT_CONTAINS, MT_MATCHES, MT_VALUE, MT_COUNT, MT_REGEX };
enum { CMP_CASEMAP, CMP_OCTET, CMP_NUMERIC };
enum { AP_ALL, AP_LOCAL, AP_DOMAIN, AP_USER, AP_DETAIL };
enum { REL_GT, REL_GE, REL_LT, REL_LE, REL_EQ, REL_NE };

struct sv_def {
	const char *name;
	const char *ext;	/* NULL: RFC 5228 core */
	int is_test;
	int id;
	const char *pos;	/* n, s, l; '?' following args optional */
	const char *const *tags;
	int groups;
	int block;		/* 1: block required */
	int subtests;		/* 0 none, 1 one test, 2 test list */
};
const struct sv_def *sv_def_find(const char *name, int is_test);
const struct sv_def *sv_def_find_any(const char *name);

enum {
	C_REQUIRE = 1, C_IF, C_ELSIF, C_ELSE, C_STOP, C_KEEP, C_DISCARD, C_REDIRECT,
	C_FILEINTO, C_REJECT, C_EREJECT, C_SET, C_ADDFLAG, C_SETFLAG, C_REMOVEFLAG,
	C_ADDHEADER, C_DELETEHEADER, C_VACATION, C_INCLUDE, C_RETURN, C_GLOBAL,
	C_ERROR, C_BREAK, C_FOREVERYPART,
	T_ADDRESS = 100, T_HEADER, T_ENVELOPE, T_EXISTS, T_SIZE, T_ALLOF, T_ANYOF,
	T_NOT, T_TRUE, T_FALSE, T_STRING, T_HASFLAG, T_BODY, T_DATE, T_CURRENTDATE,
	T_MAILBOXEXISTS, T_ENVIRONMENT, T_DUPLICATE, T_VALID_EXT_LIST, T_IHAVE,
	T_EXT = 500,
};

struct sieve_script {
	char *name;
	char *path;
	struct sieve_node **cmds;
	size_t ncmds;
	char **caps;
	size_t ncaps;
	int uses_vars;
	char **globals; size_t nglobals;
	struct sieve_compile_opts opts;
};
int sv_script_has_cap(const struct sieve_script *s, const char *cap);
int sv_ihave_known(const struct sieve_compile_opts *o, const char *cap);

/* the parser: text -> nodes; -1 on a syntax error (reported) */
int sv_parse(struct sv_lexer *lx, unsigned max_nesting, struct sieve_node ***cmds_r, size_t *n_r);
void sv_node_free(struct sieve_node *n);

/* matching (sieve_match.c) */
int sv_cmp_eq(int comp, const char *a, size_t al, const char *b, size_t bl);
int sv_cmp_order(int comp, const char *a, size_t al, const char *b, size_t bl);
int sv_contains(int comp, const char *hay, size_t hl, const char *needle, size_t nl, unsigned long *steps);
/* glob; caps (may be NULL, else SV_NCAPS slots) receives ${0}..${32}, allocated */
int sv_glob(int comp, const char *pat, size_t pl, const char *str, size_t sl,
    char **caps, unsigned long *steps);
/* parse an address list (header value); returns addresses "local@domain" */
char **sv_addr_list(const char *v, size_t *n_r);
int sv_addr_split(const char *a, char **local_r, char **domain_r);
int sv_rel_holds(int rel, int ord);
int sv_rel_parse(const char *s);
char *sv_mime_decode(const char *v);
int sv_addr_parse(const char *s, char **norm_r);
int sv_utf8_valid(const char *s);

/* a header name's bit in a 64-bit mask of names (ASCII case folded; a
 * name with other octets: every bit) */
uint64_t sv_hname_bit(const char *name, size_t len);

/* regex (sieve_regex.c) */
void *sv_regex_compile(const char *pat, int icase, const char **error_r);
void sv_regex_free(void *re);
/* 1 match (caps filled), 0 no, -1 budget exceeded */
int sv_regex_match(void *re, const char *s, size_t len, char **caps);

#endif
