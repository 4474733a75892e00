#ifndef PC_SIEVE_H
#define PC_SIEVE_H
#include <stddef.h>
#include <stdint.h>

/*
 * The Sieve interpreter (RFC 5228 and extensions): compile a script into a
 * checked tree, evaluate it against a message's facts, get an action list.
 * Pure: no I/O but reading script files; no sockets, no globals.
 *
 *   sieve_compile()   text -> script, or errors "FILE:LINE:COLUMN: message"
 *   sieve_run()       script x message -> result (actions), or runtime errors
 *   sieve_result_*()  the actions, with Pigeonhole's implicit keep and
 *                     conflict rules applied
 *
 * Owner: the caller owns scripts, messages and results; a compiled script
 * is immutable and may be shared by threads; a run is single-threaded.
 *
 * Levels (server, domain, user) are Pigeonhole's multiscript: run each
 * script with the same *res_r; a later run sees the earlier ones' internal
 * flags and header edits, and actions marked `executed` (done by an earlier
 * level) never conflict with later ones. A run that fails sets res->failed:
 * the door keeps the message as it came (implicit keep, no edits).
 */

#define SIEVE_MAX_SCRIPT_SIZE	(1024 * 1024)	/* sieve_max_script_size */
#define SIEVE_MAX_NESTING	32
#define SIEVE_MAX_STRING	(64 * 1024)	/* one string literal */
#define SIEVE_MAX_LIST		1024		/* items of one string list */
#define SIEVE_MAX_ARGS		32		/* arguments of one command */
#define SIEVE_MAX_ACTIONS	32		/* sieve_max_actions */
#define SIEVE_MAX_REDIRECTS	4		/* sieve_max_redirects */
#define SIEVE_MAX_INCLUDE_DEPTH	10
#define SIEVE_MAX_INCLUDES	255
#define SIEVE_MAX_HEADER_SIZE	2048		/* sieve_editheader_max_header_size */
#define SIEVE_MAX_CPU_STEPS	2000000		/* sieve_max_cpu_steps per run */
#define SIEVE_MAX_VARIABLES	255
#define SIEVE_MAX_VAR_SIZE	4096
#define SIEVE_MAX_VAR_NAME	64
#define SIEVE_MAX_MATCH_INDEX	32
#define SIEVE_MAX_ERRORS	64

struct sieve_limits {
	size_t max_script_size;
	unsigned max_nesting, max_actions, max_redirects, max_include_depth;
	unsigned long max_cpu_steps;
	size_t max_var_size;		/* sieve_variables_max_variable_size */
	unsigned max_includes;		/* sieve_include_max_includes */
	char recipient_delimiter[16];	/* subaddress separators; default "+" */
	char editheader_protected[256];	/* sieve_editheader_protected (space separated) */
	char editheader_forbid_add[256];	/* sieve_editheader_forbid_add */
	char editheader_forbid_delete[256];	/* sieve_editheader_forbid_delete */
	size_t editheader_max_header_size;	/* sieve_editheader_max_header_size; 0: none */
};
void sieve_limits_default(struct sieve_limits *l);

