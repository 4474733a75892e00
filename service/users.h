#ifndef PC_SVC_USERS_H
#define PC_SVC_USERS_H
/*
 * users - the user database a door reads (SMTP AUTH and local recipients,
 * POP3 and IMAP logins), kept current: users_tick() (once a second) reopens
 * it when its file changed. A file that is missing, empty, unreadable or
 * garbled (a half-written copy) keeps the last good users in force, said
 * once a minute: the alternative is refusing every login and recipient.
 * Owner: the event loop's thread.
 */
#include <time.h>

struct sasl_callbacks;
struct userdb;

struct users {
	struct userdb *db;	/* NULL: no users file (users =); stable address for userdb_sasl */
	char *url;
	time_t bad_since;	/* the file is not usable since; 0: it is */
	time_t bad_logged;
};

/* url NULL or "": no users file. Absent at start is "no users" (as
 * documented); otherwise unusable is said. -1 with *error_r: cannot open */
int users_open(struct users *u, const char *url, const char **error_r)
    __attribute__((warn_unused_result));
/* users_open(), and *cb set to check logins against u's users (storage-
 * adapter/userdb_sasl, following each reload) once common/sasl is ready */
int users_open_sasl(struct users *u, const char *url, struct sasl_callbacks *cb,
    const char **error_r) __attribute__((warn_unused_result));
void users_tick(struct users *u, time_t now);
void users_close(struct users *u);

#endif
