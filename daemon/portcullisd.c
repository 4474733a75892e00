/*
 * portcullisd - the Portcullis daemon: a master and one worker per service.
 *
 *   portcullisd [-c FILE] [-o key=value]... [-f] [-n | -t]
 *   portcullisd --help | --version
 *
 * The master reads the configuration, compiles the policy (so errors show
 * before anything runs), binds the SMTP listeners, and forks one worker per
 * entry of `services` (milter, smtp, policy, pop3, imap). Each worker loads the lists, starts
 * its watcher thread and serves; the master restarts a worker that dies
 * (within a second) and stops them all on SIGTERM/SIGINT. A worker says
 * "ready" or why it failed through a pipe: a failure at start-up (a busy
 * port, say) stops the master with that message and exit status 1.
 *
 * A worker whose master died (SIGKILL, say) stops within a second, so the
 * listeners are free for a new start.
 *
 * The open files limit is raised to its hard limit at start: every
 * connection is a descriptor.
 *
 * SIGHUP (or `portcullis reload`) reloads the configuration live: the
 * same file and -o overrides are read and checked as at start-up (by
 * `portcullisd -t` run as a child, as run_user), then applied without
 * dropping a connection: a new smtp (policy, pop3, imap) worker starts on the
 * same listening sockets and the old one drains (SIGUSR2: finishes its
 * sessions, then exits; the supervise loop reaps it without a restart);
 * the milter worker swaps its policy, and its list store if that changed,
 * in process (asked over its control socket). A configuration that fails a check is refused with the error
 * (FILE:LINE) in the log and the old one stays in force. Keys that cannot
 * change live (restart_keys) keep their running values and are logged as
 * needing a restart. The outcome goes to state_dir/reload-status, which
 * `portcullis reload` waits for.
 *
 * -f stays in the foreground and logs to stderr; otherwise the daemon
 * detaches once every worker is ready and logs to syslog (mail facility).
 * -n prints the settings that differ from their defaults, like postconf -n;
 * -t checks the configuration and exits 0 or 1, like postfix check. Both
 * run every check start-up runs (values, policy, TLS keys, list store URL,
 * the directories start-up creates, run_user) short of binding the
 * listeners, so a configuration they pass fails at start only for want of a
 * resource (a busy port, say).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/authmech.h"
#include "common/conf.h"
#include "common/fsutil.h"
#include "common/log.h"
#include "common/owner.h"
#include "common/pclimits.h"
#include "common/tls.h"
#include "common/version.h"
#include "common/xmalloc.h"
#include "common/stats.h"
#include "daemon/metrics.h"
#include "daemon/statspub.h"
#include "daemon/watcher.h"
#include "milter/milter.h"
#include "policy/policy_door.h"
#include "pop-imap-proxy/imap_conf.h"
#include "pop-imap-proxy/imap_server.h"
#include "pop-imap-proxy/pop3_conf.h"
#include "pop-imap-proxy/pop3_server.h"
#include "rules/geoip.h"
#include "rules/policy.h"
#include "service/listener.h"
#include "smtp-gateway/downstream.h"
#include "smtp-gateway/smtp_conf.h"
#include "smtp-gateway/smtp_deliver_sieve.h"
#include "smtp-gateway/smtp_server.h"
#include "storage-adapter/liststore.h"
#include "storage-adapter/ratelimit.h"
#include "storage-adapter/sievestore.h"
#include "storage-adapter/userdb.h"

#include <openssl/ssl.h>

#define DEFAULT_CONF "/etc/portcullis/portcullis.conf"
#define MAX_SERVICES 8
#define READY_TIMEOUT_MS 15000
#define ORPHAN_GRACE_MS 700	/* a worker whose master died stops within this, or is cut */

enum service { SVC_MILTER, SVC_SMTP, SVC_POLICY, SVC_POP3, SVC_IMAP, SVC_COUNT };

struct worker {
	enum service svc;
	const struct service_def *def;
	const char *name;
	pid_t pid;
	time_t started;
	int ackfd;	/* EOF once the worker no longer accepts (listener_ack_when_closed); -1 */
};

static const struct conf *conf;
static const struct policy *pol;
static int policy_fds[MAX_LISTENERS];
static size_t npolicy_fds;
static int lifeline[2] = { -1, -1 };	/* the master holds [1]; each worker watches [0] */

/* live reload */
#define MAX_DRAINING 64		/* old smtp workers finishing their sessions */
#define RELOAD_REPLY_MS 10000	/* the check child */
#define MILTER_RELOAD_MS 60000	/* the milter's answer */
static const char *conf_path;	/* what start-up read, read again on SIGHUP */
static char **conf_ovr;
static size_t conf_novr;
static int milter_ctl = -1;	/* master: the milter worker's control socket; worker: its end */
static int status_fd = -1;	/* state_dir/reload-status, opened before dropping root */
static unsigned long reload_gen;
static struct worker draining[MAX_DRAINING];
static size_t ndraining;
/* bound, or fixed for the process' life: a reload keeps their running values */
static const char *const restart_keys[] = {
	"smtp_listen", "submission_listen", "smtps_listen", "milter_listen", "metrics_listen",
	"policy_listen", "pop3_listen", "pop3s_listen", "imap_listen", "imaps_listen",
	"run_user", "state_dir", "services", "pid_file", "log_file",
	/* read when the milter worker starts its sieve watcher */
	"sieve_dir", "sieve_max_script_size", "sieve_max_nesting", "sieve_max_actions",
	"sieve_max_redirects", "sieve_max_include_depth", "sieve_max_cpu_steps", NULL,
};

static void
usage(FILE *fp, int status)
{
	fprintf(fp,
	    "usage: portcullisd [-c FILE] [-o key=value]... [-f] [-n | -t]\n"
	    "       portcullisd --help | --version\n"
	    "  -c FILE    configuration file (default " DEFAULT_CONF ")\n"
	    "  -o k=v     override a setting\n"
	    "  -f         stay in the foreground, log to stderr\n"
	    "  -n         check the configuration, print the settings that differ\n"
	    "             from the defaults, then exit\n"
	    "  -t         check the configuration, then exit 0 (good) or 1 (the error\n"
	    "             on stderr, naming FILE:LINE)\n"
	    "  --help     this text\n"
	    "  --version  print the version\n");
	exit(status);
}

static void
mkdirs(const char *dir)
{
	if (fsutil_mkdir_p(dir, 0750, 0755) < 0)
		fatal("cannot create state_dir %s: %s", dir, strerror(errno));
}

/* whole or not at all: `portcullis reload`, systemd's PIDFile= and scripts
 * reading it right after the start never see it empty or half written */
static void
write_pidfile(const char *path)
{
	char line[32];
	int n = snprintf(line, sizeof(line), "%ld\n", (long)getpid());
	const char *err;

	if (fsutil_replace(path, line, (size_t)n, 0644, &err) < 0)
		log_warn("cannot write pid_file: %s", err);
}

/* every connection is a descriptor: take all the kernel allows us */
static void
raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= rl.rlim_max)
		return;
	rl.rlim_cur = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		log_warn("cannot raise the open files limit to %llu: %s",
		    (unsigned long long)rl.rlim_max, strerror(errno));
}

static void
block_stop_signals(int how)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGCHLD);
	pthread_sigmask(how, &set, NULL);
}

/* ---- worker side ---- */

/*
 * A worker without its master serves on unsupervised and keeps the
 * listeners, so a new start fails with "Address already in use". The
 * master holds the only write end of the lifeline: when it dies, for any
 * reason, the read end sees POLLHUP. The worker then stops as on SIGTERM,
 * and is cut short if that takes longer than ORPHAN_GRACE_MS (libmilter
 * waits for its sessions).
 */
static void *
lifeline_watch(void *arg)
{
	struct pollfd p = { .fd = lifeline[0], .events = POLLIN };

	(void)arg;
	while (poll(&p, 1, -1) < 0 && errno == EINTR)
		;
	log_error("the master process is gone: stopping");
	kill(getpid(), SIGTERM);
	usleep(ORPHAN_GRACE_MS * 1000);
	log_error("not stopped after %d ms without a master: exiting", ORPHAN_GRACE_MS);
	_exit(1);
	return NULL;
}

static void
lifeline_start(void)
{
	pthread_t t;

	close(lifeline[1]);
	lifeline[1] = -1;
	if (pthread_create(&t, NULL, lifeline_watch, NULL) != 0)
		fatal("cannot start the lifeline thread");
	pthread_detach(t);
}

