/*
 * policy - the configuration, compiled for the engine.
 *
 *   policy_new()            check and compile mydomains, relay_networks, limits...
 *   policy_is_my_domain()   exact match, or a parent written ".example.com"
 *
 * Read-only after policy_new(): shared by every thread.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/conf.h"
#include "common/xmalloc.h"
#include "rules/geoip.h"
#include "rules/policy.h"
#include "storage-adapter/ratelimit.h"

static char errbuf[512];

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int
domain_is_valid(const char *s)
{
	size_t label = 0, n = strlen(s);

	if (n == 0 || n > 255)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '.') {
			if (label == 0 && i != 0)
				return 0;
			label = 0;
		} else if (isalnum(c) || c == '-' || c == '_') {
			label++;
		} else {
			return 0;
		}
	}
	return label > 0;
}

int
policy_new(const struct conf *c, struct policy **p_r, const char **error_r)
{
	struct policy *p = xcalloc(1, sizeof(*p));
	struct cidrtab_builder *b = cidrtab_builder_new();
	const char *mode;
	char **list;
	size_t n;

	/* mydomains */
	list = conf_get_list(c, "mydomains", &n);
	p->domains = xcalloc(n + 1, sizeof(char *));
	for (size_t i = 0; i < n; i++) {
		char *d = list[i];
		size_t l = strlen(d);

		for (char *q = d; *q; q++)
			*q = (char)tolower((unsigned char)*q);
		if (l > 1 && d[l - 1] == '.')
			d[l - 1] = '\0';
		if (!domain_is_valid(d)) {
			snprintf(errbuf, sizeof(errbuf), "%s: mydomains: \"%.100s\" is not a domain name",
			    conf_where(c, "mydomains"), d);
			goto fail_list;
		}
		p->domains[p->ndomains++] = xstrdup(d);
		/* what unqualified recipients are qualified with: the first domain
		 * itself (".example.com" names only the domains below it) */
		if (p->origin[0] == '\0' && d[0] != '.')
			snprintf(p->origin, sizeof(p->origin), "%s", d);
	}
	conf_list_free(list);
	qsort(p->domains, p->ndomains, sizeof(char *), cmp_str);

	/* postmaster_address: where <postmaster> (RFC 5321 §4.5.1) goes */
	{
		const char *pm = conf_get(c, "postmaster_address");
		char def[MAILADDR_PART_MAX + 16];
		const char *why = NULL;

		if (pm[0] == '\0' && p->origin[0] != '\0') {
			snprintf(def, sizeof(def), "postmaster@%s", p->origin);
			pm = def;
		}
		if (pm[0] != '\0' && mailaddr_parse_why(pm, &p->postmaster, &why) == 0)
			why = p->postmaster.is_null || p->postmaster.domain[0] == '\0' ?
			    "need user@domain" : NULL;
		if (pm[0] != '\0' && why != NULL) {
			snprintf(errbuf, sizeof(errbuf), "%s: postmaster_address: \"%.100s\" is not "
			    "a qualified address: %s", conf_where(c, "postmaster_address"), pm, why);
			list = NULL;
			goto fail_list;
		}
		if (pm[0] == '\0')
			memset(&p->postmaster, 0, sizeof(p->postmaster));
	}

	/* relay_networks */
	list = conf_get_list(c, "relay_networks", &n);
	for (size_t i = 0; i < n; i++) {
		struct cidr cidr;
		const char *err;

		if (cidr_parse(list[i], &cidr, &err) < 0) {
			snprintf(errbuf, sizeof(errbuf), "%s: relay_networks: \"%.100s\": %s",
			    conf_where(c, "relay_networks"), list[i], err);
			goto fail_list;
		}
		cidrtab_builder_add(b, &cidr, 1);
		p->nrelay_networks++;
	}
	conf_list_free(list);
	p->relay_networks = cidrtab_build(&b);

	/* relay_require_headers */
	list = conf_get_list(c, "relay_require_headers", &n);
	if (n > POLICY_MAX_HEADERS) {
		snprintf(errbuf, sizeof(errbuf), "%s: relay_require_headers: at most %d headers",
		    conf_where(c, "relay_require_headers"), POLICY_MAX_HEADERS);
		goto fail_list;
	}
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(list[i]);

		if (l > 0 && list[i][l - 1] == ':')
			list[i][--l] = '\0';
		if (l == 0 || strspn(list[i], "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != l) {
			snprintf(errbuf, sizeof(errbuf), "%s: relay_require_headers: \"%.100s\" is not a header name",
			    conf_where(c, "relay_require_headers"), list[i]);
			goto fail_list;
		}
		p->require_headers[p->nrequire_headers++] = xstrdup(list[i]);
	}
	conf_list_free(list);

	p->relay_authenticated = conf_get_bool(c, "relay_authenticated");
	p->relay_client_domains = conf_get_bool(c, "relay_client_domains");
	mode = conf_get(c, "null_sender");
	p->null_sender = strcmp(mode, "reject") == 0 ? NULL_SENDER_REJECT :
	    strcmp(mode, "reject_multi_rcpt") == 0 ? NULL_SENDER_REJECT_MULTI : NULL_SENDER_ACCEPT;
	p->max_recipients = (unsigned)conf_get_int(c, "max_recipients");
	p->max_command_length = (unsigned)conf_get_int(c, "max_command_length");
	p->long_command_ban = (unsigned long)conf_get_int(c, "long_command_ban");
	p->warn_only = strcmp(conf_get(c, "policy_mode"), "warn") == 0;

	/* relay rate limits */
	{
		const char *rl = conf_get(c, "relay_rate_limit");

		if (rl[0] != '\0' && strcmp(rl, "0") != 0 &&
		    ratelimit_parse(rl, &p->rate_limit, &p->rate_window) < 0) {
			snprintf(errbuf, sizeof(errbuf), "%s: relay_rate_limit: \"%.100s\" is not "
			    "COUNT/TIME such as 200/1h", conf_where(c, "relay_rate_limit"), rl);
			list = NULL;
			goto fail_list;
		}
	}
	list = conf_get_list(c, "relay_rate_limit_overrides", &n);
	p->rate_overrides = xcalloc(n + 1, sizeof(*p->rate_overrides));
	for (size_t i = 0; i < n; i++) {
		char *colon = strrchr(list[i], ':');
		struct rate_override *o = &p->rate_overrides[p->nrate_overrides];

		if (colon == NULL || colon == list[i] || strchr(list[i], '@') == NULL ||
		    strchr(list[i], '@') > colon || ratelimit_parse(colon + 1, &o->limit, &o->window) < 0) {
			snprintf(errbuf, sizeof(errbuf), "%s: relay_rate_limit_overrides: \"%.100s\" "
			    "is not user@domain:COUNT/TIME or @domain:COUNT/TIME",
			    conf_where(c, "relay_rate_limit_overrides"), list[i]);
			goto fail_list;
		}
		*colon = '\0';
		for (char *q = list[i]; *q; q++)
			*q = (char)tolower((unsigned char)*q);
		o->who = xstrdup(list[i]);
		p->nrate_overrides++;
	}
	conf_list_free(list);
	list = NULL;

	/* geoip_database: a missing or unreadable file stops the start */
	if (conf_get(c, "geoip_database")[0] != '\0') {
		const char *err;

		if (geoip_open(conf_get(c, "geoip_database"), conf_get(c, "geoip_country_field"),
		    &p->geoip, &err) < 0) {
			snprintf(errbuf, sizeof(errbuf), "%s: %s", conf_where(c,
			    strncmp(err, "geoip_country_field", 19) == 0 ?
			    "geoip_country_field" : "geoip_database"), err);
			goto fail_list;
		}
	}
	*p_r = p;
	return 0;

