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

#include "common/conf.h"
#include "common/xmalloc.h"
#include "rules/policy.h"

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
	}
	conf_list_free(list);
	qsort(p->domains, p->ndomains, sizeof(char *), cmp_str);

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
	*p_r = p;
	return 0;

fail_list:
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
	free(p);
	*pp = NULL;
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
