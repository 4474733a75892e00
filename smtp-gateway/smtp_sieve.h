#ifndef PC_SMTP_SIEVE_H
#define PC_SMTP_SIEVE_H
#include <stddef.h>
#include <sys/types.h>
#include "rules/engine.h"
#include "rules/sieve_rules.h"
#include "smtp-gateway/smtp_proto.h"

/*
 * The server and domain Sieve scripts in the SMTP gateway (issue 10): a
 * message under scripts (smtp_msg.sieve) is spooled whole before a byte of
 * it goes on, the scripts run at the final dot, and what they decided is
 * what is stored or sent.
 *
 *   smtp_sieve_dirs()     make quarantine_dir a Maildir (tmp/ new/ cur/)
 *   smtp_sieve_open()     the spool of one message: in the first local
 *                         recipient's tmp/ (store route), else in
 *                         quarantine_dir/tmp/ (downstream route); head (our
 *                         trace lines) written first
 *   smtp_sieve_write()    message bytes as they arrive (loop: page cache)
 *   smtp_sieve_open_mem() a small message (the session never spooled it:
 *                         SMTP_SPOOL_MIN) given whole at the final dot; no
 *                         I/O: smtp_sieve_run() creates the spool on the
 *                         job thread, as a delivery without scripts does
 *   smtp_sieve_run()      job thread: read the header section (and the body
 *                         only when a script needs it), run the scripts,
 *                         then carry out what is not the door's reply:
 *                         header edits (a new spool: edited header + the
 *                         body copied, never the message in memory), the
 *                         quarantine copy (fsynced into quarantine_dir/new/),
 *                         redirects to addresses outside our domains (sent
 *                         through the relayhost, relay_send)
 *   smtp_sieve_take_store()  store route, passed: the spool to commit
 *   smtp_sieve_msg()      store route, passed unedited: the parsed message
 *                         for the user level (not read and parsed again)
 *   smtp_sieve_pump()     downstream route, passed: the spool to the
 *                         downstream session, bounded by its queue
 *   smtp_sieve_verdict()  the engine verdict for the log and counters
 *   smtp_sieve_free()     drop the spool (files removed), free
 *
 * Never answers 250 for something lost: a failed spool, quarantine write or
 * redirect makes the result a temporary failure, and nothing was done.
 * Owner: the connection; one thread at a time (the loop, or the job while
 * the connection waits for it).
 */

struct downstream;
struct policy;
struct maildir_tmp;
struct sieve_deliver_msg;

struct smtp_sieve_conf {
	const char *quarantine_dir;	/* a Maildir; also the downstream route's spool */
	const char *maildir_root;	/* the store; NULL: pass-through */
	const char *relayhost;		/* "[HOST]:PORT" for redirects; NULL none */
	const char *myhostname;
	unsigned timeout;		/* seconds per relayhost reply */
	const struct sieve_limits *limits;
	const struct policy *pol;	/* mydomains: redirect targets we store */
};

#define SMTP_SIEVE_MAX_HEADER	(256 * 1024)	/* header section read for the scripts */
#define SMTP_SIEVE_MAX_BODY	(1024 * 1024)	/* body read when a script needs it */

struct smtp_sieve_result {
	enum sieve_door_action action;
	int tempfail;		/* 451: nothing was done (err says why) */
	int spool_errno;	/* ... writing the spool failed (ENOSPC, EDQUOT: 452) */
	char err[300];
	char text[512];		/* reject text */
	const char *tag;	/* sieve-reject, sieve-discard, sieve-quarantine; NULL */
	char where[300];	/* the script and line that decided */
	char qid[80];		/* quarantine: the file's name in quarantine_dir/new/ */
	char **local;		/* redirect targets in our domains (store route) */
	size_t nlocal;
	int drop_original;	/* a redirect took the message from its recipients */
	unsigned nredirect;	/* redirects sent through the relayhost */
	int edited;		/* the header was edited */
};

struct smtp_sieve;

int smtp_sieve_dirs(const char *quarantine_dir, const char **error_r)
    __attribute__((warn_unused_result));
/* store: the store route (m's first local recipient's tmp/) */
int smtp_sieve_open(const struct smtp_sieve_conf *k, const struct smtp_msg *m, int store,
    const char *head, struct smtp_sieve **sv_r, const char **error_r)
    __attribute__((warn_unused_result));
/* data (len octets, after head) stays the caller's, unchanged, until
 * smtp_sieve_run() returned */
int smtp_sieve_open_mem(const struct smtp_sieve_conf *k, const struct smtp_msg *m, int store,
    const char *head, const char *data, size_t len, struct smtp_sieve **sv_r,
    const char **error_r) __attribute__((warn_unused_result));
int smtp_sieve_write(struct smtp_sieve *sv, const char *p, size_t n, const char **error_r)
    __attribute__((warn_unused_result));
/* octets of the message spooled (head not counted) */
size_t smtp_sieve_size(const struct smtp_sieve *sv);
/* job thread; m is the pending message (stable while the session waits) */
void smtp_sieve_run(struct smtp_sieve *sv, const struct smtp_msg *m);
const struct smtp_sieve_result *smtp_sieve_result(const struct smtp_sieve *sv);
/* the store route's spool (edited when the scripts edited), for the
 * delivery to commit; NULL on the downstream route; once */
struct maildir_tmp *smtp_sieve_take_store(struct smtp_sieve *sv);
/* store route, passed unedited: the message as smtp_sieve_run() parsed it,
 * for the user level in the same job (smtp_deliver_sieve_job_set_msg);
 * NULL: none (read the spool). Valid until smtp_sieve_free() */
const struct sieve_deliver_msg *smtp_sieve_msg(const struct smtp_sieve *sv);
/* queue the spool on ds while less than queue_max waits there: 1 all of
 * it was queued (then downstream_finish), 0 wait for room, -1 a read failed */
int smtp_sieve_pump(struct smtp_sieve *sv, struct downstream *ds, size_t queue_max);
/* the verdict to log (engine_log) for a result that is not a plain pass */
void smtp_sieve_verdict(const struct smtp_sieve_result *r, struct verdict *v);
void smtp_sieve_free(struct smtp_sieve **sv);

#endif
