/*
 * log - one line per event, to syslog (mail facility) or stderr.
 *
 *   log_open(ident, to_stderr)   choose the sink; call once at start-up
 *   log_open_file(path, error_r) from now on write to PATH (log_file): one
 *                                append-mode write per line
 *   log_reopen()                 reopen that file (SIGUSR1, for logrotate)
 *   log_reopen_on_signal(sig)    a worker: reopen before the next line after sig
 *   log_set_level(level)         drop messages below level
 *   log_debug/info/warn/error()  printf-style; thread-safe (one write per line)
 *   fatal()                      start-up failure: log, exit(1)
 *   panic()                      broken invariant: log, abort()
 *   log_escape()                 make hostile bytes safe to log, capped
 *
 * Never logs raw peer bytes: callers pass them through log_escape().
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/pclimits.h"

static const char *log_ident = "portcullis";
static int log_stderr = 1;
static enum log_level log_min = LOG_LVL_INFO;
/* log_file: the path and its descriptor (-1: not in use) */
static char log_path[4096];
static int log_fd = -1;
static pthread_mutex_t log_fd_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile sig_atomic_t log_reopen_wanted;

static void
log_reopen_handler(int sig)
{
	(void)sig;
	log_reopen_wanted = 1;	/* done by the next line logged: nothing else is signal-safe */
}

void
log_reopen_on_signal(int sig)
{
	struct sigaction sa;
	sigset_t set;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = log_reopen_handler;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	sigaction(sig, &sa, NULL);
	sigemptyset(&set);
	sigaddset(&set, sig);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

int
log_open_file(const char *path, const char **error_r)
{
	static char err[4200];
	int fd;

	if (strlen(path) >= sizeof(log_path)) {
		*error_r = "log_file: path too long";
		return -1;
	}
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);
	if (fd < 0) {
		snprintf(err, sizeof(err), "log_file %s: %s", path, strerror(errno));
		*error_r = err;
		return -1;
	}
	pthread_mutex_lock(&log_fd_lock);
	if (log_fd >= 0)
		close(log_fd);
	log_fd = fd;
	memcpy(log_path, path, strlen(path) + 1);
	pthread_mutex_unlock(&log_fd_lock);
	return 0;
}

int
log_file_fd(void)
{
	return log_fd;
}

void
log_reopen(void)
{
	int fd;

	if (log_fd < 0)
		return;
	/* a file we cannot reopen (removed directory, permissions): keep the
	 * old descriptor, so lines still go somewhere, and say so there */
	fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);
	if (fd < 0) {
		log_error("cannot reopen log_file %s: %s", log_path, strerror(errno));
		return;
	}
	pthread_mutex_lock(&log_fd_lock);
	close(log_fd);
	log_fd = fd;
	pthread_mutex_unlock(&log_fd_lock);
}

void
log_open(const char *ident, int to_stderr)
{
	log_ident = ident;
	log_stderr = to_stderr;
	if (!to_stderr)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

void
log_set_level(enum log_level level)
{
	log_min = level;
}

int
log_is_stderr(void)
{
	return log_stderr;
}

int
log_is_debug(void)
{
	return log_min <= LOG_LVL_DEBUG;
}

int
log_level_parse(const char *s, enum log_level *level_r)
{
	static const struct { const char *name; enum log_level lvl; } t[] = {
		{ "debug", LOG_LVL_DEBUG }, { "info", LOG_LVL_INFO },
		{ "warn", LOG_LVL_WARN }, { "warning", LOG_LVL_WARN },
		{ "error", LOG_LVL_ERROR },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (strcasecmp(s, t[i].name) == 0) {
			*level_r = t[i].lvl;
			return 0;
		}
	return -1;
}

static void
log_vemit(enum log_level lvl, const char *fmt, va_list ap)
{
	static const char *const prefix[] = { "debug: ", "", "warning: ", "error: " };
	static const int prio[] = { LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR };
	char line[2048];
	int n;

	if (lvl < log_min)
		return;
	if (log_reopen_wanted) {
		log_reopen_wanted = 0;
		log_reopen();
	}
	n = vsnprintf(line, sizeof(line), fmt, ap);
	if (n < 0)
		return;
	if (log_fd >= 0 || log_stderr) {
		char stamp[32];
		struct timespec ts;
		struct tm tm;

		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		strftime(stamp, sizeof(stamp), "%b %e %H:%M:%S", &tm);
		if (log_fd >= 0) {
			/* one write with O_APPEND: lines of every process and thread
			 * land whole, never interleaved */
			char out[2200];
			int m = snprintf(out, sizeof(out), "%s.%03ld %s[%ld]: %s%s\n", stamp,
			    ts.tv_nsec / 1000000, log_ident, (long)getpid(), prefix[lvl], line);

			if (m > 0) {
				size_t len = (size_t)m < sizeof(out) ? (size_t)m : sizeof(out) - 1;

				if ((size_t)m >= sizeof(out))
					out[len - 1] = '\n';
				pthread_mutex_lock(&log_fd_lock);
				if (write(log_fd, out, len) < 0) {
					/* nowhere better to say it */
				}
				pthread_mutex_unlock(&log_fd_lock);
			}
			return;
		}
		/* one fprintf: stdio locks the stream, so lines never interleave */
		fprintf(stderr, "%s.%03ld %s[%ld]: %s%s\n", stamp,
		    ts.tv_nsec / 1000000, log_ident, (long)getpid(), prefix[lvl], line);
	} else {
		syslog(prio[lvl], "%s%s", prefix[lvl], line);
	}
}

#define LOG_FN(name, lvl) \
void name(const char *fmt, ...) { va_list ap; va_start(ap, fmt); \
	log_vemit(lvl, fmt, ap); va_end(ap); }
LOG_FN(log_debug, LOG_LVL_DEBUG)
LOG_FN(log_info, LOG_LVL_INFO)
LOG_FN(log_warn, LOG_LVL_WARN)
LOG_FN(log_error, LOG_LVL_ERROR)

void
fatal(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vemit(LOG_LVL_ERROR, fmt, ap);
	va_end(ap);
	if (!log_stderr) {	/* an admin running it by hand wants to see why */
		va_start(ap, fmt);
		fprintf(stderr, "%s: fatal: ", log_ident);
		vfprintf(stderr, fmt, ap);
		fputc('\n', stderr);
		va_end(ap);
	}
	exit(1);
}

void
panic(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vemit(LOG_LVL_ERROR, fmt, ap);
	va_end(ap);
	abort();
}

const char *
log_escape(char *dst, const char *src, size_t srclen)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = srclen > MAX_LOG_ESCAPED ? MAX_LOG_ESCAPED : srclen;
	char *p = dst;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)src[i];

		if (c >= 0x20 && c < 0x7f && c != '\\') {
			*p++ = (char)c;
		} else {
			*p++ = '\\';
			*p++ = 'x';
			*p++ = hex[c >> 4];
			*p++ = hex[c & 15];
		}
	}
	if (n < srclen) {
		memcpy(p, "...", 3);
		p += 3;
	}
	*p = '\0';
	return dst;
}
