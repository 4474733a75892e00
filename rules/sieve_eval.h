#ifndef PC_SIEVE_EVAL_H
#define PC_SIEVE_EVAL_H
/* Internal to the Sieve interpreter: the state of one run. */
#include "rules/sieve_ast.h"

struct sv_var { char *name; char *value; };
struct sv_vars { struct sv_var *v; size_t n; };

/*
 * The interpreter's index of a message (sieve_msg.cache), built as the
 * tests ask and shared by every run on the message (the server, domain and
 * user levels): the decoded values per header name with the address tests'
 * parse of each, and the envelope paths as the envelope test reads them.
 * Header entries hold for the message's own (unedited) header only; they
 * are dropped when hdr or nhdr differ from what they were built from, or
 * by sieve_msg_changed().
 */
struct sv_hval {
	char *name;
	size_t nlen;
	char **vals;
	size_t *lens;
	size_t n;
	/* the address tests' parse of each value, once asked for: its
	 * addresses (normalized) and whether one was invalid */
	struct sv_haddr { char **norm; size_t n; int invalid; } *addr;
	/* what the address test compares for :all, :localpart, :domain
	 * (slices of addr and vals), once asked for */
	struct sv_hparts { const char **v; size_t *l; size_t n; int done; } parts[3];
};
#define SV_ENVP_MAX 8
enum { SV_EK_SKIP, SV_EK_NULL, SV_EK_AUTHUSER, SV_EK_LOCAL, SV_EK_NORM };
struct sv_envp {
	char *in;	/* the envelope item's text */
	int which;	/* 0 from, 1 to, 2 auth */
	int kind;	/* SV_EK_*: how the envelope test reads it */
	char *val;	/* what it compares ("" for the null path) */
	/* SV_EK_NORM: its :all, :localpart, :domain parts (slices of val) */
	const char *part[3];
	size_t partlen[3];
	int haspart[3];
};
struct sv_msgcache {
	const struct sieve_header *hdr;	/* what the entries were built from */
	size_t nhdr;
	uint64_t hmask;		/* sv_hname_bit() of every field name */
	struct sv_hval *hv;
	size_t nhv;
	struct sv_envp envp[SV_ENVP_MAX];
	size_t nenvp;
};

struct sieve_run {
	const struct sieve_script *script;	/* the script being executed now */
	const struct sieve_msg *msg;
	struct sieve_run_opts opts;
	struct sieve_limits limits;
	struct sieve_result *res;
	struct sieve_errors *err;
	unsigned long steps;
	int stopped;		/* stop executed */
	int keep_cancelled;
	int errored;
	struct sv_vars *vars;	/* the current script's variables */
	struct sv_vars globals;
	char *caps[SV_NCAPS];	/* match variables ${0}..${32} */
	char *flags;		/* imap4flags internal variable, space separated */
	/* editheader: a private copy of the header once edited */
	struct sieve_header *hdr;
	size_t nhdr;
	int hdr_edited;
	long long size_delta;	/* size change by editheader */
	const struct sieve_script **included; size_t nincluded;
	unsigned include_depth;
	struct sv_body_cache *body;	/* the body tests' parts (sieve_body.c) */
	struct sv_msgcache *mc;	/* the message's index as this run found it valid */
};

void sv_runtime_error(struct sieve_run *run, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int sv_result_add(struct sieve_run *run, struct sieve_action *a);
void sv_action_clear(struct sieve_action *a);
void sv_result_snapshot(struct sieve_run *run, struct sieve_header **h_r, size_t *n_r);

/* variables (sieve_vars.c) */
char *sv_expand(struct sieve_run *run, const char *s);
const char *sv_var_get(struct sieve_run *run, const char *name);
void sv_var_set(struct sieve_run *run, const char *name, const char *value);
void sv_vars_free(struct sv_vars *v);
void sv_var_declare_global(struct sieve_run *run, const char *name);
char *sv_set_modify(const struct sieve_node *n, const char *value);

/* tests needing the message structure (sieve_body.c, sieve_date.c) */
/* the values belong to the run (valid until it ends or its message changes):
 * the caller frees only the array */
int sv_body_values(struct sieve_run *run, const struct sieve_node *n, char ***vals_r, size_t *n_r);
void sv_body_cache_free(struct sieve_run *run);
int sv_date_part(const char *date, const char *zone, int originalzone, const char *part,
    long now_if_current, char **val_r);
const char *sv_header_get(struct sieve_run *run, const char *name, size_t idx);

/* sieve_run() exposing the run while it lasts (test-only runner) */
int sieve_run_with(const struct sieve_script *s, const struct sieve_msg *m,
    const struct sieve_run_opts *o, struct sieve_result **res_r, struct sieve_errors *err,
    struct sieve_run **run_r);
int sv_vacation_reply(struct sieve_run *run, const struct sieve_action *a,
    const struct sieve_vacation_conf *vc, char **from_r, char **to_r, char **text_r);

/* shared by the evaluator's files (sieve_eval.c, sieve_tests.c, sieve_flags.c) */
void sv_strv_push(char ***v, size_t *n, char *s);
char *sv_tag_expanded(struct sieve_run *run, const struct sieve_node *n, int i);
/* a positional argument's strings without a copy when it holds no variable
 * (read only); sieve_arg_list_ro_free() gives it back */
char **sieve_arg_list_ro(struct sieve_run *run, const struct sieve_node *n, unsigned i,
    size_t *n_r);
void sieve_arg_list_ro_free(const struct sieve_node *n, unsigned i, char **v, size_t nv);
const struct sieve_header *sv_hdrs(struct sieve_run *run, size_t *n_r);
/* sieve_match_values() on values with their lengths (vlens NULL: strlen) */
int sv_match_n(struct sieve_run *run, const struct sieve_node *n, const char *const *values,
    const size_t *vlens, size_t nvalues, char **keys, size_t nkeys);
int sv_test_address(struct sieve_run *run, const struct sieve_node *n);
int sv_test_envelope(struct sieve_run *run, const struct sieve_node *n);
int sv_test_header(struct sieve_run *run, const struct sieve_node *n);
int sv_test_exists(struct sieve_run *run, const struct sieve_node *n);
int sv_test_string(struct sieve_run *run, const struct sieve_node *n);
int sv_test_environment(struct sieve_run *run, const struct sieve_node *n);
int sv_test_date(struct sieve_run *run, const struct sieve_node *n, int current);
int sv_test_duplicate(struct sieve_run *run, const struct sieve_node *n);
char **sv_flags_split(const char *s, size_t *n_r);
void sv_flags_filter(char **v, size_t *n);
char *sv_flags_join(char **v, size_t n);
void sv_flag_cmd(struct sieve_run *run, const struct sieve_node *n, int id);
int sv_test_hasflag(struct sieve_run *run, const struct sieve_node *n);

#endif