fail_list:
	if (list != NULL)
		conf_list_free(list);
	if (b != NULL)
		cidrtab_free(&(struct cidrtab *){ cidrtab_build(&b) });
	policy_free(&p);
	*error_r = errbuf;
	return -1;
}

void
policy_free(struct policy **pp)
{
	struct policy *p = *pp;

	if (p == NULL)
		return;
	for (size_t i = 0; i < p->ndomains; i++)
		free(p->domains[i]);
	free(p->domains);
	cidrtab_free(&p->relay_networks);
	for (size_t i = 0; i < p->nrequire_headers; i++)
		free(p->require_headers[i]);
	for (size_t i = 0; i < p->nrate_overrides; i++)
		free(p->rate_overrides[i].who);
	free(p->rate_overrides);
	geoip_free(&p->geoip);
	free(p);
	*pp = NULL;
}

int
policy_rate_for(const struct policy *p, const char *user, unsigned *limit_r, unsigned *window_r)
{
	const struct rate_override *dom = NULL;
	const char *at = user ? strrchr(user, '@') : NULL;

	for (size_t i = 0; user != NULL && i < p->nrate_overrides; i++) {
		const struct rate_override *o = &p->rate_overrides[i];

		if (strcasecmp(o->who, user) == 0) {
			*limit_r = o->limit;
			*window_r = o->window;
			return 1;
		}
		if (at != NULL && o->who[0] == '@' && strcasecmp(o->who, at) == 0)
			dom = o;
	}
	if (dom != NULL) {
		*limit_r = dom->limit;
		*window_r = dom->window;
		return 1;
	}
	*limit_r = p->rate_limit;
	*window_r = p->rate_window;
	return p->rate_limit > 0;
}

static int
has_domain(const struct policy *p, const char *d)
{
	return bsearch(&d, p->domains, p->ndomains, sizeof(char *), cmp_str) != NULL;
}

int
policy_is_my_domain(const struct policy *p, const char *domain)
{
	if (has_domain(p, domain))
		return 1;
	for (const char *q = domain; *q; q++)
		if (*q == '.' && has_domain(p, q))
			return 1;
	return 0;
}

int
policy_host_in_my_domains(const struct policy *p, const char *host)
{
	/* a host lies in example.com when it is example.com or below it */
	for (const char *q = host; q != NULL; q = strchr(q + 1, '.')) {
		const char *d = *q == '.' ? q + 1 : q;

		if (has_domain(p, d) || (*q == '.' && has_domain(p, q)))
			return 1;
	}
	return 0;
}