static void
ready(int fd, const char *msg)
{
	if (fd < 0)
		return;
	if (write(fd, msg, strlen(msg)) < 0)
		log_warn("cannot report to the master");
	if (strcmp(msg, "ok\n") == 0)
		listener_ack_when_closed(fd);	/* and once we stop accepting, we say so */
	else
		close(fd);
}

/* the configuration as start-up read it, plus extra "key=value" overrides */
static int
reload_load_conf(char **extra, size_t nextra, struct conf **c_r, char *err, size_t cap)
{
	struct conf *c = conf_new();
	const char *e;
	int ok = conf_load_file(c, conf_path, &e) == 0;

	for (size_t i = 0; ok && i < conf_novr; i++)
		ok = conf_set_override(c, conf_ovr[i], &e) == 0;
	for (size_t i = 0; ok && i < nextra; i++)
		ok = conf_set_override(c, extra[i], &e) == 0;
	if (ok)
		ok = conf_finish(c, &e) == 0;
	if (!ok) {
		snprintf(err, cap, "%s", e);	/* e lives in c */
		conf_free(&c);
		return -1;
	}
	*c_r = c;
	return 0;
}

/*
 * The milter worker's list watcher. A reload that changes the list store
 * builds a new watcher while the old one serves, then swaps them under
 * mw_lock (which every auto-ban from a milter thread takes, briefly).
 */
static pthread_mutex_t mw_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sievewatch *sieve_w;	/* the milter's Sieve scripts */
static struct sieve_rules_ref sieve_ref;
static struct watcher *mw;
static struct liststore *mw_store, *mw_cache;
static struct snapref *mw_snaps;
static struct ratelimit *mw_rl;
static char *mw_lists;		/* the lists settings mw was made from */

static void
milter_ban(void *arg, const struct ipaddr *addr, unsigned long seconds, const char *why)
{
	(void)arg;
	pthread_mutex_lock(&mw_lock);
	if (mw != NULL)
		watcher_ban(mw, addr, seconds, why);
	pthread_mutex_unlock(&mw_lock);
}

/* what the list store is made from: another value needs another watcher */
static char *
lists_settings(const struct conf *c)
{
	return xasprintf("%s\n%s\n%s\n%s\n%s", conf_get(c, "lists"), conf_get(c, "lists_prefix"),
	    conf_get(c, "lists_password_file"), conf_get(c, "lists_cache"),
	    conf_get(c, "lists_resync"));
}

/* the milter's lists from another store: loaded first, then swapped in */
static int
milter_lists_swap(const struct conf *c, const struct policy *p, char *err, size_t cap)
{
	struct liststore *store, *cache = NULL;
	struct watcher *w, *old;
	const char *e;

	store = liststore_open_conf(c, &e);
	if (store == NULL) {
		snprintf(err, cap, "%s", e);
		return -1;
	}
	if (strcmp(liststore_scheme(store), "file") != 0) {
		char *url = xasprintf("file:%s", conf_get(c, "lists_cache"));

		cache = liststore_open(url, &e);
		free(url);
		if (cache == NULL) {
			snprintf(err, cap, "%s: lists_cache: %s", conf_where(c, "lists_cache"), e);
			liststore_free(&store);
			return -1;
		}
	}
	w = watcher_new(store, cache, NULL, &e);
	if (w == NULL) {
		snprintf(err, cap, "cannot load the lists: %s", e);
		liststore_free(&store);
		liststore_free(&cache);
		return -1;
	}
	watcher_set_tick(w, milter_poke_if_stopping);
	if (p->rate_limit > 0 || p->nrate_overrides > 0)
		watcher_set_ratelimit(w, mw_rl);
	pthread_mutex_lock(&mw_lock);
	old = mw;
	watcher_stop_and_free(&old);	/* its queued bans are written first */
	watcher_attach(w, mw_snaps);
	if (watcher_start(w, &e) < 0)
		log_error("milter: the new list watcher does not run: %s", e);
	liststore_free(&mw_store);
	liststore_free(&mw_cache);
	mw = w;
	mw_store = store;
	mw_cache = cache;
	free(mw_lists);
	mw_lists = lists_settings(c);
	pthread_mutex_unlock(&mw_lock);
	log_info("milter: lists now from %s", conf_get(c, "lists"));
	return 0;
}

/*
 * The milter worker's control thread: "R" from the master reloads the
 * policy and, when its settings changed, the list store (the master has
 * checked the file already), and answers "ok" or the reason. libmilter
 * owns the listening socket, so the milter cannot be replaced by a new
 * worker the way the smtp one is.
 */
static int
lists_differ(const struct conf *c)
{
	char *now = lists_settings(c);
	int differ;

	pthread_mutex_lock(&mw_lock);
	differ = mw != NULL && strcmp(now, mw_lists) != 0;
	pthread_mutex_unlock(&mw_lock);
	free(now);
	return differ;
}

static void *
milter_ctl_thread(void *arg)
{
	char cmd, reply[800];

	(void)arg;
	for (;;) {
		ssize_t n = read(milter_ctl, &cmd, 1);
		struct conf *c = NULL;
		struct policy *p = NULL;
		enum log_level lvl;
		const char *e;

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return NULL;
		if (reload_load_conf(NULL, 0, &c, reply, sizeof(reply) - 1) < 0) {
			;
		} else if (policy_new(c, &p, &e) < 0) {
			snprintf(reply, sizeof(reply) - 1, "%s", e);
		} else if (lists_differ(c) &&
		    milter_lists_swap(c, p, reply, sizeof(reply) - 1) < 0) {
			policy_free(&p);
		} else {
			/* the new policy's own database: a replaced file is reopened live */
			if (p->geoip != NULL && geoip_watch_start(p->geoip, 500, &e) < 0)
				log_warn("milter: geoip_database not watched for changes: %s", e);
			milter_set_policy(p);
			if (log_level_parse(conf_get(c, "log_level"), &lvl) == 0)
				log_set_level(lvl);
			log_info("milter: policy reloaded; sessions already open keep the old one");
			strcpy(reply, "ok");
		}
		conf_free(&c);
		strcat(reply, "\n");
		if (write(milter_ctl, reply, strlen(reply)) < 0)
			log_warn("milter: cannot answer the master's reload");
	}
}

/* ---- the services ---- */

/* what every worker holds: the lists and the counters */
struct worker_ctx {
	struct liststore *store, *cache;
	struct snapref snaps;
	struct ratelimit *rl;
	struct watcher *w;
	int readyfd;
};

/*
 * A front door as the daemon runs it. The master calls compile (validate
 * and compile the door's own settings from the configuration, load keys;
 * reloading: also what the new worker would only find after saying ready),
 * then bind (dry: parse only, for -t and -n); run is the worker; free
 * drops compiled settings, unbind the listening sockets. Each is passed
 * its service_def.
 */
struct door;

struct service_def {
	const char *name;
	enum service svc;
	int respawn;	/* a reload starts a new worker (else it reloads in place) */
	void *(*compile)(const struct service_def *d, const struct conf *c, int reloading,
	    char *err, size_t cap);
	int (*bind)(const struct service_def *d, const struct conf *c, void *set, int dry,
	    char *err, size_t cap);
	int (*run)(const struct service_def *d, void *set, struct worker_ctx *wc);
	void (*free)(const struct service_def *d, void *set);
	void (*unbind)(const struct service_def *d);
	struct door *door;	/* a listening door's (smtp, pop3, imap), else NULL */
};

static void *settings[SVC_COUNT];	/* each service's compiled settings */

/* the worker cannot start: say why to the master; 1 */
static int
worker_fail(struct worker_ctx *wc, const char *fmt, const char *err)
{
	char msg[700];

	snprintf(msg, sizeof(msg), fmt, err);
	strcat(msg, "\n");
	ready(wc->readyfd, msg);
	return 1;
}

static int
worker_lists(struct worker_ctx *wc)
{
	const char *err;

	wc->w = watcher_new(wc->store, wc->cache, &wc->snaps, &err);
	if (wc->w == NULL)
		return worker_fail(wc, "cannot load the lists: %s", err);
	return 0;
}

/* rate limits, the watcher's thread and the geoip watch; 0 or 1 (said) */
static int
worker_lists_start(struct worker_ctx *wc)
{
	const char *err;

	if (pol->rate_limit > 0 || pol->nrate_overrides > 0) {
		watcher_set_ratelimit(wc->w, wc->rl);
		if (!liststore_has_rate_sync(wc->store))
			log_info("relay rate limits are counted on this node only (lists = %s); "
			    "use a redis:// store to count across nodes", conf_get(conf, "lists"));
	}
	if (watcher_start(wc->w, &err) < 0)
		return worker_fail(wc, "%s", err);
	/* a replaced geoip_database is reopened within a second (this worker's copy) */
	if (pol->geoip != NULL && geoip_watch_start(pol->geoip, 500, &err) < 0)
		return worker_fail(wc, "%s", err);
	return 0;
}

