#ifndef PC_POLICY_H
#define PC_POLICY_H
#include <stddef.h>
#include "common/cidr.h"
#include "common/mailaddr.h"

struct conf;
struct geoip;

enum null_sender_mode { NULL_SENDER_ACCEPT, NULL_SENDER_REJECT, NULL_SENDER_REJECT_MULTI };

#define POLICY_MAX_HEADERS 8

/* Policy settings compiled from the configuration. Immutable, shared. */
struct policy {
	char **domains;		/* sorted, lower case: "example.com" exact, ".example.com" suffix */
	size_t ndomains;
	char origin[MAILADDR_PART_MAX];	/* the first of mydomains not written ".dom"; "" none */
	struct mailaddr postmaster;	/* postmaster_address; local "" when none */
	struct cidrtab *relay_networks;
	size_t nrelay_networks;
	int relay_authenticated;
	int relay_client_domains;
	enum null_sender_mode null_sender;
	char *require_headers[POLICY_MAX_HEADERS];
	size_t nrequire_headers;
	unsigned max_recipients;	/* 0: no limit */
	unsigned max_command_length;	/* 0: no limit */
	unsigned long long_command_ban;	/* seconds; 0: no ban */
	int warn_only;			/* policy_mode = warn */
	/* relay_rate_limit: 0 limit = off */
	unsigned rate_limit, rate_window;
	struct rate_override {
		char *who;		/* "user@dom" or "@dom", lower case */
		unsigned limit, window;
	} *rate_overrides;
	size_t nrate_overrides;
	struct geoip *geoip;	/* geoip_database; NULL: none. Owned, reloads itself */
};

/* errors name the setting and where it was set */
int policy_new(const struct conf *c, struct policy **p_r, const char **error_r)
    __attribute__((warn_unused_result));
void policy_free(struct policy **p);
/* domain (lower case, no trailing dot) is in mydomains */
int policy_is_my_domain(const struct policy *p, const char *domain);
/* the relay rate limit for an authenticated user (NULL: none): user
 * overrides domain overrides server; 0 when no limit applies */
int policy_rate_for(const struct policy *p, const char *user, unsigned *limit_r,
    unsigned *window_r);
/* host name (lower case) is a domain in mydomains or lies below one */
int policy_host_in_my_domains(const struct policy *p, const char *host);

#endif
