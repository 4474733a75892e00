#ifndef PC_JOBS_H
#define PC_JOBS_H
#include <stddef.h>

/*
 * A small thread pool for the event loop's slow work (fsync, password
 * hashing): run(arg) on a worker thread, then done(arg) back on the loop.
 * Owner: the event loop's thread; jobs_submit() and the loop side are not
 * thread-safe, which is fine as only the loop calls them.
 */
struct event_base;
struct jobs;

struct jobs *jobs_new(struct event_base *base, unsigned threads);
/* waits for running jobs, runs their done() callbacks, stops the threads */
void jobs_free(struct jobs **j);
void jobs_submit(struct jobs *j, void (*run)(void *arg), void (*done)(void *arg), void *arg);
/* jobs queued or running */
size_t jobs_pending(const struct jobs *j);

#endif
