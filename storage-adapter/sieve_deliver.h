#ifndef PC_SIEVE_DELIVER_H
#define PC_SIEVE_DELIVER_H
#include <stddef.h>
#include <stdint.h>
#include "rules/sieve.h"
#include "rules/sieve_rules.h"
#include "storage-adapter/mailstore.h"

/*
 * A user's Sieve script at delivery into the bundled store (issue 10): the
 * layer the gateway calls for each local recipient, after the server and
 * domain levels passed the message and before it answers 250.
 *
 *   sieve_deliver_load_user()  compile sieve_dir/users/USER.sieve (ENOENT:
 *                              no script, the message is kept)
 *   sieve_deliver_plan()       run the script on the spooled message: what
 *                              to store (folder + flags per copy) and what
 *                              to send through the relayhost (redirect
 *                              copies, vacation replies, RFC 5429 refusals).
 *                              Writes nothing to the store; a vacation
 *                              reply is recorded in the tracking file here
 *                              (see Vacation tracking).
 *   sieve_deliver_store()      write the planned copies into the store
 *                              (fileinto :create makes Maildir++ ".Name"
 *                              folders; imap4flags become Maildir flags and
 *                              keywords); call it once every outgoing message
 *                              was taken by the relayhost; then
 *                              sieve_deliver_sent() records the vacation
 *                              replies per sender (:days/:seconds)
 *   sieve_deliver_fallback()   the relayhost refused one of them: keep the
 *                              message in the INBOX instead (nothing lost);
 *                              the caller logs plan->log and the send error
 *
 * Gateway order, per recipient (a job thread: this does file I/O):
 *   plan -> send every plan->out (redirect: the spooled file, unchanged) ->
 *   all taken ? store + sent : fallback -> 250
 *
 * The message is read from a descriptor (pread from offset 0, never moved):
 * the header section (capped at SIEVE_DELIVER_MAX_HEADER) and, only when a
 * script requires "body" (or "include"), the body (capped at SIEVE_DELIVER_MAX_BODY; the size
 * test always sees the real size).
 *
 * Header edits (editheader, at any level) are applied to the stored copies:
 * pass the message as received. A redirect sends it as received (the
 * gateway puts X-Sieve-Redirected-From: <USER> on top). Loops: a message
 * that carries X-Sieve-Redirected-From naming this user (it came back), or
 * SIEVE_DELIVER_MAX_REDIRECT_HOPS of them, is not redirected again but kept
 * in the INBOX (logged); sieve_max_redirects bounds the redirects of one run.
 *
 * Vacation tracking: STATE_DIR/sieve-vacation/USER, one line per reply
 * ("EXPIRY HASH"), rewritten atomically; expired lines dropped. The check
 * and the record are one step under USER.lock beside it (flock, waited for
 * at most 2 s, else done unlocked and logged): of two messages from one
 * sender delivered at the same moment only one gets a reply. The record is
 * made when the reply is planned and dropped again by
 * sieve_deliver_fallback() when the relayhost did not take the reply.
 *
 * Owner: the caller owns the script; a plan is freed with
 * sieve_deliver_plan_free(). Thread-safe for different plans.
 */

#define SIEVE_DELIVER_MAX_HEADER	(256 * 1024)
#define SIEVE_DELIVER_FIRST_READ	(16 * 1024)	/* < MAX_HEADER */
#define SIEVE_DELIVER_MAX_BODY		(1024 * 1024)
#define SIEVE_DELIVER_MAX_TRACK		10000	/* lines kept in a vacation file */
/* X-Sieve-Redirected-From: lines past which a message is not redirected
 * again (a redirect loop across users or hosts) */
#define SIEVE_DELIVER_MAX_REDIRECT_HOPS	8

/*
 * The message already read and parsed by the door's server/domain run in
 * the same job (smtp_sieve.c): the plan uses it instead of reading the
 * spool again. Exactly what the plan would read from the spool: the
 * fields from offset 0 (our Return-Path: included), the body when
 * has_body, size the spool's. Borrowed: never changed (the plan sets the
 * envelope and facts on a copy of its own).
 */
struct sieve_deliver_msg {
	const struct sieve_msg *msg;
	int has_body;			/* the body was read (or there is none) */
	long long body_off;		/* where the body starts in the spool; -1 */
	int lf;				/* the first line ends in a bare LF */
};

