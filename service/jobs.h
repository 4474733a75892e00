#ifndef PC_JOBS_H
#define PC_JOBS_H
#include <stddef.h>

/*
 * Job pools for an event loop's slow work: run(arg) on a worker thread,
 * then done(arg) back on the loop. A loop keeps one pool per kind of work
 * (store I/O apart from password hashing), so that one kind never waits
 * behind the other. A pool may be bounded: jobs_try_submit() then refuses
 * work past the bound instead of queueing it.
 * Owner: the event loop's thread; jobs_submit(), jobs_try_submit() and
 * jobs_free() are called on that thread only.
 */
struct event_base;
struct jobs;

/* threads workers; max_jobs: bound on queued + running jobs (0: none) */
struct jobs *jobs_new(struct event_base *base, const char *name, unsigned threads,
    size_t max_jobs);
/* runs every job still queued, then their done() callbacks (on this thread),
 * stops the threads; never waits on the loop */
void jobs_free(struct jobs **j);
/* queue run(); done() is called on the loop afterwards. Ignores the bound. */
void jobs_submit(struct jobs *j, void (*run)(void *arg), void (*done)(void *arg), void *arg);
/* the same within the bound: -1 (nothing queued) when the pool is full */
int jobs_try_submit(struct jobs *j, void (*run)(void *arg), void (*done)(void *arg), void *arg)
    __attribute__((warn_unused_result));
/* jobs queued or running */
size_t jobs_pending(const struct jobs *j);

#endif
