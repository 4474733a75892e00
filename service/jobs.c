/*
 * jobs - pools of worker threads for blocking work, completions back on
 * the loop.
 *
 *   jobs_new()          a pool of N threads, optionally bounded
 *   jobs_submit()       queue run(); done() is called on the loop afterwards
 *   jobs_try_submit()   the same, or -1 when the pool is at its bound
 *   jobs_free()         finish everything queued, stop the threads
 *
 * Completed jobs go on a list under the pool's lock; a worker writes one
 * wake-up byte into a non-blocking pipe only when that list goes from empty
 * to non-empty. A worker therefore never blocks on the pipe (a full pipe
 * just means a wake-up is already pending), and jobs_free() can join the
 * threads without the loop running: there is no completion pipe to fill
 * up and hang the shutdown. libevent is never touched from a worker thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/log.h"
#include "common/xmalloc.h"
#include "service/jobs.h"

struct job {
	struct job *next;
	void (*run)(void *);
	void (*done)(void *);
	void *arg;
};

struct jobs {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job *head, *tail;	/* queued */
	struct job *done_head, *done_tail;	/* completed, done() not yet called */
	int stop;
	pthread_t *threads;
	unsigned nthreads;
	int pipefd[2];		/* wake-up bytes, both ends non-blocking */
	struct event *ev;
	size_t pending;		/* queued + running + completed; loop side only */
	size_t max_jobs;
	char name[32];
};

static void
push(struct job **head, struct job **tail, struct job *jb)
{
	jb->next = NULL;
	if (*tail)
		(*tail)->next = jb;
	else
		*head = jb;
	*tail = jb;
}

static void *
worker(void *arg)
{
	struct jobs *j = arg;

	for (;;) {
		struct job *jb;
		int wake;

		pthread_mutex_lock(&j->lock);
		while (j->head == NULL && !j->stop)
			pthread_cond_wait(&j->cond, &j->lock);
		if (j->head == NULL && j->stop) {
			pthread_mutex_unlock(&j->lock);
			return NULL;
		}
		jb = j->head;
		j->head = jb->next;
		if (j->head == NULL)
			j->tail = NULL;
		pthread_mutex_unlock(&j->lock);
		jb->run(jb->arg);
		pthread_mutex_lock(&j->lock);
		wake = j->done_head == NULL;
		push(&j->done_head, &j->done_tail, jb);
		pthread_mutex_unlock(&j->lock);
		if (wake) {
			char b = 1;

			/* EAGAIN: the pipe is full of wake-ups already; fine */
			while (write(j->pipefd[1], &b, 1) < 0 && errno == EINTR)
				;
		}
	}
}

/* on the loop: call done() for every completed job */
static void
completed(evutil_socket_t fd, short what, void *arg)
{
	struct jobs *j = arg;
	char buf[64];
	struct job *list;

	(void)what;
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	pthread_mutex_lock(&j->lock);
	list = j->done_head;
	j->done_head = j->done_tail = NULL;
	pthread_mutex_unlock(&j->lock);
	while (list != NULL) {
		struct job *jb = list;

		list = jb->next;
		j->pending--;
		jb->done(jb->arg);
		free(jb);
	}
}

struct jobs *
jobs_new(struct event_base *base, const char *name, unsigned threads, size_t max_jobs)
{
	struct jobs *j = xcalloc(1, sizeof(*j));

	pthread_mutex_init(&j->lock, NULL);
	pthread_cond_init(&j->cond, NULL);
	snprintf(j->name, sizeof(j->name), "%s", name);
	j->max_jobs = max_jobs;
	if (pipe2(j->pipefd, O_CLOEXEC | O_NONBLOCK) < 0)
		fatal("jobs %s: pipe: %s", name, strerror(errno));
	j->ev = event_new(base, j->pipefd[0], EV_READ | EV_PERSIST, completed, j);
	event_add(j->ev, NULL);
	j->threads = xcalloc(threads, sizeof(pthread_t));
	for (unsigned i = 0; i < threads; i++) {
		if (pthread_create(&j->threads[i], NULL, worker, j) != 0)
			fatal("jobs %s: cannot start a worker thread", name);
		j->nthreads++;
	}
	return j;
}

void
jobs_submit(struct jobs *j, void (*run)(void *), void (*done)(void *), void *arg)
{
	struct job *jb = xcalloc(1, sizeof(*jb));

	jb->run = run;
	jb->done = done;
	jb->arg = arg;
	j->pending++;
	pthread_mutex_lock(&j->lock);
	push(&j->head, &j->tail, jb);
	pthread_cond_signal(&j->cond);
	pthread_mutex_unlock(&j->lock);
}

int
jobs_try_submit(struct jobs *j, void (*run)(void *), void (*done)(void *), void *arg)
{
	if (j->max_jobs > 0 && j->pending >= j->max_jobs)
		return -1;
	jobs_submit(j, run, done, arg);
	return 0;
}

size_t
jobs_pending(const struct jobs *j)
{
	return j->pending;
}

void
jobs_free(struct jobs **jp)
{
	struct jobs *j = *jp;

	if (j == NULL)
		return;
	pthread_mutex_lock(&j->lock);
	j->stop = 1;
	pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->lock);
	/* the workers finish the queue; none of them can block on the pipe */
	for (unsigned i = 0; i < j->nthreads; i++)
		pthread_join(j->threads[i], NULL);
	completed(j->pipefd[0], EV_READ, j);	/* their done() callbacks still run */
	event_free(j->ev);
	close(j->pipefd[0]);
	close(j->pipefd[1]);
	pthread_mutex_destroy(&j->lock);
	pthread_cond_destroy(&j->cond);
	free(j->threads);
	free(j);
	*jp = NULL;
}
