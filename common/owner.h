#ifndef PC_OWNER_H
#define PC_OWNER_H

struct conf;

/*
 * run_user: the unprivileged user the daemon runs as. When root starts the
 * daemon (or runs the admin command), the files the daemon must write are
 * handed to that user: state_dir, the list files, the users file.
 */
/* uid/gid of run_user; 0 when run_user is empty; -1 with *error_r when unknown */
int owner_lookup(const struct conf *c, unsigned *uid_r, unsigned *gid_r, const char **error_r)
    __attribute__((warn_unused_result));
/* as root: chown what the daemon writes to run_user (no-op otherwise) */
void owner_fix_files(const struct conf *c);
/* as root: drop to run_user for good; -1 with *error_r on failure */
int owner_drop(const struct conf *c, const char **error_r) __attribute__((warn_unused_result));

#endif
