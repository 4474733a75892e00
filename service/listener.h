#ifndef PC_LISTENER_H
#define PC_LISTENER_H
/*
 * listener - listening sockets for every network door: "HOST:PORT",
 * "[ADDRESS]:PORT" and "unix:/PATH" parsed in one place, bound by the master (so a restarted
 * worker inherits them), and an accept loop that survives running out of
 * file descriptors: it pauses and backs off instead of spinning, and logs
 * that once a minute.
 */
#include <sys/socket.h>

struct event_base;
struct listener;

/* a new connection: fd is non-blocking and close-on-exec, and the callee's */
typedef void listener_accept_fn(void *arg, int fd, struct sockaddr *sa, socklen_t salen);

/* "127.0.0.1:25", "[::1]:25", "unix:/run/x.sock" (absolute) -> a socket
 * address; key names the setting in the error ("smtp_listen = ...: expected
 * HOST:PORT or [ADDRESS]:PORT"). Which kinds a setting takes is conf's call. */
int listener_parse(const char *spec, const char *key, struct sockaddr_storage *ss_r,
    socklen_t *len_r, const char **error_r) __attribute__((warn_unused_result));
/* parse and bind; the listening fd goes to *fd_r. unix:/PATH replaces a
 * stale socket at PATH (never another file) and is made 0666 (the
 * directory decides who may connect) */
int listener_bind(const char *spec, const char *key, int *fd_r, const char **error_r)
    __attribute__((warn_unused_result));

/* accept on fd (not closed by listener_free) on this loop; name is for logs */
struct listener *listener_new(struct event_base *base, int fd, const char *name,
    listener_accept_fn *cb, void *arg);
void listener_free(struct listener **l);
/*
 * The master's word that this process no longer accepts: fd (the write end
 * of a pipe the master reads) is closed once the process's last listener is
 * freed (draining for a reload, or stopping), or at exit. A
 * reload answers "done" only after the old worker's EOF, so no connection
 * reaches the old settings once the admin was told the new ones are in force.
 */
void listener_ack_when_closed(int fd);

#endif
