/*
 * users - the user database kept current for a door (see users.h).
 */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/sasl.h"
#include "common/xmalloc.h"
#include "service/users.h"
#include "storage-adapter/userdb.h"
#include "storage-adapter/userdb_sasl.h"

int
users_open(struct users *u, const char *url, const char **error_r)
{
	const char *why;

	memset(u, 0, sizeof(*u));
	if (url == NULL || url[0] == '\0')
		return 0;
	u->db = userdb_open(url, error_r);
	if (u->db == NULL)
		return -1;
	u->url = xstrdup(url);
	/* absent at start is "no users" as documented; anything else is said */
	if (!userdb_is_usable(u->db, &why) && userdb_count(u->db) == 0 &&
	    strstr(why, "is missing") == NULL)
		log_error("users file not usable, no users until it is: %s", why);
	return 0;
}

int
users_open_sasl(struct users *u, const char *url, struct sasl_callbacks *cb, const char **error_r)
{
	if (sasl_init(error_r) < 0)
		return -1;
	userdb_sasl_callbacks(&u->db, cb);	/* u->db may be reloaded */
	return users_open(u, url, error_r);
}

void
users_tick(struct users *u, time_t now)
{
	const char *err;
	int rc;

	if (u->db == NULL)
		return;
	rc = userdb_reload(&u->db, u->url, &err);
	if (rc < 0) {
		if (u->bad_since == 0 || now - u->bad_logged >= 60) {
			log_error("users file not usable, the last good users (%zu) stay in force: %s",
			    userdb_count(u->db), err);
			u->bad_logged = now;
		}
		if (u->bad_since == 0)
			u->bad_since = now;
		return;
	}
	if (rc > 0)
		log_info("users reloaded: %zu", userdb_count(u->db));
	else if (u->bad_since != 0)
		log_info("users file usable again after %lds", (long)(now - u->bad_since));
	u->bad_since = 0;
}

void
users_close(struct users *u)
{
	userdb_free(&u->db);
	free(u->url);
	u->url = NULL;
}
