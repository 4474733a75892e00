#ifndef PC_AUTHMECH_H
#define PC_AUTHMECH_H

/*
 * The SASL mechanisms an admin may enable (auth_mechanisms), parsed in one
 * place for the daemon and the CLI: names are case-insensitive.
 */
struct conf;

#define AUTH_MECH_PLAIN	1u
#define AUTH_MECH_LOGIN	2u
#define AUTH_MECH_CRAM	4u
#define AUTH_MECH_SCRAM	8u	/* SCRAM-SHA-256 */
#define AUTH_MECH_EXTERNAL 16u	/* TLS client certificate */

/* auth_mechanisms -> AUTH_MECH_* bits; -1 with *error_r naming FILE:LINE and
 * the unknown name. An empty list is 0 (no AUTH). */
int authmech_parse(const struct conf *c, unsigned *mechs_r, const char **error_r)
    __attribute__((warn_unused_result));
/* the same for another key of mechanism names (a door's own list, e.g.
 * imap_auth_mechanisms, whose default is $auth_mechanisms) */
int authmech_parse_key(const struct conf *c, const char *key, unsigned *mechs_r,
    const char **error_r) __attribute__((warn_unused_result));
/* one name ("cram-md5", "PLAIN") -> its bit, 0 when unknown */
unsigned authmech_from_name(const char *name);

#endif