/* errors of a compile or a run, in order */
struct sieve_errors {
	char **msg;		/* "FILE:LINE:COLUMN: message" (compile), "FILE:LINE: message"
				 * (run time), or "FILE: message" */
	size_t n;
	size_t warnings;
};
void sieve_errors_clear(struct sieve_errors *e);
void sieve_error_add(struct sieve_errors *e, const char *file, unsigned line,
    unsigned col, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* ---- the message under evaluation ---- */
struct sieve_header { char *name; char *value; };
struct sieve_msg {
	struct sieve_header *hdr;
	size_t nhdr;
	char *body;		/* the body as received (after the empty line); NULL: none */
	size_t body_len;
	size_t size;		/* the whole message, octets */
	/* envelope; NULL when unknown; from "" is the null sender */
	char *env_from, *env_to, *env_orig_to, *env_auth;
	/* environment items (RFC 5183): name=value pairs */
	char **env_items;	/* [name, value, name, value, ...] */
	size_t nenv;
	/* the interpreter's index of the header and envelope, built by the
	 * runs on this message and kept for the next ones (one run at a time
	 * on a message); freed with it. NULL it in a struct copy */
	void *cache;
};
struct sieve_msg *sieve_msg_new(void);
/* parse a whole RFC 5322 text (headers through common/hdrparse) */
struct sieve_msg *sieve_msg_parse(const char *text, size_t len);
void sieve_msg_set_env(struct sieve_msg *m, const char *name, const char *value);
void sieve_msg_set_item(struct sieve_msg *m, const char *name, const char *value);
void sieve_msg_free(struct sieve_msg **m);
/* hdr or a field changed in place after a run: drop the runs' index (a
 * changed hdr pointer or nhdr is noticed without it) */
void sieve_msg_changed(struct sieve_msg *m);

/* ---- compiled scripts ---- */
struct sieve_script;
struct sieve_node;
struct sieve_run;

/* an extra command or test (e.g. the test-only vnd.dovecot.testsuite one) */
struct sieve_extdef {
	const char *name;
	const char *ext;		/* capability that enables it */
	int is_test;
	const char *pos;		/* positional args: n number, s string, l list; '?' optional rest */
	const char *const *tags;	/* ":tag" or ":tag=s" / "=n" / "=l"; NULL ended */
	int groups;			/* SIEVE_G_* tag groups accepted */
	int block;			/* 1: takes a block */
	/* 0 go on (tests: *res_r), 1 stop the block, -1 runtime error */
	int (*exec)(struct sieve_run *run, const struct sieve_node *n, int *res_r);
};
#define SIEVE_G_MATCH	1
#define SIEVE_G_COMP	2
#define SIEVE_G_ADDR	4

struct sieve_compile_opts {
	const struct sieve_limits *limits;
	const struct sieve_extdef *extra;	/* NULL-name ended, or NULL */
	const char *const *extra_caps;		/* capabilities the extras add */
	const char *dir;			/* for include :personal; NULL: script's dir */
	const char *global_dir;			/* for include :global */
	const char *disabled_caps;		/* space separated; NULL */
};

/* compile text; name is the file name shown in errors */
int sieve_compile(const char *name, const char *text, size_t len,
    const struct sieve_compile_opts *o, struct sieve_script **s_r,
    struct sieve_errors *err) __attribute__((warn_unused_result));
int sieve_compile_file(const char *path, const struct sieve_compile_opts *o,
    struct sieve_script **s_r, struct sieve_errors *err) __attribute__((warn_unused_result));
void sieve_script_free(struct sieve_script **s);

/* ---- results ---- */
enum sieve_action_type {
	SIEVE_A_KEEP, SIEVE_A_FILEINTO, SIEVE_A_REDIRECT, SIEVE_A_DISCARD,
	SIEVE_A_REJECT, SIEVE_A_EREJECT, SIEVE_A_VACATION, SIEVE_A_ADDHEADER,
	SIEVE_A_DELETEHEADER,
};
struct sieve_action {
	enum sieve_action_type type;
	char *target;		/* folder, address, reject text, vacation reason, header name */
	char *value;		/* addheader value; vacation subject */
	char **flags;		/* imap4flags for keep/fileinto */
	size_t nflags;
	int copy, create, last, implicit;
	int executed;		/* done by an earlier level: later ones do not conflict with it */
	char *from, *handle, *mime_from;	/* vacation */
	char **addresses; size_t naddresses;	/* vacation :addresses */
	unsigned long seconds;			/* vacation period */
	int mime;
	unsigned line;		/* the script line that caused it */
	/* editheader: the header as it was when the action was taken; NULL: unedited */
	struct sieve_header *hdr;
	size_t nhdr;
};
struct sieve_result {
	struct sieve_action *a;
	size_t n;
	int implicit_keep;	/* the implicit keep is in force */
	char **keep_flags; size_t nkeep_flags;	/* flags of the implicit keep */
	struct sieve_header *keep_hdr;	/* header at the end of the run; NULL: unedited */
	size_t keep_nhdr;
	int failed;		/* the run failed: the message goes to INBOX, unedited */
};
void sieve_headers_free(struct sieve_header **h, size_t n);
void sieve_result_free(struct sieve_result **r);
const char *sieve_action_name(const struct sieve_action *a);

/* duplicate tracking store (RFC 7352) */
struct sieve_dupstore {
	/* 1 seen within period, 0 not */
	int (*check)(void *ctx, const char *key, size_t keylen);
	void (*mark)(void *ctx, const char *key, size_t keylen, unsigned long seconds);
	void *ctx;
};

/*
 * vacation (RFC 5230), the decision only: 1 when action a should answer m
 * (never the null sender, lists, auto-submitted or bulk mail, mail not sent
 * to the recipient, its :addresses or user_email); the door sends the reply
 * (sieve_vacation_reply gives its envelope sender, recipient and text) and
 * tracks the :days/:seconds period per sender.
 */
struct sieve_vacation_conf {
	const char *user_email;		/* sieve_user_email: one of "my" addresses */
	const char *default_subject;	/* when the message has no Subject */
	const char *subject_template;	/* "%$" or "%{subject}": the original subject */
	int use_original_recipient;	/* the original recipient is "mine" too */
	int dont_check_recipient;	/* answer even if no address of mine is in To/Cc */
	unsigned max_subject_codepoints;	/* 0: 256 */
	int to_header_ignore_envelope;	/* To: is the Sender/From even if not the sender */
	int send_from_recipient;	/* envelope sender of the reply: the recipient, not <> */
	struct sieve_dupstore *track;	/* replies sent per sender/handle; NULL: not tracked */
};
int sieve_vacation_should_reply(const struct sieve_msg *m, const struct sieve_action *a,
    const struct sieve_vacation_conf *vc);
int sieve_vacation_reply(const struct sieve_msg *m, const struct sieve_action *a,
    const struct sieve_vacation_conf *vc, char **from_r, char **to_r, char **text_r);


struct sieve_run_opts {
	const struct sieve_limits *limits;
	struct sieve_dupstore *dup;
	/* mailboxexists: 1 when the folder exists; NULL: only INBOX exists */
	int (*mailbox_exists)(void *ctx, const char *name);
	void *ctx;			/* for extdef exec callbacks */
	long now;			/* time() for currentdate; 0: the real clock */
};
/* run s on m; actions appended to *res_r (created when NULL) */
int sieve_run(const struct sieve_script *s, const struct sieve_msg *m,
    const struct sieve_run_opts *o, struct sieve_result **res_r,
    struct sieve_errors *err) __attribute__((warn_unused_result));

/* helpers for extdef callbacks */
void *sieve_run_ctx(struct sieve_run *run);
const struct sieve_msg *sieve_run_msg(struct sieve_run *run);
void sieve_run_set_msg(struct sieve_run *run, const struct sieve_msg *m);
struct sieve_errors *sieve_run_errors(struct sieve_run *run);
/* positional argument i expanded (variables): a fresh string / list */
char *sieve_arg_str(struct sieve_run *run, const struct sieve_node *n, unsigned i);
char **sieve_arg_list(struct sieve_run *run, const struct sieve_node *n, unsigned i, size_t *n_r);
/* a tag's value: NULL when absent; *present_r 1 when the tag was given */
const char *sieve_tag_str(struct sieve_run *run, const struct sieve_node *n, const char *tag, int *present_r);
long long sieve_tag_num(const struct sieve_node *n, const char *tag, long long dflt);
int sieve_node_has_tag(const struct sieve_node *n, const char *tag);
unsigned sieve_node_line(const struct sieve_node *n);
/* run the match type / comparator of n on values against the keys */
int sieve_match_values(struct sieve_run *run, const struct sieve_node *n,
    char **values, size_t nvalues, char **keys, size_t nkeys);
/* run the block of n (for an extdef with block=1) */
int sieve_run_block(struct sieve_run *run, const struct sieve_node *n);
void sieve_strv_free(char **v, size_t n);

#endif
