/*
 * conf_keys - every configuration key, its type and default. Data only.
 * The README's configuration table mirrors this file.
 */
#include <stddef.h>
#include "common/conf.h"

const struct conf_key conf_keys[] = {
	/* where things live */
	{ "state_dir", "/var/lib/portcullis", CT_STR, NULL, 0, 0 },
	{ "pid_file", "$state_dir/portcullisd.pid", CT_STR, NULL, 0, 0 },
	{ "lists", "file:$state_dir/lists", CT_STR, NULL, 0, 0 },
	{ "lists_prefix", "portcullis:", CT_STR, NULL, 0, 0 },
	{ "lists_password_file", "", CT_STR, NULL, 0, 0 },
	{ "lists_resync", "60", CT_TIME, NULL, 1, 86400 },
	{ "lists_cache", "$state_dir/lists-cache", CT_STR, NULL, 0, 0 },
	{ "log_level", "info", CT_ENUM, "debug|info|warn|error", 0, 0 },

	/* milter front door */
	{ "milter_listen", "inet:127.0.0.1:8891", CT_STR, NULL, 0, 0 },

	/* relay control */
	{ "mydomains", "", CT_LIST, NULL, 0, 0 },
	{ "relay_networks", "127.0.0.0/8 ::1", CT_LIST, NULL, 0, 0 },
	{ "relay_authenticated", "yes", CT_BOOL, NULL, 0, 0 },
	{ "relay_client_domains", "no", CT_BOOL, NULL, 0, 0 },

	/* relay rate limits: "N/TIME", per authenticated user or client address */
	{ "relay_rate_limit", "", CT_STR, NULL, 0, 0 },
	{ "relay_rate_limit_overrides", "", CT_LIST, NULL, 0, 0 },

	/* per-stage checks */
	{ "null_sender", "accept", CT_ENUM, "accept|reject|reject_multi_rcpt", 0, 0 },
	{ "relay_require_headers", "From Reply-To", CT_LIST, NULL, 0, 0 },
	{ "max_recipients", "100", CT_INT, NULL, 0, 1000000 },
	{ "max_command_length", "512", CT_INT, NULL, 0, 65536 },
	{ "long_command_ban", "3600", CT_TIME, NULL, 0, 315360000 },
	{ "policy_mode", "enforce", CT_ENUM, "enforce|warn", 0, 0 },

	{ NULL, NULL, CT_STR, NULL, 0, 0 },
};