/* milter */

static void *
milter_compile(const struct service_def *d, const struct conf *c, int reloading, char *err,
    size_t cap)
{
	const char *e;
	struct milter_conf *mc = milter_conf_new(c, &e);

	(void)d;
	(void)reloading;
	if (mc == NULL)
		snprintf(err, cap, "%s", e);
	return mc;
}

static void
milter_settings_free(const struct service_def *d, void *set)
{
	struct milter_conf *mc = set;

	(void)d;
	milter_conf_free(&mc);
}

static int
milter_svc_run(const struct service_def *d, void *set, struct worker_ctx *wc)
{
	static struct milter_env env;
	static struct sieve_limits sieve_lim;
	const struct milter_conf *mc = set;
	const char *err;
	int rc;

	(void)d;
	env.pol = pol;
	env.snaps = &wc->snaps;
	env.rl = wc->rl;
	env.ban = milter_ban;	/* the watcher may change with a reload */
	/* Sieve server and domain scripts (storage-adapter/sievestore.c) */
	sievestore_limits_conf(conf, &sieve_lim);
	sieve_w = sievewatch_start(conf_get(conf, "sieve_dir"), &sieve_lim, &sieve_ref, &err);
	if (sieve_w == NULL)
		log_error("sieve: %s: the milter runs without Sieve rules", err);
	env.sieve = sieve_w != NULL ? &sieve_ref : NULL;
	env.sieve_limits = &sieve_lim;
	env.message_size_limit = (size_t)conf_get_int(conf, "message_size_limit");
	if (milter_setup(mc->listen, &env, &err) < 0)
		return worker_fail(wc, "%s", err);
	/* our threads keep the stop signals blocked: libmilter's own
	 * signal thread sigwait()s for them and shuts down cleanly */
	if (worker_lists(wc) != 0)
		return 1;
	watcher_set_tick(wc->w, milter_poke_if_stopping);
	mw = wc->w;
	mw_store = wc->store;
	mw_cache = wc->cache;
	mw_snaps = &wc->snaps;
	mw_rl = wc->rl;
	mw_lists = lists_settings(conf);
	if (milter_ctl >= 0) {
		pthread_t t;

		if (pthread_create(&t, NULL, milter_ctl_thread, NULL) != 0)
			log_warn("milter: no control thread: a reload cannot reach this worker");
		else
			pthread_detach(t);
	}
	if (worker_lists_start(wc) != 0)
		return 1;
	log_info("milter ready on %s", mc->listen);
	ready(wc->readyfd, "ok\n");
	rc = milter_run();
	pthread_mutex_lock(&mw_lock);	/* what a reload left in force */
	wc->w = mw;
	wc->store = mw_store;
	wc->cache = mw_cache;
	mw = NULL;
	mw_store = mw_cache = NULL;
	free(mw_lists);
	mw_lists = NULL;
	pthread_mutex_unlock(&mw_lock);
	return rc;
}

typedef void door_ban_fn(void *arg, const struct ipaddr *addr, unsigned long seconds,
    const char *why);

/* the run-time hooks every door takes from its worker: the engine, the ban */
static void
door_hooks(struct worker_ctx *wc, const struct policy **p, struct snapref **snaps,
    door_ban_fn **ban, void **ban_arg)
{
	*p = pol;
	*snaps = &wc->snaps;
	*ban = watcher_ban;
	*ban_arg = wc->w;
}

/* policy */

static void *
policy_compile(const struct service_def *d, const struct conf *c, int reloading, char *err,
    size_t cap)
{
	const char *e;
	struct policy_door_conf *pc = policy_door_conf_new(c, &e);

	(void)d;
	(void)reloading;
	if (pc == NULL)
		snprintf(err, cap, "%s", e);
	return pc;
}

static void
policy_settings_free(const struct service_def *d, void *set)
{
	struct policy_door_conf *pc = set;

	(void)d;
	policy_door_conf_free(&pc);
}

static int
policy_bind(const struct service_def *d, const struct conf *c, void *set, int dry, char *err,
    size_t cap)
{
	const struct policy_door_conf *pc = set;
	const char *e;

	(void)d;
	for (size_t j = 0; j < pc->nlisten; j++) {
		int fd = -1;

		if (!dry && (fd = policy_door_listen(pc->listen[j], &e)) < 0) {
			snprintf(err, cap, "%s: %s", conf_where(c, "policy_listen"), e);
			return -1;
		}
		policy_fds[npolicy_fds++] = fd;
	}
	return 0;
}

static void
policy_unbind(const struct service_def *d)
{
	(void)d;
	for (size_t i = 0; i < npolicy_fds; i++)
		if (policy_fds[i] >= 0)
			close(policy_fds[i]);
	npolicy_fds = 0;
}

static int
policy_svc_run(const struct service_def *d, void *set, struct worker_ctx *wc)
{
	struct policy_door_conf *pc = set;
	const char *err;
	int rc = 0;

	(void)d;
	if (worker_lists(wc) != 0 || worker_lists_start(wc) != 0)
		return 1;
	door_hooks(wc, &pc->env.pol, &pc->env.snaps, &pc->env.ban, &pc->env.ban_arg);
	block_stop_signals(SIG_UNBLOCK);
	log_info("policy ready on %s", conf_get(conf, "policy_listen"));
	ready(wc->readyfd, "ok\n");
	if (policy_door_run(policy_fds, npolicy_fds, &pc->env, &err) < 0) {
		log_error("policy: %s", err);
		rc = -1;
	}
	block_stop_signals(SIG_BLOCK);
	return rc;
}

/*
 * The listening doors (smtp, pop3, imap) are one set of functions driven by
 * a struct door. A door's settings (struct smtp_conf, pop3_conf, imap_conf)
 * hold the listen specs of each listener kind (listen[k], nlisten[k]); the
 * master binds them all into the door's fds and kinds, which the worker
 * serves.
 */
struct door {
	const char *const *keys;	/* the listen key of each kind */
	int nkinds;
	const char *keys_text;		/* the keys, in "too many listeners (at most N in ...)" */
	size_t listen_at, nlisten_at;	/* offsetof() listen[] and nlisten[] in the settings */
	int also_kind;			/* the ready line names this kind's listeners too; -1 */
	const char *also;		/* ", pop3s on " */
	void *(*conf_new)(const struct conf *c, const char **error_r);
	void (*conf_free)(void *set);
	/* optional: what the worker does before it says ready */
	void (*prepare)(void *set, struct worker_ctx *wc);
	/* hand the worker's lists to the door and serve d->fds until stopped */
	int (*serve)(void *set, struct worker_ctx *wc, const struct door *d, const char **error_r);
	int fds[MAX_LISTENERS];		/* bound by the master */
	int kinds[MAX_LISTENERS];	/* the door's enum X_listener_kind of each */
	size_t nfds;
};

static char **const *
door_listen(const struct door *d, const void *set)
{
	return (char **const *)(const void *)((const char *)set + d->listen_at);
}

static const size_t *
door_nlisten(const struct door *d, const void *set)
{
	return (const size_t *)(const void *)((const char *)set + d->nlisten_at);
}

static void *
door_compile(const struct service_def *sd, const struct conf *c, int reloading, char *err,
    size_t cap)
{
	const struct door *d = sd->door;
	const char *e, *users = conf_get(c, "users");
	void *set = d->conf_new(c, &e);

	if (set == NULL) {
		snprintf(err, cap, "%s", e);
		return NULL;
	}
	/* the new worker reads it after saying ready: a bad one must not get that far */
	if (reloading && users[0] != '\0') {
		struct userdb *db = userdb_load(users, &e);

		if (db == NULL) {
			snprintf(err, cap, "%s: users: %s", conf_where(c, "users"), e);
			d->conf_free(set);
			return NULL;
		}
		userdb_free(&db);
	}
	return set;
}

static void
door_settings_free(const struct service_def *sd, void *set)
{
	sd->door->conf_free(set);
}

