/*
 * proxy_door - the login glue the IMAP and POP3 doors share (see
 * proxy_door.h). The log line and counter carry the door's name; what each
 * door answers its client stays in imap_server.c / pop3_server.c.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "common/authmech.h"
#include "common/cidr.h"
#include "common/log.h"
#include "common/sasl.h"
#include "common/stats.h"
#include "pop-imap-proxy/proxy_door.h"
#include "service/authcheck.h"
#include "service/conn.h"
#include "storage-adapter/userdb.h"

/* the door's log line on a proxied login and its counter: WHAT[: WHY] */
static void
door_log(const char *door, struct conn *c, const char *user, const struct proxy *px,
    const char *what, const char *why, const char *result)
{
	char who[CIDR_TEXT_MAX];

	log_info("%s: conn=%s proxy: user=<%s> client=[%s] backend=%s: %s%s%s (%u ms)", door,
	    conn_id(c), user, conn_addr_text(c, who), proxy_backend(px), what, why[0] ? ": " : "",
	    why, proxy_login_ms(px));
	stats_addf(1, "proxy_sessions_total{door=\"%s\",backend=\"%s\",result=\"%s\"}", door,
	    proxy_backend(px), result);
}

int
proxy_door_login(const struct proxy_conf *pc, int r, const struct userdb_proxy *where,
    const char *user, const struct sasl_server *sasl, const char **login_r, const char **pw_r,
    char **mlogin_r)
{
	int scram = sasl != NULL && sasl_server_mech(sasl) == AUTH_MECH_SCRAM;

	*pw_r = sasl != NULL ? sasl_server_password(sasl) : NULL;
	*login_r = r > 0 && where->destuser[0] ? where->destuser : user;
	*mlogin_r = NULL;
	/* SCRAM's server-final message reaches the client first */
	if (r > 0 && *pw_r == NULL && scram && pc->master_user != NULL)
		return 0;
	/* APOP, CRAM-MD5, EXTERNAL: through the backend's master user */
	if (r > 0 && *pw_r == NULL && !scram)
		*mlogin_r = proxy_master_login(pc, *login_r, pw_r);
	if (r < 0 || *pw_r == NULL)
		return -1;
	if (*mlogin_r != NULL)
		*login_r = *mlogin_r;
	return 1;
}

int
proxy_door_backend_route(const struct proxy_conf *pc, const struct userdb *db,
    const struct sasl_server *sasl, const char **login_r, const char **pw_r,
    struct userdb_proxy *where, char *user, size_t cap)
{
	char local[256], *at;

	if (sasl_server_plain_response(sasl, login_r, pw_r) < 0 ||
	    !proxy_default_route(pc, *login_r, where))
		return 0;
	snprintf(local, sizeof(local), "%s", *login_r);
	at = strrchr(local, '@');
	*at = '\0';
	if (db != NULL && userdb_resolve(db, local, at + 1) != NULL)
		return 0;	/* a user of ours: checked here */
	snprintf(user, cap, "%s", *login_r);
	for (char *q = user; *q; q++)
		*q = (char)tolower((unsigned char)*q);
	return 1;
}

void
proxy_door_start(struct proxy **px, struct event_base *base, const struct proxy_conf *pc,
    enum proxy_proto proto, const struct userdb_proxy *where, struct conn *c,
    const char *login, const char *password, const struct proxy_hooks *h, void *arg)
{
	*px = proxy_new(base, pc, proto, where, c, login, password, h, arg);
	conn_pause(c);
	if (proxy_start_failed(*px))
		h->done(arg, PROXY_UNAVAILABLE, "", "cannot connect");
}

int
proxy_door_verdict(const char *door, struct conn *c, char *user, struct proxy **px,
    struct authcheck *ac, enum proxy_result res, const struct authcheck_hooks *h, void *arg)
{
	struct authcheck_req r = { .addr = conn_addr(c), .conn_id = conn_id(c) };

	if (res == PROXY_REFUSED) {
		door_log(door, c, user, *px, "refused by the backend (mail_proxy_auth = backend)",
		    "", "refused");
		proxy_free(px);
		user[0] = '\0';
	}
	r.ok = res == PROXY_OK;
	conn_hold(c);
	return authcheck_finish(ac, &r, h, arg);
}

void
proxy_door_outcome(const char *door, struct conn *c, const char *user, const struct proxy *px,
    enum proxy_result res, const char *why)
{
	static const char *const result[] = { "success", "refused", "unavailable" };

	door_log(door, c, user, px, res == PROXY_OK ? "logged in" :
	    res == PROXY_REFUSED ? "refused" : "unavailable", why, result[res]);
}

void
proxy_door_over_userip(const char *door, struct conn *c, const char *user,
    const struct proxy *px, unsigned n)
{
	char why[96];

	snprintf(why, sizeof(why), "%u sessions from that address (mail_max_userip_connections)",
	    n);
	door_log(door, c, user, px, "refused", why, "refused");
}
