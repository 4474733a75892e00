#ifndef PC_LIMITS_H
#define PC_LIMITS_H
/* Hard limits, in one place. */

#define MAX_CONF_LINE		8192	/* one logical config line, continuations included */
#define MAX_CONF_EXPAND_DEPTH	16	/* nested $name expansions */
#define MAX_LIST_LINE		2048	/* one line of a list file */
#define MAX_ENTRY_LEN		320	/* an entry's text: address, CIDR, host:, sender */
#define MAX_REASON_LEN		200	/* an entry's reason */
#define MAX_HOSTNAME_LEN	255
#define MAX_ADDRESS_LEN		1024	/* an envelope address we bother to parse */
#define MAX_LOG_ESCAPED		64	/* bytes of hostile input shown in a log line */
#define MAX_REPLY_TEXT		400	/* SMTP reply text */
#define MAX_LIST_ENTRIES	(1u << 26) /* entries in one list (64M) */
#define MAX_LISTENERS		16	/* SMTP listeners (smtp, submission, smtps) in all */
#define MAX_TTL			(10u * 365 * 86400)

#endif
