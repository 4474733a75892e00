#ifndef PC_LOG_H
#define PC_LOG_H
#include <stddef.h>

enum log_level { LOG_LVL_DEBUG, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };

/* to_stderr: one line per message on stderr; otherwise syslog(LOG_MAIL). */
void log_open(const char *ident, int to_stderr);
void log_set_level(enum log_level level);
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
