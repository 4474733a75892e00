/*
 * owner - run_user: who the daemon runs as, and who owns what it writes.
 *
 *   owner_lookup()      run_user -> uid, gid
 *   owner_fix_files()   chown state_dir, the list and cache files, users to it
 *   owner_drop()        setgroups, setgid, setuid; checked
 *
 * Only ever acts when the caller is root; never follows symlinks it chowns.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/conf.h"
#include "common/log.h"
#include "common/owner.h"
#include "common/xmalloc.h"

static char errbuf[300];

int
owner_lookup(const struct conf *c, unsigned *uid_r, unsigned *gid_r, const char **error_r)
{
	const char *name = conf_get(c, "run_user");
	struct passwd *pw;

	if (name[0] == '\0')
		return 0;
	pw = getpwnam(name);
	if (pw == NULL) {
		snprintf(errbuf, sizeof(errbuf), "%s: run_user: no user \"%.60s\"",
		    conf_where(c, "run_user"), name);
		*error_r = errbuf;
		return -1;
	}
	*uid_r = pw->pw_uid;
	*gid_r = pw->pw_gid;
	return 1;
}

static void
chown_one(const char *path, unsigned uid, unsigned gid)
{
	if (lchown(path, uid, gid) < 0 && errno != ENOENT)
		log_warn("cannot hand %s to run_user: %s", path, strerror(errno));
}

/* the directory and the plain files in it (not recursive) */
static void
chown_dir(const char *dir, unsigned uid, unsigned gid)
{
	DIR *d = opendir(dir);
	struct dirent *de;

	chown_one(dir, uid, gid);
	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		char *p;
		struct stat st;

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		p = xasprintf("%s/%s", dir, de->d_name);
		if (lstat(p, &st) == 0 && S_ISREG(st.st_mode))
			chown_one(p, uid, gid);
		free(p);
	}
	closedir(d);
}

void
owner_fix_files(const struct conf *c)
{
	unsigned uid, gid;
	const char *err, *lists = conf_get(c, "lists"), *users = conf_get(c, "users");

	if (geteuid() != 0 || owner_lookup(c, &uid, &gid, &err) != 1)
		return;
	chown_one(conf_get(c, "state_dir"), uid, gid);
	if (strncmp(lists, "file:", 5) == 0)
		chown_dir(lists + 5, uid, gid);
	chown_dir(conf_get(c, "lists_cache"), uid, gid);
	if (strncmp(users, "file:", 5) == 0) {
		char *lock = xasprintf("%s.lock", users + 5);

		chown_one(users + 5, uid, gid);
		chown_one(lock, uid, gid);
		free(lock);
	}
	if (strncmp(conf_get(c, "delivery"), "maildir:", 8) == 0)
		chown_one(conf_get(c, "delivery") + 8, uid, gid);
}

int
owner_drop(const struct conf *c, const char **error_r)
{
	unsigned uid, gid;
	int r = owner_lookup(c, &uid, &gid, error_r);

	if (r <= 0)
		return r;
	if (geteuid() != 0)
		return 0;	/* not root: nothing to drop */
	owner_fix_files(c);
	if (setgroups(1, &(gid_t){ gid }) < 0 || setgid(gid) < 0 || setuid(uid) < 0) {
		snprintf(errbuf, sizeof(errbuf), "run_user: cannot become %s: %s",
		    conf_get(c, "run_user"), strerror(errno));
		*error_r = errbuf;
		return -1;
	}
	if (setuid(0) == 0) {	/* paranoia: root must be gone for good */
		snprintf(errbuf, sizeof(errbuf), "run_user: could regain root after dropping");
		*error_r = errbuf;
		return -1;
	}
	return 0;
}
