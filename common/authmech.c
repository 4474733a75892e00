/*
 * authmech - the auth_mechanisms setting, parsed once for every user of it.
 *
 *   authmech_parse()      the key -> AUTH_MECH_* bits, or FILE:LINE error
 *   authmech_parse_key()  the same for a door's own list (imap_auth_mechanisms)
 *   authmech_from_name()  one name, case-insensitive
 *
 * Before this, the daemon and the CLI read the key each their own way, and
 * the CLI's case-sensitive search made "cram-md5" store no CRAM-MD5 secret
 * while the daemon offered the mechanism.
 */
#include <stdio.h>
#include <strings.h>

#include "common/authmech.h"
#include "common/conf.h"

unsigned
authmech_from_name(const char *name)
{
	if (strcasecmp(name, "PLAIN") == 0)
		return AUTH_MECH_PLAIN;
	if (strcasecmp(name, "LOGIN") == 0)
		return AUTH_MECH_LOGIN;
	if (strcasecmp(name, "CRAM-MD5") == 0)
		return AUTH_MECH_CRAM;
	if (strcasecmp(name, "SCRAM-SHA-256") == 0)
		return AUTH_MECH_SCRAM;
	if (strcasecmp(name, "EXTERNAL") == 0)
		return AUTH_MECH_EXTERNAL;
	return 0;
}

int
authmech_parse(const struct conf *c, unsigned *mechs_r, const char **error_r)
{
	return authmech_parse_key(c, "auth_mechanisms", mechs_r, error_r);
}

int
authmech_parse_key(const struct conf *c, const char *key, unsigned *mechs_r,
    const char **error_r)
{
	static char err[300];
	size_t n;
	char **m = conf_get_list(c, key, &n);
	unsigned bits = 0;

	for (size_t k = 0; k < n; k++) {
		unsigned b = authmech_from_name(m[k]);

		if (b == 0) {
			snprintf(err, sizeof(err), "%s: %s: \"%.40s\" is not PLAIN, "
			    "LOGIN, CRAM-MD5, SCRAM-SHA-256 or EXTERNAL", conf_where(c, key), key, m[k]);
			conf_list_free(m);
			*error_r = err;
			return -1;
		}
		bits |= b;
	}
	conf_list_free(m);
	*mechs_r = bits;
	return 0;
}