static int
door_bind(const struct service_def *sd, const struct conf *c, void *set, int dry, char *err,
    size_t cap)
{
	struct door *d = sd->door;
	char **const *listen = door_listen(d, set);
	const size_t *nlisten = door_nlisten(d, set);
	const char *e;

	for (int k = 0; k < d->nkinds; k++) {
		const char *key = d->keys[k];

		for (size_t j = 0; j < nlisten[k]; j++) {
			int fd = -1;

			if (d->nfds >= MAX_LISTENERS) {
				snprintf(err, cap, "%s: %s: too many listeners (at most %d in %s together)",
				    conf_where(c, key), key, MAX_LISTENERS, d->keys_text);
				return -1;
			}
			if (dry) {
				/* what binding would parse, without binding */
				struct sockaddr_storage ss;
				socklen_t sl;

				if (listener_parse(listen[k][j], key, &ss, &sl, &e) < 0) {
					snprintf(err, cap, "%s: %s", conf_where(c, key), e);
					return -1;
				}
			} else if (listener_bind(listen[k][j], key, &fd, &e) < 0) {
				snprintf(err, cap, "%s", e);
				return -1;
			}
			d->kinds[d->nfds] = k;
			d->fds[d->nfds++] = fd;
		}
	}
	return 0;
}

static void
door_unbind(const struct service_def *sd)
{
	struct door *d = sd->door;

	for (size_t i = 0; i < d->nfds; i++)
		if (d->fds[i] >= 0)
			close(d->fds[i]);
	d->nfds = 0;
}

static int
door_svc_run(const struct service_def *sd, void *set, struct worker_ctx *wc)
{
	const struct door *d = sd->door;
	const size_t *nlisten = door_nlisten(d, set);
	int also = d->also_kind >= 0 && nlisten[d->also_kind] > 0;
	const char *err;
	int rc = 0;

	if (worker_lists(wc) != 0 || worker_lists_start(wc) != 0)
		return 1;
	if (d->prepare != NULL)
		d->prepare(set, wc);
	/* libevent takes SIGTERM/SIGINT through its signal events */
	block_stop_signals(SIG_UNBLOCK);
	log_info("%s ready on %s%s%s", sd->name, conf_get(conf, d->keys[0]), also ? d->also : "",
	    also ? conf_get(conf, d->keys[d->also_kind]) : "");
	ready(wc->readyfd, "ok\n");
	if (d->serve(set, wc, d, &err) < 0) {
		log_error("%s: %s", sd->name, err);
		rc = -1;
	}
	block_stop_signals(SIG_BLOCK);
	return rc;
}

/* smtp */

static void *
smtp_new(const struct conf *c, const char **error_r)
{
	return smtp_conf_new(c, error_r);
}

static void
smtp_free(void *set)
{
	struct smtp_conf *sc = set;

	smtp_conf_free(&sc);
}

static struct sieve_limits smtp_sieve_lim;

static void
smtp_prepare(void *set, struct worker_ctx *wc)
{
	struct smtp_conf *sc = set;
	static struct sieve_limits sieve_lim;
	static struct smtp_deliver_sieve_conf dsc;	/* must outlive the door */
	const char *err;

	/* Sieve scripts (storage-adapter/sievestore.c); the user level runs at
	 * delivery into the store (smtp-gateway/smtp_deliver_sieve.c) */
	if (sc->srv.maildir_root != NULL) {
		sievestore_limits_conf(conf, &sieve_lim);
		if (sieve_w == NULL)
			sieve_w = sievewatch_start(conf_get(conf, "sieve_dir"), &sieve_lim, &sieve_ref,
			    &err);
		if (sieve_w == NULL)
			log_error("sieve: %s: the gateway runs without server and domain scripts", err);
		dsc.sieve_dir = conf_get(conf, "sieve_dir");
		dsc.state_dir = conf_get(conf, "state_dir");
		dsc.relayhost = conf_get(conf, "relayhost")[0] != '\0' ? conf_get(conf, "relayhost") :
		    NULL;
		dsc.hostname = conf_get(conf, "myhostname");
		/* a hung relayhost must not hold the delivery threads for long */
		dsc.timeout = (unsigned)conf_get_int(conf, "smtp_timeout");
		if (dsc.timeout > SMTP_SIEVE_RELAY_TIMEOUT)
			dsc.timeout = SMTP_SIEVE_RELAY_TIMEOUT;
		dsc.limits = &sieve_lim;
		dsc.rules = sieve_w != NULL ? &sieve_ref : NULL;
		sc->srv.deliver_sieve = smtp_deliver_sieve_new(&dsc);
	}
	door_hooks(wc, &sc->srv.params.pol, &sc->srv.params.snaps, &sc->srv.ban, &sc->srv.ban_arg);
	sc->srv.params.rl = wc->rl;
	/* Sieve server and domain scripts, as the milter (smtp-gateway/smtp_sieve.c) */
	sievestore_limits_conf(conf, &smtp_sieve_lim);
	if (sieve_w == NULL &&	/* one watcher per worker */
	    (sieve_w = sievewatch_start(conf_get(conf, "sieve_dir"), &smtp_sieve_lim, &sieve_ref,
	    &err)) == NULL)
		log_error("sieve: %s: the gateway runs without Sieve rules", err);
	sc->srv.params.sieve = sieve_w != NULL ? &sieve_ref : NULL;
	sc->srv.sieve_limits = &smtp_sieve_lim;
}

static int
smtp_serve(void *set, struct worker_ctx *wc, const struct door *d, const char **error_r)
{
	struct smtp_conf *sc = set;
	int rc = smtp_server_run(d->fds, d->kinds, d->nfds, &sc->srv, error_r);

	(void)wc;
	smtp_deliver_sieve_free(&sc->srv.deliver_sieve);
	return rc;
}

static struct door smtp_door = {
	smtp_conf_listen_keys, SMTP_CONF_KINDS, "smtp_listen, submission_listen and smtps_listen",
	offsetof(struct smtp_conf, listen), offsetof(struct smtp_conf, nlisten), -1, NULL,
	smtp_new, smtp_free, smtp_prepare, smtp_serve, { 0 }, { 0 }, 0
};

/* pop3 */

static void *
pop3_new(const struct conf *c, const char **error_r)
{
	return pop3_conf_new(c, error_r);
}

static void
pop3_free(void *set)
{
	struct pop3_conf *pc = set;

	pop3_conf_free(&pc);
}

static int
pop3_serve(void *set, struct worker_ctx *wc, const struct door *d, const char **error_r)
{
	struct pop3_conf *pc = set;

	door_hooks(wc, &pc->srv.pol, &pc->srv.snaps, &pc->srv.ban, &pc->srv.ban_arg);
	return pop3_server_run(d->fds, d->kinds, d->nfds, &pc->srv, error_r);
}

static struct door pop3_door = {
	pop3_conf_listen_keys, POP3_CONF_KINDS, "pop3_listen and pop3s_listen",
	offsetof(struct pop3_conf, listen), offsetof(struct pop3_conf, nlisten),
	POP3_LISTEN_POP3S, ", pop3s on ", pop3_new, pop3_free, NULL, pop3_serve, { 0 }, { 0 }, 0
};

/* imap */

static void *
imap_new(const struct conf *c, const char **error_r)
{
	return imap_conf_new(c, error_r);
}

static void
imap_free(void *set)
{
	struct imap_conf *ic = set;

	imap_conf_free(&ic);
}

static int
imap_serve(void *set, struct worker_ctx *wc, const struct door *d, const char **error_r)
{
	struct imap_conf *ic = set;

	door_hooks(wc, &ic->srv.pol, &ic->srv.snaps, &ic->srv.ban, &ic->srv.ban_arg);
	return imap_server_run(d->fds, d->kinds, d->nfds, &ic->srv, error_r);
}

static struct door imap_door = {
	imap_conf_listen_keys, IMAP_CONF_KINDS, "imap_listen and imaps_listen",
	offsetof(struct imap_conf, listen), offsetof(struct imap_conf, nlisten),
	IMAP_LISTEN_IMAPS, ", imaps on ", imap_new, imap_free, NULL, imap_serve, { 0 }, { 0 }, 0
};

static const struct service_def services[] = {
	{ "milter", SVC_MILTER, 0, milter_compile, NULL, milter_svc_run, milter_settings_free, NULL,
	  NULL },
	{ "smtp", SVC_SMTP, 1, door_compile, door_bind, door_svc_run, door_settings_free, door_unbind,
	  &smtp_door },
	{ "policy", SVC_POLICY, 1, policy_compile, policy_bind, policy_svc_run, policy_settings_free,
	  policy_unbind, NULL },
	{ "pop3", SVC_POP3, 1, door_compile, door_bind, door_svc_run, door_settings_free, door_unbind,
	  &pop3_door },
	{ "imap", SVC_IMAP, 1, door_compile, door_bind, door_svc_run, door_settings_free, door_unbind,
	  &imap_door },
};
#define NSERVICES (sizeof(services) / sizeof(services[0]))

static const struct service_def *
service_find(enum service svc)
{
	for (size_t i = 0; i < NSERVICES; i++)
		if (services[i].svc == svc)
			return &services[i];
	return NULL;
}

