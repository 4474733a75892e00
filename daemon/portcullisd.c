/*
 * portcullisd - the Portcullis daemon: a master and one worker per service.
 *
 *   portcullisd [-c FILE] [-o key=value]... [-f] [-n | -t]
 *   portcullisd --help | --version
 *
 * The master reads the configuration, compiles the policy (so errors show
 * before anything runs), binds the SMTP listeners, and forks one worker per
 * entry of `services` (milter, smtp, policy). Each worker loads the lists, starts
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
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/authmech.h"
#include "common/conf.h"
#include "common/log.h"
#include "common/owner.h"
#include "common/pclimits.h"
#include "common/tls.h"
#include "common/version.h"
#include "common/xmalloc.h"
#include "common/stats.h"
#include "daemon/metrics.h"
#include "daemon/watcher.h"
#include "milter/milter.h"
#include "policy/policy_door.h"
#include "rules/geoip.h"
#include "rules/policy.h"
#include "service/listener.h"
#include "smtp-gateway/downstream.h"
#include "smtp-gateway/smtp_server.h"
#include "storage-adapter/liststore.h"
#include "storage-adapter/ratelimit.h"

#include <openssl/ssl.h>

#define DEFAULT_CONF "/etc/portcullis/portcullis.conf"
#define MAX_SERVICES 4
#define READY_TIMEOUT_MS 15000
#define ORPHAN_GRACE_MS 700	/* a worker whose master died stops within this, or is cut */

enum service { SVC_MILTER, SVC_SMTP, SVC_POLICY };

struct worker {
	enum service svc;
	const char *name;
	pid_t pid;
	time_t started;
};

static const struct conf *conf;
static const struct policy *pol;
static int smtp_fds[MAX_LISTENERS];
static enum smtp_listener_kind smtp_kinds[MAX_LISTENERS];
static size_t nsmtp_fds;
static SSL_CTX *tls_ctx;
static int policy_fds[MAX_LISTENERS];
static size_t npolicy_fds;
static struct cidrtab *bare_exceptions;
static int lifeline[2] = { -1, -1 };	/* the master holds [1]; each worker watches [0] */

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
	char *p = xstrdup(dir);

	for (char *q = p + 1; *q; q++) {
		if (*q != '/')
			continue;
		*q = '\0';
		(void)mkdir(p, 0755);
		*q = '/';
	}
	if (mkdir(p, 0750) < 0 && errno != EEXIST)
		fatal("cannot create state_dir %s: %s", dir, strerror(errno));
	free(p);
}

static void
write_pidfile(const char *path)
{
	FILE *fp = fopen(path, "w");

	if (fp == NULL) {
		log_warn("cannot write pid_file %s: %s", path, strerror(errno));
		return;
	}
	fprintf(fp, "%ld\n", (long)getpid());
	fclose(fp);
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
	close(fd);
}

