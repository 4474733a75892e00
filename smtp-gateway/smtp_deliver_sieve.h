#ifndef PC_SMTP_DELIVER_SIEVE_H
#define PC_SMTP_DELIVER_SIEVE_H
#include <stddef.h>
#include "rules/sieve.h"
#include "rules/sieve_rules.h"
#include "storage-adapter/maildir.h"

/*
 * The SMTP gateway's delivery into the bundled store with the user Sieve
 * scripts (issue 10): what the delivery job (smtp_server.c, a job thread)
 * runs between the spooled message and the 250.
 *
 *   smtp_deliver_sieve_new()     the door's settings and the compiled-script
 *                                cache; one per server, shared by its job
 *                                threads
 *   smtp_deliver_sieve_job_new() on the loop at the final dot: the envelope,
 *                                the session's facts and a held reference on
 *                                the published server/domain snapshot (held
 *                                while the job is queued and runs)
 *   smtp_deliver_sieve_run()     on the job thread: 0 when no local recipient
 *                                has a script and no server/domain script
 *                                acts on the store (the caller delivers as
 *                                before, one
 *                                hard-linked copy for all), else 1 with the
 *                                message delivered (*ok_r 1) or not (*ok_r 0,
 *                                err says why: the caller answers 4xx)
 *
 * The server and domain levels run again here (before the user's, as
 * Pigeonhole's sieve_before scripts) only when they act on the store
 * (imap4flags, vacation, fileinto other than "Quarantine", keep with tags,
 * include): their reject, discard, quarantine, redirect and header edits
 * were done by the door at end of data, and what they took never gets
 * here.
 *
 * With scripts: the message is written whole to the first recipient's tmp/
 * (if it was not spooled already) and read back from there, unless the
 * door handed its parse over (smtp_deliver_sieve_job_set_msg: then the spool
 * is opened only for a plan that is not a plain keep); per recipient
 * sieve_deliver_plan() runs the server, domain and user levels; recipients
 * whose plan is a plain keep (and those without any script) are committed
 * together by hard links, all or nothing; for the others every outgoing
 * message (redirect, vacation reply, RFC 5429 refusal) goes to the
 * relayhost first, then the copies are stored (fileinto folders, flags,
 * keywords), or, when the relayhost did not take one, the message is kept
 * in the INBOX and the log says why. A script that does not compile or
 * fails keeps the message in the INBOX (logged). Duplicates over loss: a
 * store failure after others were stored still answers 4xx.
 *
 * Compiled user scripts are cached (SMTP_SIEVE_CACHE_MAX entries, least
 * recently used out), keyed by the file's path and checked against its
 * inode, size and mtime (one stat) at most once a second per user, a user
 * without a script too: a new, changed or removed script is in force
 * within a second (issue 10); a script that
 * requires "include" is compiled each time (its included files are not
 * tracked). A broken script's error is cached the same way, so it is not
 * recompiled for every message.
 *
 * Redirects: the message as stored minus our Return-Path:, with
 * "X-Sieve-Redirected-From: <USER>" put on top (as Pigeonhole does); a
 * message that already carries that header naming the user (it came back),
 * or SIEVE_DELIVER_MAX_REDIRECT_HOPS of them, is not redirected again but
 * kept (storage-adapter/sieve_deliver.c).
 */

#define SMTP_SIEVE_CACHE_MAX 1024	/* compiled user scripts kept */
#define SMTP_SIEVE_RECHECK_NS 1000000000LL	/* a user's script file looked at */
#define SMTP_SIEVE_RELAY_TIMEOUT 60	/* at most, per relayhost reply (smtp_timeout) */

struct smtp_deliver_sieve_conf {
	const char *sieve_dir;		/* NULL: no user scripts */
	const char *state_dir;		/* vacation tracking; NULL: none */
	const char *relayhost;		/* "[HOST]:PORT"; NULL: none */
	const char *hostname;		/* EHLO, Message-IDs */
	unsigned timeout;		/* seconds per relayhost reply */
	const struct sieve_limits *limits;	/* NULL: defaults */
	struct sieve_rules_ref *rules;	/* server/domain snapshot; NULL: none */
};

struct smtp_deliver_sieve;
struct smtp_deliver_sieve_job;
struct sieve_deliver_msg;

/* NULL when there is nothing to do (no sieve_dir, no snapshot) */
struct smtp_deliver_sieve *smtp_deliver_sieve_new(const struct smtp_deliver_sieve_conf *c);
void smtp_deliver_sieve_free(struct smtp_deliver_sieve **sv);

/* sv may be NULL (then NULL); strings are copied */
struct smtp_deliver_sieve_job *smtp_deliver_sieve_job_new(struct smtp_deliver_sieve *sv,
    const char *sender, const char *client, const char *helo, const char *conn);
void smtp_deliver_sieve_job_free(struct smtp_deliver_sieve_job **j);
/* the door's parsed message (smtp_sieve_msg; NULL: none): the user level
 * uses it instead of reading the spool again; pre stays valid until the
 * run returned. j may be NULL */
void smtp_deliver_sieve_job_set_msg(struct smtp_deliver_sieve_job *j,
    const struct sieve_deliver_msg *pre);

/*
 * On the job thread. spool: the message's tmp/ file so far (NULL: not
 * spooled; head then data are the whole message); rest: what is left to
 * write (the data). r/n: the local recipients (canonical names). id_r
 * (>= 64 bytes): the stored file's name for the log and the 250. *spool is
 * consumed when 1 is returned; *spool_err_r gets errno for a failed write.
 */
int smtp_deliver_sieve_run(struct smtp_deliver_sieve_job *j, struct maildir_tmp **spool,
    const char *root, const struct maildir_rcpt *r, size_t n, const char *head,
    const char *data, size_t len, char *id_r, int *ok_r, int *spool_err_r, char *err,
    size_t errsz);

#endif
