#ifndef PC_LOG_H
#define PC_LOG_H
#include <stddef.h>

enum log_level { LOG_LVL_DEBUG, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };

/* to_stderr: one line per message on stderr; otherwise syslog(LOG_MAIL). */
void log_open(const char *ident, int to_stderr);
void log_set_level(enum log_level level);
/* log_file: write every line to PATH (opened for append, created 0640)
 * instead of syslog or stderr; -1 with *error_r when it cannot be opened */
int log_open_file(const char *path, const char **error_r) __attribute__((warn_unused_result));
/* reopen that file by name (after logrotate moved it); no-op without one */
void log_reopen(void);
/* a process whose threads cannot sigwait: SIG (unblocked here) asks for a
 * log_reopen() before the next line is written */
void log_reopen_on_signal(int sig);
/* the log_file's descriptor, -1 when there is none */
int log_file_fd(void);
int log_level_parse(const char *s, enum log_level *level_r);
int log_is_debug(void);
int log_is_stderr(void);

void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* broken environment at start-up: log and exit(1) */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* broken invariant: log and abort() */
void panic(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Copy at most MAX_LOG_ESCAPED bytes of untrusted src into dst as printable
 * ASCII (\xNN escapes, "..." when cut). dst must hold 4*MAX_LOG_ESCAPED+8. */
#define LOG_ESCAPE_BUFSZ (4 * 64 + 8)
const char *log_escape(char *dst, const char *src, size_t srclen);

#endif