static int
worker_main(enum service svc, int readyfd)
{
	const char *err;
	struct liststore *store, *cache = NULL;
	struct ratelimit *rl = ratelimit_new();
	struct snapref snaps;
	struct watcher *w;
	char msg[700];
	int rc = 0;

	store = liststore_open_conf(conf, &err);
	if (store == NULL) {
		snprintf(msg, sizeof(msg), "%s\n", err);
		ready(readyfd, msg);
		return 1;
	}
	if (strcmp(liststore_scheme(store), "file") != 0) {
		char *url = xasprintf("file:%s", conf_get(conf, "lists_cache"));

		cache = liststore_open(url, &err);
		free(url);
		if (cache == NULL) {
			snprintf(msg, sizeof(msg), "lists_cache: %s\n", err);
			ready(readyfd, msg);
			return 1;
		}
	}
	if (svc == SVC_MILTER) {
		static struct milter_env env;

		env.pol = pol;
		env.snaps = &snaps;
		env.rl = rl;
		env.ban = watcher_ban;
		if (milter_setup(conf_get(conf, "milter_listen"), &env, &err) < 0) {
			snprintf(msg, sizeof(msg), "%s\n", err);
			ready(readyfd, msg);
			return 1;
		}
		/* our threads keep the stop signals blocked: libmilter's own
		 * signal thread sigwait()s for them and shuts down cleanly */
		w = watcher_new(store, cache, &snaps, &err);
		if (w == NULL) {
			snprintf(msg, sizeof(msg), "cannot load the lists: %s\n", err);
			ready(readyfd, msg);
			return 1;
		}
		env.ban_arg = w;
		watcher_set_tick(w, milter_poke_if_stopping);
	} else {
		w = watcher_new(store, cache, &snaps, &err);
		if (w == NULL) {
			snprintf(msg, sizeof(msg), "cannot load the lists: %s\n", err);
			ready(readyfd, msg);
			return 1;
		}
	}
	if (pol->rate_limit > 0 || pol->nrate_overrides > 0) {
		watcher_set_ratelimit(w, rl);
		if (!liststore_has_rate_sync(store))
			log_info("relay rate limits are counted on this node only (lists = %s); "
			    "use a redis:// store to count across nodes", conf_get(conf, "lists"));
	}
	if (watcher_start(w, &err) < 0) {
		snprintf(msg, sizeof(msg), "%s\n", err);
		ready(readyfd, msg);
		return 1;
	}
	/* a replaced geoip_database is reopened within a second (this worker's copy) */
	if (pol->geoip != NULL && geoip_watch_start(pol->geoip, 500, &err) < 0) {
		snprintf(msg, sizeof(msg), "%s\n", err);
		ready(readyfd, msg);
		return 1;
	}
	if (svc == SVC_MILTER) {
		log_info("milter ready on %s", conf_get(conf, "milter_listen"));
		ready(readyfd, "ok\n");
		rc = milter_run();
	} else if (svc == SVC_POLICY) {
		static struct policy_door_env pe;

		pe.pol = pol;
		pe.snaps = &snaps;
		pe.max_connections = (unsigned)conf_get_int(conf, "policy_max_connections");
		pe.idle_timeout = (unsigned)conf_get_int(conf, "policy_idle_timeout");
		pe.request_timeout = (unsigned)conf_get_int(conf, "policy_timeout");
		pe.ban = watcher_ban;
		pe.ban_arg = w;
		block_stop_signals(SIG_UNBLOCK);
		log_info("policy ready on %s", conf_get(conf, "policy_listen"));
		ready(readyfd, "ok\n");
		if (policy_door_run(policy_fds, npolicy_fds, &pe, &err) < 0) {
			log_error("policy: %s", err);
			rc = -1;
		}
		block_stop_signals(SIG_BLOCK);
	} else {
		static struct smtp_server_conf sc;
		const char *delivery = conf_get(conf, "delivery");

		memset(&sc, 0, sizeof(sc));
		sc.params.pol = pol;
		sc.params.snaps = &snaps;
		sc.params.rl = rl;
		sc.params.myhostname = conf_get(conf, "myhostname");
		sc.params.banner = conf_get(conf, "smtp_banner");
		sc.params.message_size_limit = (size_t)conf_get_int(conf, "message_size_limit");
		sc.params.vrfy = conf_get_bool(conf, "vrfy");
		sc.params.bare_newline_reject = strcmp(conf_get(conf, "smtp_bare_newline"), "reject") == 0;
		sc.params.bare_newline_exceptions = bare_exceptions;
		sc.params.passthrough = strncmp(delivery, "relay:", 6) == 0;
		sc.params.have_relayhost = conf_get(conf, "relayhost")[0] != '\0';
		sc.downstream = sc.params.passthrough ? delivery + 6 :
		    sc.params.have_relayhost ? conf_get(conf, "relayhost") : NULL;
		sc.downstream_cache_time = (unsigned)conf_get_int(conf, "relay_connection_cache_time");
		sc.users_url = conf_get(conf, "users");
		if (authmech_parse(conf, &sc.params.auth_mechs, &err) < 0)
			fatal("%s", err);	/* checked by the master already */
		if (sc.users_url[0] == '\0')
			sc.params.auth_mechs = 0;
		sc.smtp_auth = conf_get_bool(conf, "smtp_auth");
		sc.params.auth_allow_plaintext = conf_get_bool(conf, "auth_allow_plaintext");
		if (penalty_conf_parse(conf, &sc.penalty, &err) < 0)
			fatal("%s", err);	/* checked by the master already */
		sc.maildir_root = sc.params.passthrough ? NULL : delivery + 8;	/* checked by the master */
		sc.max_connections = (unsigned)conf_get_int(conf, "smtp_max_connections");
		sc.max_per_client = (unsigned)conf_get_int(conf, "smtp_max_per_client");
		sc.timeout = (unsigned)conf_get_int(conf, "smtp_timeout");
		sc.request_deadline = conf_get_bool(conf, "smtp_request_deadline");
		sc.min_data_rate = (unsigned)conf_get_int(conf, "smtp_min_data_rate");
		sc.stress_timeout = (unsigned)conf_get_int(conf, "smtp_stress_timeout");
		sc.ban = watcher_ban;
		sc.ban_arg = w;
		sc.tls = tls_ctx;
		sc.resolver = conf_get_bool(conf, "client_hostname_lookups") ?
		    conf_get(conf, "resolver") : NULL;
		/* libevent takes SIGTERM/SIGINT through its signal events */
		block_stop_signals(SIG_UNBLOCK);
		log_info("smtp ready on %s", conf_get(conf, "smtp_listen"));
		ready(readyfd, "ok\n");
		if (smtp_server_run(smtp_fds, smtp_kinds, nsmtp_fds, &sc, &err) < 0) {
			log_error("smtp: %s", err);
			rc = -1;
		}
		block_stop_signals(SIG_BLOCK);
	}
	if (pol->geoip != NULL)
		geoip_watch_stop(pol->geoip);
	watcher_stop_and_free(&w);
	snapref_deinit(&snaps);
	liststore_free(&store);
	liststore_free(&cache);
	ratelimit_free(&rl);
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
		if (i == 2) {	/* the mail store is the smtp service's */
			size_t j;

			for (j = 0; j < nsvc && wk[j].svc != SVC_SMTP; j++)
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

	for (size_t i = 0; i < nsvc; i++) {
		char spec[512];

		if (wk[i].svc == SVC_MILTER &&
		    milter_listen_spec(conf_get(c, "milter_listen"), spec, sizeof(spec), &err) < 0) {
			fprintf(stderr, "portcullisd: %s: %s\n", conf_where(c, "milter_listen"), err);
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
	int p[2];
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) < 0)
		fatal("pipe: %s", strerror(errno));
	pid = fork();
	if (pid < 0)
		fatal("fork: %s", strerror(errno));
	if (pid == 0) {
		char ident[64];
		int rc;

		close(p[0]);
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
	wk->pid = pid;
	wk->started = time(NULL);
	*readyfd_r = p[0];
	return pid;
}

/* wait for "ok" from a new worker; NULL ok, else the reason */
static const char *
await_ready(int fd, int timeout_ms)
{
	static char buf[700];
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	ssize_t n = 0;

	if (poll(&pfd, 1, timeout_ms) > 0)
		n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return "the worker exited before it was ready";
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	return strcmp(buf, "ok") == 0 ? NULL : buf;
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
	char **svcs, **listen;
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
		enum service s;

		if (strcmp(svcs[i], "milter") == 0)
			s = SVC_MILTER;
		else if (strcmp(svcs[i], "smtp") == 0)
			s = SVC_SMTP;
		else if (strcmp(svcs[i], "policy") == 0)
			s = SVC_POLICY;
		else {
			fprintf(stderr, "portcullisd: %s: services: unknown service \"%.40s\" "
			    "(expected milter, smtp, policy)\n", conf_where(c, "services"), svcs[i]);
			conf_list_free(svcs);
			goto fail;
		}
		for (size_t j = 0; j < nsvc; j++)
			if (wk[j].svc == s)
				goto dup;
		wk[nsvc].svc = s;
		wk[nsvc].name = s == SVC_MILTER ? "milter" : s == SVC_POLICY ? "policy" : "smtp";
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
	for (size_t i = 0; i < nsvc; i++) {
		if (wk[i].svc != SVC_POLICY)
			continue;
		listen = conf_get_list(c, "policy_listen", &n);
		for (size_t j = 0; j < n; j++) {
			int fd;

			if (npolicy_fds >= MAX_LISTENERS) {	/* refused, never dropped */
				fprintf(stderr, "portcullisd: %s: policy_listen: too many listeners "
				    "(at most %d)\n", conf_where(c, "policy_listen"), MAX_LISTENERS);
				conf_list_free(listen);
				goto fail;
			}
			if (check_only || print_only) {
				/* what binding would parse, without binding (unix: in conf) */
				struct sockaddr_storage ss;
				socklen_t sl;

				if (strncmp(listen[j], "inet:", 5) == 0 &&
				    listener_parse(listen[j] + 5, "policy_listen", &ss, &sl, &err) < 0) {
					fprintf(stderr, "portcullisd: %s: %s\n",
					    conf_where(c, "policy_listen"), err);
					conf_list_free(listen);
					goto fail;
				}
				policy_fds[npolicy_fds++] = -1;
				continue;
			}
			fd = policy_door_listen(listen[j], &err);
			if (fd < 0) {
				fprintf(stderr, "portcullisd: %s: %s\n", conf_where(c, "policy_listen"), err);
				conf_list_free(listen);
				goto fail;
			}
			policy_fds[npolicy_fds++] = fd;
		}
		conf_list_free(listen);
		if (npolicy_fds == 0) {
			fprintf(stderr, "portcullisd: %s: policy_listen: nothing to listen on\n",
			    conf_where(c, "policy_listen"));
			goto fail;
		}
	}
	for (size_t i = 0; i < nsvc; i++) {
		if (wk[i].svc != SVC_SMTP)
			continue;
		{
			char **l = conf_get_list(c, "smtp_bare_newline_exceptions", &n);
			struct cidrtab_builder *b = cidrtab_builder_new();

			for (size_t j = 0; j < n; j++) {
				struct cidr cd;

				if (cidr_parse(l[j], &cd, &err) < 0) {
					fprintf(stderr, "portcullisd: %s: smtp_bare_newline_exceptions: \"%.60s\": %s\n",
					    conf_where(c, "smtp_bare_newline_exceptions"), l[j], err);
					conf_list_free(l);
					bare_exceptions = cidrtab_build(&b);
					goto fail;
				}
				cidrtab_builder_add(b, &cd, 1);
			}
			bare_exceptions = n > 0 ? cidrtab_build(&b) : NULL;
			if (b != NULL) {
				struct cidrtab *t = cidrtab_build(&b);

				cidrtab_free(&t);
			}
			conf_list_free(l);
		}
		tls_ctx = tls_server_ctx_new(c, &err);
		if (tls_ctx == NULL && err[0] != '\0') {
			/* "tls_x_file = PATH: why" does not say where it was set */
			const char *key = strncmp(err, "tls_cert_file =", 15) == 0 ? "tls_cert_file" :
			    strncmp(err, "tls_key_file =", 14) == 0 ? "tls_key_file" : NULL;

			if (key != NULL)
				fprintf(stderr, "portcullisd: %s: %s\n", conf_where(c, key), err);
			else
				fprintf(stderr, "portcullisd: %s\n", err);
			goto fail;
		}
		{
			static const char *const keys[] = { "smtp_listen", "submission_listen", "smtps_listen" };

			for (int k = 0; k < 3; k++) {
				listen = conf_get_list(c, keys[k], &n);
				if (k == 2 && n > 0 && tls_ctx == NULL) {
					fprintf(stderr, "portcullisd: %s: smtps_listen needs tls_cert_file and tls_key_file\n",
					    conf_where(c, "smtps_listen"));
					conf_list_free(listen);
					goto fail;
				}
				for (size_t j = 0; j < n; j++) {
					int fd;

					if (nsmtp_fds >= MAX_LISTENERS) {
						fprintf(stderr, "portcullisd: %s: %s: too many listeners "
						    "(at most %d in smtp_listen, submission_listen and "
						    "smtps_listen together)\n", conf_where(c, keys[k]), keys[k],
						    MAX_LISTENERS);
						conf_list_free(listen);
						goto fail;
					}
					if (check_only || print_only) {
						/* what binding would parse, without binding */
						struct sockaddr_storage ss;
						socklen_t sl;

						if (listener_parse(listen[j], keys[k], &ss, &sl, &err) < 0) {
							fprintf(stderr, "portcullisd: %s: %s\n",
							    conf_where(c, keys[k]), err);
							conf_list_free(listen);
							goto fail;
						}
						smtp_fds[nsmtp_fds++] = -1;
						continue;
					}
					if (listener_bind(listen[j], keys[k], &fd, &err) < 0) {
						fprintf(stderr, "portcullisd: %s\n", err);
						conf_list_free(listen);
						goto fail;
					}
					smtp_kinds[nsmtp_fds] = (enum smtp_listener_kind)k;
					smtp_fds[nsmtp_fds++] = fd;
				}
				conf_list_free(listen);
			}
		}
	}
	if (check_config_rest(c, wk, nsvc) < 0)
		goto fail;
	if (check_only || print_only) {
		if (print_only)
			conf_print(c, stdout, 1);
		if (tls_ctx != NULL)
			SSL_CTX_free(tls_ctx);
		cidrtab_free(&bare_exceptions);
		policy_free(&p);
		conf_free(&c);
		return 0;
	}
	if (0) {
fail:		/* a configuration error: said on stderr; leave nothing behind */
		free(overrides);
		for (size_t i = 0; i < nsmtp_fds; i++)
			if (smtp_fds[i] >= 0)
				close(smtp_fds[i]);
		for (size_t i = 0; i < npolicy_fds; i++)
			if (policy_fds[i] >= 0)
				close(policy_fds[i]);
		if (tls_ctx != NULL)
			SSL_CTX_free(tls_ctx);
		cidrtab_free(&bare_exceptions);
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
		if (conf_get(c, "metrics_listen")[0] != '\0' &&
		    metrics_bind(conf_get(c, "metrics_listen"), &err) < 0) {
			fprintf(stderr, "portcullisd: %s: %s\n", conf_where(c, "metrics_listen"), err);
			return 1;
		}
	}
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
		pthread_sigmask(SIG_BLOCK, &usr1, NULL);
	}
	for (size_t i = 0; i < nsvc; i++) {
		int rfd;
		const char *why;

		spawn(&wk[i], &rfd);
		if ((why = await_ready(rfd, READY_TIMEOUT_MS)) != NULL) {
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
	log_info("portcullisd started: %s%s%s; lists %s, policy_mode %s",
	    nsvc > 0 ? wk[0].name : "", nsvc > 1 ? " and " : "", nsvc > 1 ? wk[1].name : "",
	    conf_get(c, "lists"), conf_get(c, "policy_mode"));
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
			continue;
		}
		if (sig == SIGTERM || sig == SIGINT) {
			log_info("portcullisd stopping");
			break;
		}
		if (stopping)
			break;
		if (sig == SIGHUP) {
			log_info("SIGHUP: lists are reloaded by themselves; restart to change settings");
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
				/* a crash loop must not spin; a stop request still counts */
				if (time(NULL) - wk[i].started < 1 && stop_requested_within(1)) {
					stopping = 1;
					break;
				}
				spawn(&wk[i], &rfd);
				if ((why = await_ready(rfd, READY_TIMEOUT_MS)) != NULL)
					log_error("%s worker failed to restart: %s", wk[i].name, why);
			}
		}
	}
	stop_workers(wk, nsvc);
	metrics_stop();
	for (size_t i = 0; i < nsmtp_fds; i++)
		close(smtp_fds[i]);
	for (size_t i = 0; i < npolicy_fds; i++)
		close(policy_fds[i]);
	unlink(conf_get(c, "pid_file"));
	if (tls_ctx != NULL)
		SSL_CTX_free(tls_ctx);
	cidrtab_free(&bare_exceptions);
	policy_free(&p);
	conf_free(&c);
	return 0;
}
