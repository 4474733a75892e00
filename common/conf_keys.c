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
	{ "log_file", "", CT_STR, NULL, 0, 0 },	/* "": syslog (or stderr with -f) */
	{ "metrics_listen", "", CT_STR, NULL, 0, 0 },	/* HOST:PORT: Prometheus text format */
	{ "node_name", "$myhostname", CT_STR, NULL, 0, 0 },	/* PREFIXstats:NODE in Redis */
	{ "stats_publish_interval", "5", CT_TIME, NULL, 1, 3600 },	/* TTL: 3 intervals */
	{ "run_user", "", CT_STR, NULL, 0, 0 },	/* "": keep the starting user */

	/* which front doors run, each in its own worker process */
	{ "services", "milter", CT_LIST, NULL, 0, 0 },
	{ "myhostname", "", CT_STR, NULL, 0, 0 },	/* "": the host's name */

	/* milter front door */
	{ "milter_listen", "inet:127.0.0.1:8891", CT_STR, NULL, 0, 0 },

	/* Postfix policy door (check_policy_service) */
	{ "policy_listen", "inet:127.0.0.1:10040", CT_LIST, NULL, 0, 0 },	/* or unix:/path */
	{ "policy_max_connections", "200", CT_INT, NULL, 1, 100000 },
	{ "policy_idle_timeout", "600", CT_TIME, NULL, 1, 86400 },	/* > Postfix's max_idle */
	{ "policy_timeout", "30", CT_TIME, NULL, 1, 3600 },	/* one request, one answer */

	/* TLS, one set of keys for every listener */
	{ "tls_cert_file", "", CT_STR, NULL, 0, 0 },
	{ "tls_key_file", "", CT_STR, NULL, 0, 0 },
	{ "tls_min_version", "TLSv1.2", CT_ENUM, "TLSv1.2|TLSv1.3", 0, 0 },
	{ "tls_ciphers", "", CT_STR, NULL, 0, 0 },
	{ "tls_ciphersuites", "", CT_STR, NULL, 0, 0 },
	{ "tls_client_ca_file", "", CT_STR, NULL, 0, 0 },
	{ "tls_verify_client", "none", CT_ENUM, "none|optional|require", 0, 0 },

	/* SMTP gateway front door */
	{ "smtp_listen", "127.0.0.1:2525", CT_LIST, NULL, 0, 0 },
	{ "submission_listen", "", CT_LIST, NULL, 0, 0 },	/* AUTH required */
	{ "smtps_listen", "", CT_LIST, NULL, 0, 0 },		/* implicit TLS (RFC 8314) */
	{ "smtp_banner", "$myhostname ESMTP", CT_STR, NULL, 0, 0 },
	{ "vrfy", "no", CT_BOOL, NULL, 0, 0 },
	{ "smtp_bare_newline", "reject", CT_ENUM, "reject|normalize", 0, 0 },
	{ "smtp_bare_newline_exceptions", "", CT_LIST, NULL, 0, 0 },	/* CIDRs normalised */
	{ "message_size_limit", "10240000", CT_INT, NULL, 0, 2000000000 },
	{ "smtp_max_connections", "200", CT_INT, NULL, 1, 100000 },
	{ "smtp_max_per_client", "20", CT_INT, NULL, 1, 100000 },
	{ "smtp_timeout", "300", CT_TIME, NULL, 1, 3600 },
	{ "smtp_request_deadline", "yes", CT_BOOL, NULL, 0, 0 },	/* timeout per request, not per read */
	{ "smtp_min_data_rate", "500", CT_INT, NULL, 0, 1000000000 },	/* bytes/s in DATA */
	{ "smtp_stress_timeout", "10", CT_TIME, NULL, 1, 3600 },	/* above 80 % of max_connections */
	{ "client_hostname_lookups", "no", CT_BOOL, NULL, 0, 0 },	/* FCrDNS of clients */
	{ "resolver", "system", CT_STR, NULL, 0, 0 },	/* or IP[:PORT] */
	{ "delivery", "maildir:$state_dir/mail", CT_STR, NULL, 0, 0 },	/* or relay:[HOST]:PORT */
	{ "relayhost", "", CT_STR, NULL, 0, 0 },	/* [HOST]:PORT for relayed mail */
	/* a downstream session whose message is done waits this long for the next */
	{ "relay_connection_cache_time", "2", CT_TIME, NULL, 0, 300 },
	{ "users", "file:$state_dir/users", CT_STR, NULL, 0, 0 },
	{ "auth_mechanisms", "PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256", CT_LIST, NULL, 0, 0 },
	{ "auth_allow_plaintext", "no", CT_BOOL, NULL, 0, 0 },
	{ "smtp_auth", "yes", CT_BOOL, NULL, 0, 0 },	/* no: AUTH on submission/smtps only */
	/* failed logins per client address (IPv6 per /64): delay doubling to the max */
	{ "auth_failure_delay", "2s", CT_TIME, NULL, 0, 3600 },
	{ "auth_failure_delay_max", "15s", CT_TIME, NULL, 0, 3600 },
	{ "auth_failure_ban", "20/10m", CT_STR, NULL, 0, 0 },	/* N/TIME, or 0 */
	{ "auth_failure_ban_time", "1h", CT_TIME, NULL, 0, 315360000 },

	/* POP3 front door (services = pop3) on the Maildir store of delivery = maildir: */
	{ "pop3_listen", "127.0.0.1:1110", CT_LIST, NULL, 0, 0 },
	{ "pop3s_listen", "", CT_LIST, NULL, 0, 0 },	/* implicit TLS (RFC 8314) */
	{ "pop3_banner", "$myhostname ready.", CT_STR, NULL, 0, 0 },	/* after "+OK " */
	{ "pop3_auth_mechanisms", "$auth_mechanisms", CT_LIST, NULL, 0, 0 },	/* PLAIN: also USER/PASS */
	{ "pop3_apop", "no", CT_BOOL, NULL, 0, 0 },	/* APOP (only over TLS unless auth_allow_plaintext) */
	{ "pop3_max_connections", "200", CT_INT, NULL, 1, 100000 },
	{ "pop3_max_per_client", "20", CT_INT, NULL, 1, 100000 },
	{ "pop3_timeout", "600", CT_TIME, NULL, 1, 3600 },	/* RFC 1939: at least 10 minutes idle */
	{ "mail_max_userip_connections", "10", CT_INT, NULL, 0, 100000 },	/* per user and address */

	/* IMAP4 front door (pop-imap-proxy/imap_server.c) on the Maildir store */
	{ "imap_listen", "127.0.0.1:1143", CT_LIST, NULL, 0, 0 },
	{ "imaps_listen", "", CT_LIST, NULL, 0, 0 },		/* implicit TLS (RFC 8314) */
	{ "imap_banner", "$myhostname ready.", CT_STR, NULL, 0, 0 },
	{ "imap_auth_mechanisms", "$auth_mechanisms", CT_LIST, NULL, 0, 0 },
	{ "imap_max_connections", "1000", CT_INT, NULL, 1, 1000000 },
	{ "imap_max_per_client", "50", CT_INT, NULL, 1, 100000 },	/* per client address */
	{ "imap_login_timeout", "60", CT_TIME, NULL, 1, 3600 },	/* before login, per request */
	{ "imap_idle_timeout", "30m", CT_TIME, NULL, 60, 86400 },	/* after login (RFC 3501: >= 30m) */

	/* the proxy to users' backends (pop-imap-proxy/proxy.c; users file: proxy=y host=...) */
	{ "mail_proxy_auth", "local", CT_ENUM, "local|backend", 0, 0 },	/* who checks the password */
	{ "mail_proxy_default", "", CT_STR, NULL, 0, 0 },	/* HOST[:PORT]: users of mail_proxy_domains */
	{ "mail_proxy_domains", "", CT_LIST, NULL, 0, 0 },	/* ... that have no line of their own */
	{ "imap_mail_proxy_default", "$mail_proxy_default", CT_STR, NULL, 0, 0 },	/* the IMAP door's */
	{ "pop3_mail_proxy_default", "$mail_proxy_default", CT_STR, NULL, 0, 0 },	/* the POP3 door's */
	{ "mail_proxy_forward_client", "yes", CT_BOOL, NULL, 0, 0 },	/* IMAP ID, POP3 XCLIENT */
	{ "mail_proxy_tls_ca_file", "", CT_STR, NULL, 0, 0 },	/* "": the system's CAs */
	{ "mail_proxy_timeout", "30", CT_TIME, NULL, 1, 3600 },	/* connect, TLS and login */
	{ "mail_proxy_max_reconnects", "3", CT_INT, NULL, 0, 100 },	/* a refused connect again, 1 s on */
	{ "mail_proxy_master_user", "", CT_STR, NULL, 0, 0 },	/* CRAM-MD5, EXTERNAL, APOP: user*MASTER */
	{ "mail_proxy_master_password_file", "", CT_STR, NULL, 0, 0 },	/* its password, first line */

	/* relay control */
	{ "mydomains", "", CT_LIST, NULL, 0, 0 },
	{ "postmaster_address", "", CT_STR, NULL, 0, 0 },	/* "": postmaster@ first mydomain */
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

	/* GeoIP: the client's country, for country:XX list entries and logs */
	{ "geoip_database", "", CT_STR, NULL, 0, 0 },	/* MaxMind DB file; "": none */
	{ "geoip_country_field", "country.iso_code", CT_STR, NULL, 0, 0 },	/* map keys */

	/* Sieve rules (issue 10): server.sieve, domains/D.sieve, users/U@D.sieve, global/ */
	{ "sieve_dir", "$state_dir/sieve", CT_STR, NULL, 0, 0 },
	{ "sieve_max_script_size", "1048576", CT_INT, NULL, 1, 16777216 },
	{ "sieve_max_nesting", "32", CT_INT, NULL, 1, 1000 },
	{ "sieve_max_actions", "32", CT_INT, NULL, 1, 10000 },
	{ "sieve_max_redirects", "4", CT_INT, NULL, 0, 1000 },
	{ "sieve_max_include_depth", "10", CT_INT, NULL, 1, 100 },
	{ "sieve_max_cpu_steps", "2000000", CT_INT, NULL, 1000, 2000000000 },
	{ "quarantine_dir", "$state_dir/quarantine", CT_STR, NULL, 0, 0 },	/* Sieve quarantine (gateway) */

	{ NULL, NULL, CT_STR, NULL, 0, 0 },
};
