#ifndef PC_USERDB_SASL_H
#define PC_USERDB_SASL_H
#include "common/sasl.h"

struct userdb;

/*
 * common/sasl's callbacks over the users file, for every door (SMTP AUTH,
 * POP3, IMAP, web UI): the lookup resolves a login (or a certificate's
 * identity) to the canonical user and copies its secrets; the checks use only
 * those copies, so they may run on a pool thread while the loop reloads the
 * file. *dbp is read at each lookup (NULL or no file: no users).
 */
void userdb_sasl_callbacks(struct userdb *const *dbp, struct sasl_callbacks *r);

#endif
