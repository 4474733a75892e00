#ifndef PC_POLICY_CHECK_H
#define PC_POLICY_CHECK_H
#include <stddef.h>
#include "policy/policy_proto.h"
#include "rules/engine.h"

/*
 * What the Postfix policy door answers: one request through a fresh engine
 * session, the verdict turned into a policy action. Pure but for logging
 * (engine_log); no sockets.
 */

#define MAX_POLICY_ACTION (MAX_REPLY_TEXT + 32)	/* "550 5.7.1 " + reply text */

/*
 * req must be well formed (req->error NULL). action_r gets the action text
 * without "action=": "OK", "DUNNO" or "CODE D.S.N text"; *v_r the verdict
 * that decided (VERDICT_CONTINUE for DUNNO and OK), for bans. conn_id: the
 * policy connection's (common/connid), on the engine's line; NULL none.
 */
void policy_check(const struct policy_request *req, const struct policy *pol,
    const struct snapshot *snap, long long now, char *action_r, size_t cap,
    struct verdict *v_r, const char *conn_id);
/* the action for a malformed request */
void policy_check_malformed(const char *why, char *action_r, size_t cap);

#endif