/* the master at exit: listeners closed, settings dropped */
static void
services_free(void)
{
	for (size_t i = 0; i < NSERVICES; i++) {
		if (services[i].unbind != NULL)
			services[i].unbind(&services[i]);
		if (settings[services[i].svc] != NULL)
			services[i].free(&services[i], settings[services[i].svc]);
		settings[services[i].svc] = NULL;
	}
}

static int
worker_main(enum service svc, int readyfd)
{
	const struct service_def *d = service_find(svc);
	struct worker_ctx wc;
	const char *err;
	int rc;

	memset(&wc, 0, sizeof(wc));
	wc.readyfd = readyfd;
	wc.rl = ratelimit_new();
	wc.store = liststore_open_conf(conf, &err);
	if (wc.store == NULL)
		return worker_fail(&wc, "%s", err);
	if (strcmp(liststore_scheme(wc.store), "file") != 0) {
		char *url = xasprintf("file:%s", conf_get(conf, "lists_cache"));

		wc.cache = liststore_open(url, &err);
		free(url);
		if (wc.cache == NULL)
			return worker_fail(&wc, "lists_cache: %s", err);
	}
	rc = d->run(d, settings[svc], &wc);
	if (pol->geoip != NULL)
		geoip_watch_stop(pol->geoip);
	watcher_stop_and_free(&wc.w);
	if (sieve_w != NULL) {
		sievewatch_stop(&sieve_w);
		sieve_rules_ref_deinit(&sieve_ref);
	}
	snapref_deinit(&wc.snaps);
	liststore_free(&wc.store);
	liststore_free(&wc.cache);
	ratelimit_free(&wc.rl);
	return rc == 0 ? 0 : 1;
}

/* ---- master side ---- */

/* a directory start-up creates (mkdir -p): it is one, or its nearest
 * existing ancestor is a directory we may write in; NULL ok, else why */
static const char *
dir_unusable(const char *dir)
{
	char *p = xstrdup(dir);
	const char *why = NULL;
	struct stat st;

	for (;;) {
		char *slash;

		if (stat(p, &st) == 0) {
			if (!S_ISDIR(st.st_mode))
				why = strcmp(p, dir) == 0 ? "exists and is not a directory" :
				    "a component of the path is not a directory";
			else if (strcmp(p, dir) != 0 && access(p, W_OK) != 0)
				why = "cannot be created (its parent is not writable)";
			break;
		}
		if (errno == ENOTDIR) {
			why = "a component of the path is not a directory";
			break;
		}
		slash = strrchr(p, '/');
		if (slash == NULL || slash == p)
			break;
		*slash = '\0';
	}
	free(p);
	return why;
}

/* what the workers would find wrong at their start, checked before any runs:
 * the milter socket, the list store URL, the directories start-up creates,
 * run_user; 0 or -1 (said on stderr) */
static int
check_config_rest(const struct conf *c, const struct worker *wk, size_t nsvc)
{
	const char *err, *lists = conf_get(c, "lists"), *why;
	unsigned uid, gid;
	static const char *const dirs[] = { "state_dir", "lists", "delivery" };

	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		const char *v = conf_get(c, dirs[i]);

		/* file:DIR and maildir:DIR are created at start; other kinds are not dirs */
		if (strncmp(v, "file:", 5) == 0)
			v += 5;
		else if (strncmp(v, "maildir:", 8) == 0)
			v += 8;
		else if (i > 0)
			continue;
		if (i == 2) {	/* the mail store is the smtp (and imap) service's */
			size_t j;

			for (j = 0; j < nsvc && wk[j].svc != SVC_SMTP && wk[j].svc != SVC_IMAP; j++)
				;
			if (j == nsvc)
				continue;
		}
		if ((why = dir_unusable(v)) != NULL) {
			fprintf(stderr, "portcullisd: %s: %s: \"%.200s\" %s\n", conf_where(c, dirs[i]),
			    dirs[i], v, why);
			return -1;
		}
	}

	/* a file store is created by opening it: syntax is checked in conf;
	 * a Redis store parses its URL and connects only when used */
	if (strncmp(lists, "file:", 5) != 0) {
		struct liststore *s = liststore_open_conf(c, &err);

		if (s == NULL) {
			fprintf(stderr, "portcullisd: %s: %s\n", conf_where(c, "lists"), err);
			return -1;
		}
		liststore_free(&s);
	}
	if (owner_lookup(c, &uid, &gid, &err) < 0) {
		fprintf(stderr, "portcullisd: %s\n", err);
		return -1;
	}
	if (conf_get(c, "log_file")[0] != '\0') {
		/* log_file is opened (not its directory made) at start */
		const char *lf = conf_get(c, "log_file");
		char *dir = xstrdup(lf);
		struct stat st;

		*strrchr(dir, '/') = '\0';	/* absolute: checked in conf */
		if ((stat(lf, &st) == 0 && S_ISDIR(st.st_mode)) ||
		    (dir[0] != '\0' && (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)))) {
			fprintf(stderr, "portcullisd: %s: log_file: \"%.200s\": %s\n",
			    conf_where(c, "log_file"), lf, stat(lf, &st) == 0 ?
			    "is a directory" : "its directory does not exist");
			free(dir);
			return -1;
		}
		free(dir);
	}
	return 0;
}

/* wait up to secs for SIGTERM/SIGINT (blocked, so sigtimedwait takes it) */
static int
stop_requested_within(int secs)
{
	sigset_t set;
	struct timespec ts = { secs, 0 };

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	if (sigtimedwait(&set, NULL, &ts) > 0) {
		log_info("portcullisd stopping");
		return 1;
	}
	return 0;
}

static pid_t
spawn(struct worker *wk, int *readyfd_r)
{
	int p[2], ctl[2] = { -1, -1 };
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) < 0)
		fatal("pipe: %s", strerror(errno));
	if (wk->svc == SVC_MILTER) {
		if (milter_ctl >= 0)
			close(milter_ctl);
		milter_ctl = -1;
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) < 0)
			log_warn("no control socket for the milter: %s", strerror(errno));
	}
	pid = fork();
	if (pid < 0)
		fatal("fork: %s", strerror(errno));
	if (pid == 0) {
		char ident[64];
		int rc;

		close(p[0]);
		if (ctl[0] >= 0)
			close(ctl[0]);
		else if (milter_ctl >= 0)
			close(milter_ctl);	/* the master's end */
		milter_ctl = ctl[1];
		for (size_t i = 0; i < ndraining; i++)
			draining[i].pid = 0;	/* not ours to signal */
		snprintf(ident, sizeof(ident), "portcullisd/%s", wk->name);
		log_open(xstrdup(ident), log_is_stderr());
		log_reopen_on_signal(SIGUSR1);	/* the master passes logrotate's on */
		stats_set_door(wk->name);
		signal(SIGCHLD, SIG_DFL);
		lifeline_start();	/* stop signals are blocked: the thread inherits that */
		rc = worker_main(wk->svc, p[1]);
		/* leave without the master's atexit handlers */
		fflush(NULL);
		_exit(rc);
	}
	close(p[1]);
	if (ctl[1] >= 0) {
		close(ctl[1]);
		milter_ctl = ctl[0];
	}
	wk->pid = pid;
	wk->started = time(NULL);
	wk->ackfd = -1;
	*readyfd_r = p[0];
	return pid;
}

/* wait for "ok" from a new worker; NULL ok (the pipe is kept in
 * wk->ackfd: its EOF says the worker stopped accepting), else the reason */
static const char *
await_ready(struct worker *wk, int fd, int timeout_ms)
{
	static char buf[700];
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	ssize_t n = 0;

	if (poll(&pfd, 1, timeout_ms) > 0)
		n = read(fd, buf, sizeof(buf) - 1);
	if (n <= 0) {
		close(fd);
		return "the worker exited before it was ready";
	}
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	if (strcmp(buf, "ok") != 0) {
		close(fd);
		return buf;
	}
	wk->ackfd = fd;
	return NULL;
}

/*
 * A worker told to drain (SIGUSR2) stops accepting on its own loop, a little
 * later; wait for that (its ackfd's EOF) so that a reload answered "done"
 * sends no new connection to the old settings. Bounded: a worker stuck
 * elsewhere is logged and left to drain.
 */
static void
await_stopped_accepting(struct worker *wk, int timeout_ms)
{
	struct pollfd pfd = { .fd = wk->ackfd, .events = POLLIN };
	char c;

	if (wk->ackfd < 0)
		return;
	if (poll(&pfd, 1, timeout_ms) <= 0 || read(wk->ackfd, &c, 1) != 0)
		log_warn("%s worker (pid %ld) still accepting after %d ms of draining",
		    wk->name, (long)wk->pid, timeout_ms);
	close(wk->ackfd);
	wk->ackfd = -1;
}

