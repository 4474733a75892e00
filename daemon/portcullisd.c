/*
 * portcullisd - the Portcullis daemon.
 *
 *   portcullisd [-c FILE] [-o key=value]... [-f] [-n]
 *
 * Reads the configuration, compiles the policy, loads the lists, binds the
 * milter listener, then serves: libmilter's threads run the callbacks, the
 * watcher thread keeps the lists current. -f stays in the foreground and
 * logs to stderr; otherwise it detaches and logs to syslog (mail facility).
 * -n prints the settings that differ from their defaults, like postconf -n.
 *
 * A configuration error exits 1 with FILE:LINE and what is wrong.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/conf.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "daemon/watcher.h"
#include "milter/milter.h"
#include "rules/policy.h"
#include "storage-adapter/liststore.h"
#include "storage-adapter/ratelimit.h"

#define DEFAULT_CONF "/etc/portcullis/portcullis.conf"

static void
usage(void)
{
	fprintf(stderr,
	    "usage: portcullisd [-c FILE] [-o key=value]... [-f] [-n]\n"
	    "  -c FILE   configuration file (default " DEFAULT_CONF ")\n"
	    "  -o k=v    override a setting\n"
	    "  -f        stay in the foreground, log to stderr\n"
	    "  -n        print the settings that differ from the defaults, then exit\n");
	exit(2);
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
detach(void)
{
	pid_t pid = fork();
	int fd;

	if (pid < 0)
		fatal("fork: %s", strerror(errno));
	if (pid > 0)
		_exit(0);
	setsid();
	if ((fd = open("/dev/null", O_RDWR)) >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		if (fd > 2)
			close(fd);
	}
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

int
main(int argc, char **argv)
{
	const char *conffile = DEFAULT_CONF, *err;
	int foreground = 0, print_only = 0, ch;
	struct conf *conf = conf_new();
	char **overrides = xcalloc((size_t)argc + 1, sizeof(char *));
	size_t noverrides = 0;
	struct policy *pol = NULL;
	struct liststore *store, *cache = NULL;
	struct ratelimit *rl;
	struct watcher *w;
	struct snapref snaps;
	struct milter_env env;
	enum log_level lvl;
	int rc;

	while ((ch = getopt(argc, argv, "c:o:fnh")) != -1) {
		switch (ch) {
		case 'c': conffile = optarg; break;
		case 'o': overrides[noverrides++] = optarg; break;
		case 'f': foreground = 1; break;
		case 'n': print_only = 1; break;
		default: usage();
		}
	}
	if (optind != argc)
		usage();
	if (conf_load_file(conf, conffile, &err) < 0) {
		fprintf(stderr, "portcullisd: %s\n", err);
		return 1;
	}
	for (size_t i = 0; i < noverrides; i++)
		if (conf_set_override(conf, overrides[i], &err) < 0) {
			fprintf(stderr, "portcullisd: %s\n", err);
			return 1;
		}
	free(overrides);
	if (conf_finish(conf, &err) < 0) {
		fprintf(stderr, "portcullisd: %s\n", err);
		return 1;
	}
	if (print_only) {
		conf_print(conf, stdout, 1);
		conf_free(&conf);
		return 0;
	}
	if (policy_new(conf, &pol, &err) < 0) {
		fprintf(stderr, "portcullisd: %s\n", err);
		return 1;
	}
	log_open("portcullisd", foreground);
	if (log_level_parse(conf_get(conf, "log_level"), &lvl) == 0)
		log_set_level(lvl);
	if (pol->ndomains == 0)
		log_warn("mydomains is empty: every recipient counts as relayed, so clients "
		    "outside relay_networks can send nothing");
	mkdirs(conf_get(conf, "state_dir"));

	store = liststore_open_conf(conf, &err);
	if (store == NULL)
		fatal("%s: %s", conffile, err);
	if (strcmp(liststore_scheme(store), "file") != 0) {
		char *url = xasprintf("file:%s", conf_get(conf, "lists_cache"));

		cache = liststore_open(url, &err);
		if (cache == NULL)
			fatal("lists_cache: %s", err);
		free(url);
	}
	env.pol = pol;
	env.snaps = &snaps;
	env.rl = rl = ratelimit_new();
	env.ban = watcher_ban;
	if (milter_setup(conf_get(conf, "milter_listen"), &env, &err) < 0)
		fatal("%s", err);
	if (!foreground)
		detach();
	/*
	 * Threads start after the fork, with the stop signals blocked: libmilter's
	 * own signal thread sigwait()s for them and shuts down cleanly. A thread
	 * of ours with them unblocked would take the default action instead.
	 */
	{
		sigset_t set;

		sigemptyset(&set);
		sigaddset(&set, SIGTERM);
		sigaddset(&set, SIGINT);
		sigaddset(&set, SIGHUP);
		pthread_sigmask(SIG_BLOCK, &set, NULL);
		signal(SIGPIPE, SIG_IGN);
	}
	w = watcher_new(store, cache, &snaps, &err);
	if (w == NULL)
		fatal("cannot load the lists: %s", err);
	env.ban_arg = w;
	watcher_set_tick(w, milter_poke_if_stopping);
	if (pol->rate_limit > 0 || pol->nrate_overrides > 0) {
		watcher_set_ratelimit(w, rl);
		if (!liststore_has_rate_sync(store))
			log_info("relay rate limits are counted on this node only (lists = %s); "
			    "use a redis:// store to count across nodes", conf_get(conf, "lists"));
	}
	if (watcher_start(w, &err) < 0)
		fatal("%s", err);
	write_pidfile(conf_get(conf, "pid_file"));
	log_info("portcullisd started: milter on %s, lists %s, policy_mode %s",
	    conf_get(conf, "milter_listen"), conf_get(conf, "lists"),
	    conf_get(conf, "policy_mode"));
	rc = milter_run();
	log_info("portcullisd stopping");
	watcher_stop_and_free(&w);
	snapref_deinit(&snaps);
	liststore_free(&store);
	liststore_free(&cache);
	unlink(conf_get(conf, "pid_file"));
	ratelimit_free(&rl);
	policy_free(&pol);
	conf_free(&conf);
	return rc == 0 ? 0 : 1;
}
