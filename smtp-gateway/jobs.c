/*
 * jobs - worker threads for blocking work, completions back on the loop.
 *
 *   jobs_submit()   queue run(); done() is called on the loop afterwards
 *
 * Completion travels through a pipe the event loop watches, so libevent is
 * never touched from a worker thread. Several deliveries fsync at once on
 * different threads, which lets the file system group their commits.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/log.h"
#include "common/xmalloc.h"
#include "smtp-gateway/jobs.h"

struct job {
	struct job *next;
	void (*run)(void *);
	void (*done)(void *);
	void *arg;
};

struct jobs {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job *head, *tail;
	int stop;
	pthread_t *threads;
	unsigned nthreads;
	int pipefd[2];
	struct event *ev;
	size_t pending;
};

static void *
worker(void *arg)
{
	struct jobs *j = arg;

	for (;;) {
		struct job *jb;

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
		/* a pointer is smaller than PIPE_BUF: the write is atomic */
		while (write(j->pipefd[1], &jb, sizeof(jb)) < 0 && errno == EINTR)
			;
	}
}

static void
completed(evutil_socket_t fd, short what, void *arg)
{
	struct jobs *j = arg;
	struct job *jb;

	(void)what;
	while (read(fd, &jb, sizeof(jb)) == (ssize_t)sizeof(jb)) {
		j->pending--;
		jb->done(jb->arg);
		free(jb);
	}
}

struct jobs *
jobs_new(struct event_base *base, unsigned threads)
{
	struct jobs *j = xcalloc(1, sizeof(*j));

	pthread_mutex_init(&j->lock, NULL);
	pthread_cond_init(&j->cond, NULL);
	if (pipe2(j->pipefd, O_CLOEXEC) < 0)
		fatal("jobs: pipe: %s", strerror(errno));
	fcntl(j->pipefd[0], F_SETFL, O_NONBLOCK);
	j->ev = event_new(base, j->pipefd[0], EV_READ | EV_PERSIST, completed, j);
	event_add(j->ev, NULL);
	j->threads = xcalloc(threads, sizeof(pthread_t));
	for (unsigned i = 0; i < threads; i++) {
		if (pthread_create(&j->threads[i], NULL, worker, j) != 0)
			fatal("jobs: cannot start a worker thread");
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
	if (j->tail)
		j->tail->next = jb;
	else
		j->head = jb;
	j->tail = jb;
	pthread_cond_signal(&j->cond);
	pthread_mutex_unlock(&j->lock);
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
	int fl;

	if (j == NULL)
		return;
	pthread_mutex_lock(&j->lock);
	j->stop = 1;
	pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->lock);
	for (unsigned i = 0; i < j->nthreads; i++)
		pthread_join(j->threads[i], NULL);
	/* finish what completed: their done() callbacks still run */
	fl = fcntl(j->pipefd[0], F_GETFL);
	fcntl(j->pipefd[0], F_SETFL, fl | O_NONBLOCK);
	completed(j->pipefd[0], EV_READ, j);
	event_free(j->ev);
	close(j->pipefd[0]);
	close(j->pipefd[1]);
	pthread_mutex_destroy(&j->lock);
	pthread_cond_destroy(&j->cond);
	free(j->threads);
	free(j);
	*jp = NULL;
}