static void
worker_forget_ack(struct worker *wk)
{
	if (wk->ackfd >= 0)
		close(wk->ackfd);
	wk->ackfd = -1;
}

static void
stop_workers(struct worker *wk, size_t n)
{
	time_t deadline = time(NULL) + 10;

	for (size_t i = 0; i < n; i++)
		if (wk[i].pid > 0)
			kill(wk[i].pid, SIGTERM);
	for (;;) {
		int left = 0;

		for (size_t i = 0; i < n; i++) {
			if (wk[i].pid <= 0)
				continue;
			if (waitpid(wk[i].pid, NULL, WNOHANG) == wk[i].pid)
				wk[i].pid = 0;
			else
				left++;
		}
		if (left == 0)
			return;
		if (time(NULL) >= deadline) {
			for (size_t i = 0; i < n; i++)
				if (wk[i].pid > 0) {
					log_warn("%s worker did not stop; killing it", wk[i].name);
					kill(wk[i].pid, SIGKILL);
					waitpid(wk[i].pid, NULL, 0);
					wk[i].pid = 0;
				}
			return;
		}
		usleep(20000);
	}
}

/* ---- live reload (master) ---- */

/* at start-up, before dropping root: remember how the configuration was
 * made, and open the status file `portcullis reload` reads */
static void
reload_keep_args(const char *path, char **ovr, size_t novr)
{
	conf_path = path;
	conf_ovr = xcalloc(novr + 1, sizeof(char *));
	for (size_t i = 0; i < novr; i++)
		conf_ovr[i] = ovr[i];	/* argv: lives as long as we do */
	conf_novr = novr;
}