struct sieve_deliver_in {
	const char *store_root;		/* mailstore root */
	const char *user;		/* canonical "local@domain" */
	const char *env_from;		/* "" is the null sender */
	const char *env_to;		/* the recipient address (RCPT TO) */
	const char *env_orig_to;	/* NULL: env_to */
	int fd;				/* the spooled message; -1 with pre (the
					 * caller sets plan->fd before the store
					 * and the sends) */
	const struct sieve_deliver_msg *pre;	/* NULL: read from fd; used
					 * when it has the body or none is needed */
	int need_body;			/* 1: read the body anyway; it is read
					 * when a script requires body or include */
	const struct sieve_script *script;	/* the user's; NULL: none, keep */
	/*
	 * The published snapshot (NULL: none): its server script and the
	 * recipient domain's run first, as Pigeonhole's sieve_before scripts
	 * (multiscript), so the user level sees their imap4flags and runs only
	 * when they kept the message. Their store-side actions (keep flags,
	 * fileinto other than Quarantine, vacation) are carried out here;
	 * what the door already did at end of data (reject, discard,
	 * quarantine, redirect, header edits) is not done again.
	 */
	const struct sieve_rules *rules;
	const char *domain;		/* the recipient's domain, for rules */
	/* the session's facts for `environment` (NULL: unknown) */
	const char *remote_ip, *remote_host, *helo, *auth, *country;
	const struct sieve_limits *limits;	/* NULL: defaults */
	const char *state_dir;		/* vacation tracking; NULL: not tracked */
	const char *hostname;		/* for Message-ID and the MDN's Reporting-UA */
	long now;			/* 0: time() */
};

/* one copy into the store */
struct sieve_deliver_copy {
	char *folder;			/* "INBOX" or a Maildir++ folder name */
	int create;			/* fileinto :create */
	unsigned flags;			/* enum mailstore_flag */
	char **keywords;		/* other imap4flags */
	size_t nkeywords;
	unsigned line;			/* script line; 0: implicit keep */
	char *head;			/* the header section as editheader left it
					 * (with its empty line); NULL: as received */
	size_t headlen;
};

enum sieve_deliver_out_kind {
	SIEVE_OUT_REDIRECT, SIEVE_OUT_VACATION, SIEVE_OUT_REFUSAL,
};
/* one message for the relayhost */
struct sieve_deliver_out {
	enum sieve_deliver_out_kind kind;
	char *mail_from;		/* envelope sender; "" the null sender */
	char *rcpt_to;
	char *text;			/* the whole message (CRLF); NULL for a
					 * redirect: send the spooled message */
	long track;			/* a vacation reply: its plan->track index; -1 */
};

struct sieve_deliver_plan {
	struct sieve_deliver_copy *copy;
	size_t ncopy;
	struct sieve_deliver_out *out;
	size_t nout;
	int discarded;			/* nothing stored, by the script's will */
	int failed;			/* the script failed: kept in the INBOX */
	char log[512];			/* "keep; fileinto Work; vacation to x" */
	/* vacation keys to record once sent */
	char **track;
	unsigned long *track_secs;
	size_t ntrack;
	/* for the store and the tracking file */
	char *store_root, *user, *state_dir;
	int fd;
	long long body_off;		/* where the body starts in fd */
	long now;
};

/* 0 and *s_r (NULL when the user has none), or -1 with *error_r */
int sieve_deliver_load_user(const char *sieve_dir, const char *user,
    const struct sieve_limits *lim, struct sieve_script **s_r, const char **error_r)
    __attribute__((warn_unused_result));

/* 1 when sieve_deliver_plan(in) reads in->fd: no pre, or a script tests
 * the body the door did not read (then in->fd must be open) */
int sieve_deliver_reads_fd(const struct sieve_deliver_in *in);
/* 0, or -1 when the message cannot be read (then nothing is planned) */
int sieve_deliver_plan(const struct sieve_deliver_in *in, struct sieve_deliver_plan **p_r,
    const char **error_r) __attribute__((warn_unused_result));
/* 0, or -1: nothing stored (the caller answers 451) */
int sieve_deliver_store(struct sieve_deliver_plan *p, const char **error_r)
    __attribute__((warn_unused_result));
/* the relayhost took the outgoing messages (the vacation replies were
 * recorded when planned: nothing left to do; kept for the callers) */
void sieve_deliver_sent(struct sieve_deliver_plan *p);
/*
 * The relayhost did not take out (one of p->out): the message goes into the
 * INBOX, no flags, instead of the plan's copies, and the log says why
 * ("sieve: USER: the relayhost did not take the vacation reply to X: WHY;
 * kept in INBOX"). 0, or -1 (the caller answers 451). Replies taken before
 * the failure are not recorded (a later message may get a second one).
 */
int sieve_deliver_fallback(struct sieve_deliver_plan *p, const struct sieve_deliver_out *out,
    const char *why, const char **error_r) __attribute__((warn_unused_result));
/* "redirect", "vacation reply", "refusal" */
const char *sieve_deliver_out_name(enum sieve_deliver_out_kind k);
/* 1 when the plan is a plain keep (one INBOX copy as received, nothing to
 * send): the caller may hard-link the spool for it with the recipients
 * that have no script, instead of sieve_deliver_store() */
int sieve_deliver_plan_is_plain(const struct sieve_deliver_plan *p);
void sieve_deliver_plan_free(struct sieve_deliver_plan **p);

/* imap4flags name -> system flag bit, 0 for a keyword ("\\Recent": ignored) */
unsigned sieve_deliver_flag_bit(const char *name);

#endif
