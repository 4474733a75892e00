#ifndef PC_MAILSTORE_CACHE_H
#define PC_MAILSTORE_CACHE_H
#include <stddef.h>
#include <stdint.h>

/*
 * The message string cache of the Maildir backend (mailstore_cache.c): per
 * folder, the strings a door computed from a message file (IMAP ENVELOPE,
 * BODY, BODYSTRUCTURE), keyed by the file's Maildir base name, in memory
 * per process (shared by its sessions) and in the folder's own file
 * "portcullis.cache" (Dovecot ignores files it does not know), so a fresh
 * process answers from it too. The doors use it through mailstore.h
 * (mailstore_cache_get/_put/_flush); this header is for the backend, the
 * unit tables and the fuzzer.
 *
 * Why a base name is a safe key: a Maildir file's bytes never change, and
 * its base name (time, delivery identifiers, host; ,S= and ,W=) is never
 * given to another file: a flag change renames only the part after ':', a
 * message is never rewritten in place and never replaced under the same
 * name. So an entry is right as long as its base name is in the folder;
 * entries of expunged messages are dropped when the file is next written.
 *
 * The file, written whole (tmp + rename; a torn or damaged file is thrown
 * away with a log line and rebuilt, it is only a cache):
 *
 *   "portcullis-cache 1\n"
 *   per message: "<baselen> <len0> <len1> <len2>\n" <base> <value0> <value1>
 *                <value2> "\n"      (a length "-": that value is absent)
 *   "end <number of messages>\n"    and nothing after it
 *
 * Bounds: a base name of at most MAX_MAILSTORE_FNAME bytes (no '/', ':',
 * control bytes), values of at most MAX_MAILSTORE_CACHE_VALUE bytes, at
 * most MAX_MAILSTORE_MESSAGES messages, files of at most
 * MAX_MAILSTORE_CACHE_FILE bytes.
 */

#define MSCACHE_FILE		"portcullis.cache"
#define MSCACHE_FIELDS		3

/* one message of a cache file, as the parser gives it (not NUL-terminated) */
struct mscache_rec {
	const char *base;
	size_t baselen;
	const char *val[MSCACHE_FIELDS];	/* NULL: absent */
	size_t len[MSCACHE_FIELDS];
};

/*
 * Parse a whole cache file: FN is called for each message in file order
 * (non-zero from FN stops with -1). -1 and *error_r when the file is not
 * exactly a cache file (then some messages may have been given already).
 */
int mscache_parse(const char *buf, size_t len,
    int (*fn)(void *ctx, const struct mscache_rec *rec), void *ctx, const char **error_r)
    __attribute__((warn_unused_result));
/* append one message's record to *OUT (growing buffer *out, *len, *cap) */
void mscache_format_rec(char **out, size_t *len, size_t *cap, const struct mscache_rec *rec);
/* the header and the trailer */
void mscache_format_head(char **out, size_t *len, size_t *cap);
void mscache_format_tail(char **out, size_t *len, size_t *cap, size_t nrecs);

/*
 * The process-wide cache of folder DIR (thread-safe; file I/O: job threads).
 * get: 0 and a malloc'd, NUL-terminated copy; -1 when not cached.
 * flush: write DIR's file if it gained entries since it was read, keeping
 * only the base names IS_LIVE says are in the folder.
 */
int mscache_get(const char *dir, const char *base, size_t baselen, unsigned field,
    char **val_r, size_t *len_r);
void mscache_put(const char *dir, const char *base, size_t baselen, unsigned field,
    const char *val, size_t len);
void mscache_flush(const char *dir, int (*is_live)(void *ctx, const char *base, size_t baselen),
    void *ctx);
/* 1 when DIR's copy gained entries its file lacks (a cheap test before a flush) */
int mscache_is_dirty(const char *dir);
/* the backend's current file name of message I of BOX (mailstore_maildir.c) */
struct mailstore_box;
const char *mailstore_maildir_fname(const struct mailstore_box *box, size_t i);
/* forget everything held in memory (tests) */
void mscache_reset(void);

#endif