static void
reload_init(const struct conf *c)
{
	char *sp = xasprintf("%s/reload-status", conf_get(c, "state_dir"));

	status_fd = open(sp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (status_fd < 0)
		log_warn("cannot write %s (portcullis reload reports nothing): %s", sp, strerror(errno));
	free(sp);
}

/* "generation N", "result ok|failed", the message's lines, "end" */
static void
reload_status(int ok, const char *fmt, ...)
{
	char msg[2048], buf[2300];
	va_list ap;
	int n;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	n = snprintf(buf, sizeof(buf), "generation %lu\nresult %s\n%s%send\n", reload_gen,
	    ok ? "ok" : "failed", msg, msg[0] != '\0' && msg[strlen(msg) - 1] != '\n' ? "\n" : "");
	if (n < 0 || (size_t)n >= sizeof(buf))
		n = (int)sizeof(buf) - 1;
	if (status_fd >= 0 && (ftruncate(status_fd, 0) < 0 || pwrite(status_fd, buf, (size_t)n, 0) != n))
		log_warn("cannot write the reload status: %s", strerror(errno));
}

/*
 * Every check start-up makes, made by start-up's own code: `portcullisd -t`
 * on the same file and overrides, in a child that runs as we do now (as
 * run_user), so a config or key file run_user cannot read fails here.
 * 0, or -1 with the child's complaint in why.
 */
static int
reload_check(char *why, size_t cap)
{
	int p[2], status = 0;
	size_t len = 0;
	pid_t pid;

	why[0] = '\0';
	if (pipe2(p, O_CLOEXEC) < 0) {
		snprintf(why, cap, "pipe: %s", strerror(errno));
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		snprintf(why, cap, "fork: %s", strerror(errno));
		close(p[0]);
		close(p[1]);
		return -1;
	}
	if (pid == 0) {
		char **av = xcalloc(2 * conf_novr + 5, sizeof(char *));
		size_t n = 0;
		int nul = open("/dev/null", O_WRONLY);
		sigset_t none;

		av[n++] = "portcullisd";
		av[n++] = "-t";
		av[n++] = "-c";
		av[n++] = (char *)conf_path;
		for (size_t i = 0; i < conf_novr; i++) {
			av[n++] = "-o";
			av[n++] = conf_ovr[i];
		}
		dup2(p[1], 2);
		if (nul >= 0)
			dup2(nul, 1);
		sigemptyset(&none);
		pthread_sigmask(SIG_SETMASK, &none, NULL);
		execv("/proc/self/exe", av);
		_exit(127);
	}
	close(p[1]);
	for (;;) {
		struct pollfd pfd = { .fd = p[0], .events = POLLIN };
		ssize_t r;

		if (poll(&pfd, 1, RELOAD_REPLY_MS) <= 0) {
			kill(pid, SIGKILL);
			snprintf(why, cap, "the configuration check did not finish");
			break;
		}
		r = read(p[0], why + len, cap - 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
		why[len] = '\0';
		if (len == cap - 1)
			break;
	}
	close(p[0]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	/* "portcullisd: FILE:LINE: what\n": keep the first line, without the name */
	why[strcspn(why, "\n")] = '\0';
	if (strncmp(why, "portcullisd: ", 13) == 0)
		memmove(why, why + 13, strlen(why + 13) + 1);
	if (why[0] == '\0')
		snprintf(why, cap, "the configuration check failed (status %d)",
		    WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
	return -1;
}

static int
conf_knows(const char *name)
{
	for (const struct conf_key *k = conf_keys; k->name != NULL; k++)
		if (strcmp(k->name, name) == 0)
			return 1;
	return 0;
}

/* the milter worker reloads its policy itself; NULL ok, else why not */
static const char *
reload_milter(void)
{
	static char buf[800];
	struct pollfd pfd = { .fd = milter_ctl, .events = POLLIN };
	ssize_t n;

	if (milter_ctl < 0)
		return "the milter worker has no control socket";
	/* a late answer to an earlier request that timed out is not this one's */
	while (recv(milter_ctl, buf, sizeof(buf), MSG_DONTWAIT) > 0)
		;
	if (write(milter_ctl, "R", 1) != 1)
		return "cannot reach the milter worker";
	/* a new list store is loaded in full first: a million Redis entries take seconds */
	if (poll(&pfd, 1, MILTER_RELOAD_MS) <= 0 || (n = read(milter_ctl, buf, sizeof(buf) - 1)) <= 0)
		return "the milter worker did not answer";
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	return strcmp(buf, "ok") == 0 ? NULL : buf;
}

/*
 * SIGHUP: read, check and apply the configuration again. Refused as a
 * whole (the running one stays) or applied as a whole, never half.
 */
static void
reload(struct conf **cp, struct policy **pp, struct worker *wk, size_t nsvc)
{
	char err[1200], notes[1500] = "";
	char *extra[sizeof(restart_keys) / sizeof(restart_keys[0])];
	size_t nextra = 0;
	struct conf *c = NULL;
	struct policy *p = NULL;
	void *newset[SVC_COUNT] = { NULL }, *oldset[SVC_COUNT];
	const struct conf *old_conf = conf;
	const struct policy *old_pol = pol;
	const char *e, *why;
	int milter_failed = 0;
	enum log_level lvl;

	reload_gen++;
	log_info("SIGHUP: reloading %s", conf_path);
	if (reload_check(err, sizeof(err)) < 0)
		goto refuse;
	if (reload_load_conf(NULL, 0, &c, err, sizeof(err)) < 0)
		goto refuse;
	/* what cannot change live keeps its running value */
	for (size_t k = 0; restart_keys[k] != NULL; k++) {
		const char *key = restart_keys[k];

		if (!conf_knows(key) || strcmp(conf_get(*cp, key), conf_get(c, key)) == 0)
			continue;
		log_warn("reload: needs a restart: %s (changed at %s); the running value stays",
		    key, conf_where(c, key));
		snprintf(notes + strlen(notes), sizeof(notes) - strlen(notes),
		    "needs a restart: %s\n", key);
		extra[nextra++] = xasprintf("%s=%s", key, conf_get(*cp, key));
	}
	if (nextra > 0) {
		conf_free(&c);
		if (reload_load_conf(extra, nextra, &c, err, sizeof(err)) < 0)
			goto refuse;
	}
	if (policy_new(c, &p, &e) < 0) {
		snprintf(err, sizeof(err), "%s", e);
		goto refuse;
	}
	/* each door that restarts compiles its new settings here (keys read) */
	for (size_t i = 0; i < nsvc; i++) {
		if (!wk[i].def->respawn)
			continue;
		err[0] = '\0';
		newset[wk[i].svc] = wk[i].def->compile(wk[i].def, c, 1, err, sizeof(err));
		if (newset[wk[i].svc] == NULL)
			goto refuse;
	}
	if (ndraining + 3 > MAX_DRAINING) {	/* room for the smtp, policy and pop3 ones */
		snprintf(err, sizeof(err), "%zu workers are still draining from earlier reloads; "
		    "try again later", ndraining);
		goto refuse;
	}
	/* the new smtp and policy workers fork with the new settings */
	conf = c;
	pol = p;
	for (size_t s = 0; s < SVC_COUNT; s++) {
		oldset[s] = settings[s];
		if (newset[s] != NULL)
			settings[s] = newset[s];
	}
	for (size_t i = 0; i < nsvc; i++) {
		struct worker old;
		int rfd;

		if (!wk[i].def->respawn)
			continue;
		old = wk[i];
		spawn(&wk[i], &rfd);
		if ((why = await_ready(&wk[i], rfd, READY_TIMEOUT_MS)) != NULL) {
			log_error("reload: the new %s worker failed: %s", wk[i].name, why);
			kill(wk[i].pid, SIGKILL);
			while (waitpid(wk[i].pid, NULL, 0) < 0 && errno == EINTR)
				;
			wk[i] = old;
			conf = old_conf;
			pol = old_pol;
			for (size_t s = 0; s < SVC_COUNT; s++)
				settings[s] = oldset[s];
			snprintf(err, sizeof(err), "%s: %s", wk[i].name, why);
			for (size_t j = 0; j < i; j++)	/* an smtp worker already replaced: stays */
				if (wk[j].svc == SVC_SMTP)
					snprintf(err + strlen(err), sizeof(err) - strlen(err),
					    " (the smtp door has the new settings)");
			goto refuse;
		}
		if (old.pid > 0) {
			kill(old.pid, SIGUSR2);	/* drain: finish the sessions, then exit */
			await_stopped_accepting(&old, 5000);
			draining[ndraining++] = old;
			log_info("%s worker (pid %ld) drains; pid %ld serves the new settings",
			    old.name, (long)old.pid, (long)wk[i].pid);
		}
	}
	/* the milter last: its reload cannot fail but for a file changed since */
	for (size_t i = 0; i < nsvc; i++)
		if (wk[i].svc == SVC_MILTER && wk[i].pid > 0 && (why = reload_milter()) != NULL) {
			log_error("reload: the milter keeps its running policy: %s", why);
			snprintf(notes + strlen(notes), sizeof(notes) - strlen(notes),
			    "milter: %s (the milter keeps its running policy)\n", why);
			milter_failed = 1;
		}
	if (log_level_parse(conf_get(c, "log_level"), &lvl) == 0)
		log_set_level(lvl);
	for (size_t s = 0; s < SVC_COUNT; s++)
		if (newset[s] != NULL && oldset[s] != NULL)
			service_find((enum service)s)->free(service_find((enum service)s), oldset[s]);
	conf_free(cp);
	policy_free(pp);
	*cp = c;
	*pp = p;
	for (size_t i = 0; i < nextra; i++)
		free(extra[i]);
	log_info("reload %lu done: the new configuration is in force%s", reload_gen,
	    milter_failed ? " but for the milter" :
	    nextra > 0 ? " (except the keys that need a restart)" : "");
	reload_status(!milter_failed, "%s", notes);
	return;
refuse:
	log_error("reload refused, the running configuration stays: %s", err);
	reload_status(0, "%s\n%s", err, notes);
	for (size_t i = 0; i < nextra; i++)
		free(extra[i]);
	for (size_t s = 0; s < SVC_COUNT; s++)
		if (newset[s] != NULL)
			service_find((enum service)s)->free(service_find((enum service)s), newset[s]);
	policy_free(&p);
	conf_free(&c);
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	const char *conffile = DEFAULT_CONF, *err;
	int foreground = 0, print_only = 0, check_only = 0, ch;
	struct conf *c = NULL;
	/* static: still reachable when --help or a usage error exits early */
	static char **overrides;
	size_t noverrides = 0, nsvc = 0;
	struct policy *p = NULL;
	struct worker wk[MAX_SERVICES];
	enum log_level lvl;
	char **svcs;
	size_t n;
	int detach_pipe[2] = { -1, -1 };

	overrides = xcalloc((size_t)argc + 1, sizeof(char *));
	opterr = 0;	/* we name the error ourselves, then print the usage */
	while ((ch = getopt_long(argc, argv, ":c:o:fnt", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': conffile = optarg; break;
		case 'o': overrides[noverrides++] = optarg; break;
		case 'f': foreground = 1; break;
		case 'n': print_only = 1; break;
		case 't': check_only = 1; break;
		case 'h': usage(stdout, 0); break;
		case 'V':
			printf("portcullisd %s\n", PORTCULLIS_VERSION);
			return 0;
		case ':':
			fprintf(stderr, "portcullisd: option %s needs an argument\n", argv[optind - 1]);
			usage(stderr, 2);
			break;
		default:
			if (optopt != 0)
				fprintf(stderr, "portcullisd: unknown option -%c\n", optopt);
			else
				fprintf(stderr, "portcullisd: unknown option %s\n", argv[optind - 1]);
			usage(stderr, 2);
		}
	}
	if (optind != argc) {
		fprintf(stderr, "portcullisd: unexpected argument \"%.60s\"\n", argv[optind]);
		usage(stderr, 2);
	}
	if (print_only && check_only) {
		fprintf(stderr, "portcullisd: -n and -t exclude each other\n");
		usage(stderr, 2);
	}
	/* a peer that resets while we write is an EPIPE to handle, not a
	 * signal that kills the worker and every session on it */
	signal(SIGPIPE, SIG_IGN);
	/* a reload (SIGHUP) or logrotate's SIGUSR1 that comes while we start
	 * waits for the supervise loop's sigwait(): their default action would
	 * kill us, listeners bound and all (a -t child unblocks them) */
	{
		sigset_t early;

		sigemptyset(&early);
		sigaddset(&early, SIGHUP);
		sigaddset(&early, SIGUSR1);
		pthread_sigmask(SIG_BLOCK, &early, NULL);
	}
	c = conf_new();
	if (conf_load_file(c, conffile, &err) < 0) {
		fprintf(stderr, "portcullisd: %s\n", err);
		goto fail;
	}
	for (size_t i = 0; i < noverrides; i++)
		if (conf_set_override(c, overrides[i], &err) < 0) {
			fprintf(stderr, "portcullisd: %s\n", err);
			goto fail;
		}
	reload_keep_args(conffile, overrides, noverrides);
	free(overrides);
	overrides = NULL;
	if (conf_finish(c, &err) < 0) {
		fprintf(stderr, "portcullisd: %s\n", err);
		goto fail;
	}
	if (policy_new(c, &p, &err) < 0) {
		fprintf(stderr, "portcullisd: %s\n", err);
		goto fail;
	}
	conf = c;
	pol = p;

	/* services */
	svcs = conf_get_list(c, "services", &n);
	for (size_t i = 0; i < n; i++) {
		const struct service_def *d = NULL;

		for (size_t k = 0; k < NSERVICES && d == NULL; k++)
			if (strcmp(svcs[i], services[k].name) == 0)
				d = &services[k];
		if (d == NULL) {
			fprintf(stderr, "portcullisd: %s: services: unknown service \"%.40s\" "
			    "(expected milter, smtp, policy, pop3, imap)\n", conf_where(c, "services"), svcs[i]);
			conf_list_free(svcs);
			goto fail;
		}
		for (size_t j = 0; j < nsvc; j++)
			if (wk[j].def == d)
				goto dup;
		wk[nsvc].svc = d->svc;
		wk[nsvc].def = d;
		wk[nsvc].name = d->name;
		wk[nsvc].pid = 0;
		nsvc++;
dup:		;
	}
	conf_list_free(svcs);
	if (nsvc == 0) {
		fprintf(stderr, "portcullisd: %s: services: nothing to run\n", conf_where(c, "services"));
		goto fail;
	}
	{
		unsigned mechs;

		if (authmech_parse(c, &mechs, &err) < 0) {
			fprintf(stderr, "portcullisd: %s\n", err);
			goto fail;
		}
	}
	{
		struct penalty_conf pc;

		if (penalty_conf_parse(c, &pc, &err) < 0) {
			fprintf(stderr, "portcullisd: %s\n", err);
			goto fail;
		}
	}
	/* each door compiles its settings (keys read), then binds its listeners */
	for (size_t i = 0; i < nsvc; i++) {
		const struct service_def *d = wk[i].def;
		char why[1200] = "";

		settings[d->svc] = d->compile(d, c, 0, why, sizeof(why));
		if (settings[d->svc] == NULL ||
		    (d->bind != NULL && d->bind(d, c, settings[d->svc], check_only || print_only, why,
		    sizeof(why)) < 0)) {
			fprintf(stderr, "portcullisd: %s\n", why);
			goto fail;
		}
	}
	if (check_config_rest(c, wk, nsvc) < 0)
		goto fail;
	if (check_only || print_only) {
		if (print_only)
			conf_print(c, stdout, 1);
		services_free();
		policy_free(&p);
		conf_free(&c);
		return 0;
	}
	if (0) {
fail:		/* a configuration error: said on stderr; leave nothing behind */
		free(overrides);
		services_free();
		policy_free(&p);
		conf_free(&c);
		return 1;
	}

	log_open("portcullisd", foreground);
	if (log_level_parse(conf_get(c, "log_level"), &lvl) == 0)
		log_set_level(lvl);
	if (conf_get(c, "log_file")[0] != '\0') {
		unsigned uid, gid;

		if (log_open_file(conf_get(c, "log_file"), &err) < 0) {
			fprintf(stderr, "portcullisd: %s: %s\n", conf_where(c, "log_file"), err);
			return 1;
		}
		/* the workers reopen it after logrotate, as run_user */
		if (geteuid() == 0 && owner_lookup(c, &uid, &gid, &err) == 0 && uid != 0 &&
		    fchown(log_file_fd(), uid, gid) < 0)
			log_warn("cannot hand log_file to run_user: %s", strerror(errno));
	}
	raise_fd_limit();
	if (p->ndomains == 0)
		log_warn("mydomains is empty: every recipient counts as relayed, so clients "
		    "outside relay_networks can send nothing");
	mkdirs(conf_get(c, "state_dir"));
	{	/* counters every process shares; `portcullis stats` reads them */
		char *sp = xasprintf("%s/stats", conf_get(c, "state_dir"));

		if (stats_open(sp, &err) < 0)
			log_warn("no counters: %s", err);
		free(sp);
		/* failed logins, one table for every door and reload (service/penalty) */
		sp = xasprintf("%s/penalty", conf_get(c, "state_dir"));
		if (penalty_table_open(sp, &err) < 0)
			log_warn("login penalties counted per worker: %s", err);
		free(sp);
		if (conf_get(c, "metrics_listen")[0] != '\0' &&
		    metrics_bind(conf_get(c, "metrics_listen"), &err) < 0) {
			fprintf(stderr, "portcullisd: %s: %s\n", conf_where(c, "metrics_listen"), err);
			return 1;
		}
	}
	reload_init(c);
	/* listeners are bound and keys read: drop root before any worker runs */
	if (owner_drop(c, &err) < 0) {
		fprintf(stderr, "portcullisd: %s\n", err);
		return 1;
	}
	if (geteuid() == 0)
		log_warn("running as root: set run_user to an unprivileged user");

	if (!foreground) {
		/* detach now; the parent waits to print a start-up failure */
		pid_t pid;

		if (pipe2(detach_pipe, O_CLOEXEC) < 0)
			fatal("pipe: %s", strerror(errno));
		pid = fork();
		if (pid < 0)
			fatal("fork: %s", strerror(errno));
		if (pid > 0) {
			char buf[800];
			ssize_t r;

			close(detach_pipe[1]);
			r = read(detach_pipe[0], buf, sizeof(buf) - 1);
			if (r > 0 && strncmp(buf, "ok", 2) == 0)
				_exit(0);
			if (r > 0) {
				buf[r] = '\0';
				fprintf(stderr, "portcullisd: %s", buf);
			}
			_exit(1);
		}
		close(detach_pipe[0]);
		setsid();
	}
	block_stop_signals(SIG_BLOCK);
	if (pipe2(lifeline, O_CLOEXEC) < 0)
		fatal("pipe: %s", strerror(errno));
	{	/* SIGUSR1 (logrotate) is taken by the supervise loop's sigwait */
		sigset_t usr1;

		sigemptyset(&usr1);
		sigaddset(&usr1, SIGUSR1);
		sigaddset(&usr1, SIGUSR2);	/* workers inherit it blocked: the smtp one takes it late */
		pthread_sigmask(SIG_BLOCK, &usr1, NULL);
	}
	for (size_t i = 0; i < nsvc; i++) {
		int rfd;
		const char *why;

		spawn(&wk[i], &rfd);
		if ((why = await_ready(&wk[i], rfd, READY_TIMEOUT_MS)) != NULL) {
			log_error("%s: %s", wk[i].name, why);
			if (!foreground) {
				char *m = xasprintf("%s\n", why);

				if (write(detach_pipe[1], m, strlen(m)) < 0)
					log_warn("cannot report to the starting process");
				free(m);
			} else {
				fprintf(stderr, "portcullisd: %s\n", why);
			}
			stop_workers(wk, nsvc);
			return 1;
		}
	}
	write_pidfile(conf_get(c, "pid_file"));
	{
		char names[128] = "";	/* every service, not the first two */

		for (size_t i = 0; i < nsvc; i++)
			snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
			    i == 0 ? "" : i + 1 == nsvc ? " and " : ", ", wk[i].name);
		log_info("portcullisd started: %s; lists %s, policy_mode %s", names,
		    conf_get(c, "lists"), conf_get(c, "policy_mode"));
	}
	if (!foreground) {
		int fd = open("/dev/null", O_RDWR);

		if (write(detach_pipe[1], "ok\n", 3) < 0)
			log_warn("cannot report to the starting process");
		close(detach_pipe[1]);
		if (fd >= 0) {
			dup2(fd, 0);
			dup2(fd, 1);
			dup2(fd, 2);
			if (fd > 2)
				close(fd);
		}
	}

	if (metrics_start(&err) < 0)
		log_error("%s", err);
	if (statspub_start(c, &err) < 0)	/* redis lists: share the counters */
		log_error("%s", err);
	/* supervise */
	for (int stopping = 0; !stopping;) {
		sigset_t set;
		int sig = 0;

		sigemptyset(&set);
		sigaddset(&set, SIGTERM);
		sigaddset(&set, SIGINT);
		sigaddset(&set, SIGHUP);
		sigaddset(&set, SIGCHLD);
		sigaddset(&set, SIGUSR1);
		if (sigwait(&set, &sig) != 0)
			continue;
		if (sig == SIGUSR1) {	/* logrotate moved log_file: reopen, and tell the workers */
			log_reopen();
			for (size_t i = 0; i < nsvc; i++)
				if (wk[i].pid > 0)
					kill(wk[i].pid, SIGUSR1);
			for (size_t i = 0; i < ndraining; i++)	/* still logging */
				kill(draining[i].pid, SIGUSR1);
			continue;
		}
		if (sig == SIGTERM || sig == SIGINT) {
			log_info("portcullisd stopping");
			break;
		}
		if (stopping)
			break;
		if (sig == SIGHUP) {
			reload(&c, &p, wk, nsvc);
			continue;
		}
		/* SIGCHLD: restart what died */
		for (;;) {
			if (stopping)
				break;
			int status;
			pid_t pid = waitpid(-1, &status, WNOHANG);

			if (pid <= 0)
				break;
			for (size_t i = 0; i < ndraining; i++) {	/* reloaded away: done */
				if (draining[i].pid != pid)
					continue;
				if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
					log_info("%s worker (pid %ld) drained and exited", draining[i].name,
					    (long)pid);
				else
					log_warn("%s worker (pid %ld) ended while draining (status %d)",
					    draining[i].name, (long)pid, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
				draining[i] = draining[--ndraining];
				break;
			}
			for (size_t i = 0; i < nsvc; i++) {
				int rfd;
				const char *why;

				if (wk[i].pid != pid)
					continue;
				if (WIFSIGNALED(status))
					log_error("%s worker (pid %ld) killed by signal %d; restarting",
					    wk[i].name, (long)pid, WTERMSIG(status));
				else
					log_error("%s worker (pid %ld) exited with status %d; restarting",
					    wk[i].name, (long)pid, WEXITSTATUS(status));
				wk[i].pid = 0;	/* reaped: never signal that pid again */
				worker_forget_ack(&wk[i]);
				/* a crash loop must not spin; a stop request still counts */
				if (time(NULL) - wk[i].started < 1 && stop_requested_within(1)) {
					stopping = 1;
					break;
				}
				spawn(&wk[i], &rfd);
				if ((why = await_ready(&wk[i], rfd, READY_TIMEOUT_MS)) != NULL)
					log_error("%s worker failed to restart: %s", wk[i].name, why);
			}
		}
	}
	stop_workers(wk, nsvc);
	stop_workers(draining, ndraining);
	metrics_stop();
	statspub_stop();
	unlink(conf_get(c, "pid_file"));
	services_free();
	policy_free(&p);
	conf_free(&c);
	return 0;
}
