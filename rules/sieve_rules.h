#ifndef PC_SIEVE_RULES_H
#define PC_SIEVE_RULES_H
#include <stdatomic.h>
#include <stddef.h>
#include "rules/sieve.h"

/*
 * The server and domain Sieve scripts the doors enforce right now, and
 * their evaluation at end of message (the MTA side of issue 10).
 *
 *   struct sieve_rules     an immutable compiled snapshot of every script
 *   sieve_rules_ref_*()    its publication point: readers never block; the
 *                          one writer (the sieve watcher) swaps in a new
 *                          snapshot, waits out readers of the pointer (two
 *                          epochs, as rules/snapshot.c) and drops its
 *                          reference; a reader that keeps the snapshot past
 *                          one call holds a reference (sieve_rules_hold)
 *   sieve_rules_eval()     server script, then the recipient domain's, with
 *                          Pigeonhole's multiscript semantics (a level that
 *                          cancels the keep -- discard, reject, quarantine,
 *                          redirect -- ends the sequence: what a higher
 *                          level took, a lower one cannot bring back)
 *
 * Quarantine is Pigeonhole-compatible: `fileinto "Quarantine"` (any case)
 * at the server or domain level. Other folders mean nothing before the
 * store: there the message passes (logged).
 *
 * Owner: sievestore_load() builds snapshots; compiled scripts are shared
 * between successive snapshots by reference count.
 */

/* one compiled script, shared by successive snapshots */
struct sieve_rules_script {
	atomic_int refs;
	struct sieve_script *s;
	char *path;		/* the file, for logs and explain */
	char *name;		/* "" server, else the domain */
	/* what the file was when compiled (size, mtime ns, inode) */
	long long size, mtime_ns;
	unsigned long long ino;
	int needs_body;		/* requires "body" or tests the size */
	/* the gateway's delivery: whether a command acts on the store, found
	 * once (0 not yet, 1 no, 2 yes; smtp_deliver_sieve.c) */
	atomic_int acts_store;
};

struct sieve_rules {
	atomic_int refs;
	struct sieve_rules_script *server;	/* NULL: none */
	struct sieve_rules_script **dom;	/* sorted by name (lower case) */
	size_t ndom;
	unsigned long long global_sig;		/* of sieve_dir/global/ when built */
	unsigned long generation;
};

struct sieve_rules *sieve_rules_new(void);
struct sieve_rules_script *sieve_rules_script_ref(struct sieve_rules_script *s);
void sieve_rules_script_unref(struct sieve_rules_script **s);
/* a new reference to r / drop one (frees at zero) */
const struct sieve_rules *sieve_rules_hold(const struct sieve_rules *r);
void sieve_rules_unref(const struct sieve_rules **r);
/* the script of domain (case-insensitive); NULL: none */
const struct sieve_rules_script *sieve_rules_domain(const struct sieve_rules *r,
    const char *domain);
/* 1 when any script exists / when one needs the body */
int sieve_rules_any(const struct sieve_rules *r);
int sieve_rules_need_body(const struct sieve_rules *r);

struct sieve_rules_ref {
	_Atomic(struct sieve_rules *) cur;
	atomic_uint epoch;
	atomic_long readers[2];
};
void sieve_rules_ref_init(struct sieve_rules_ref *ref, struct sieve_rules *first);
void sieve_rules_ref_deinit(struct sieve_rules_ref *ref);
/* a held snapshot (never NULL once initialised); release with sieve_rules_unref */
const struct sieve_rules *sieve_rules_ref_get(struct sieve_rules_ref *ref);
/* single writer: takes r */
void sieve_rules_ref_publish(struct sieve_rules_ref *ref, struct sieve_rules *r);

/* ---- evaluation ---- */
enum sieve_door_action {
	SIEVE_DOOR_PASS, SIEVE_DOOR_REJECT, SIEVE_DOOR_DISCARD, SIEVE_DOOR_QUARANTINE,
};

/* what a door does with the message */
struct sieve_door_result {
	enum sieve_door_action action;
	char text[512];		/* reject text (printable ASCII), quarantine reason */
	const char *tag;	/* "sieve-reject", "sieve-discard", "sieve-quarantine"; NULL pass */
	char where[300];	/* "FILE line N": what decided */
	/* header edits: the header as the scripts left it; NULL: unedited */
	struct sieve_header *hdr;
	size_t nhdr;
	char **redirect;	/* added recipients */
	size_t nredirect;
	int drop_original;	/* a redirect without :copy took the message */
	/* per level, the actions and their lines: "server /x/server.sieve: reject
	 * \"text\" (line 3)"; one string per line */
	char **trace;
	size_t ntrace;
};
void sieve_door_result_free(struct sieve_door_result *d);

/*
 * Run the server script, then domain's (NULL: none) over m. m carries the
 * envelope (env_from, env_to) and the environment items; fill those with
 * sieve_rules_msg_facts(). A failed run is logged into the trace and the
 * message passes as it was (Pigeonhole keeps a message a script failed on).
 */
void sieve_rules_eval(const struct sieve_rules *r, const char *domain,
    const struct sieve_msg *m, const struct sieve_limits *lim, struct sieve_door_result *d);

/* the session's facts as Sieve environment items (NULL: unknown) */
void sieve_rules_msg_facts(struct sieve_msg *m, const char *remote_ip, const char *remote_host,
    const char *helo, const char *auth, const char *country);

#endif
