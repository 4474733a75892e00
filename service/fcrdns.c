/*
 * fcrdns - forward-confirmed reverse DNS on evdns (see fcrdns.h): PTR, then
 * A/AAAA of the name, compared with the client's address.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/dns.h>
#include <event2/event.h>

#include "common/cidr.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "service/fcrdns.h"

struct lookup {
	struct evdns_base *dns;
	struct ipaddr addr;
	fcrdns_cb *cb;
	void *arg;
	char ptrname[256];	/* the reverse name being forward-confirmed */
};

struct evdns_base *
fcrdns_resolver_new(struct event_base *base, const char *resolver, const char **error_r)
{
	/* no search domains, our own nameserver: no query leaves by surprise */
	struct evdns_base *dns = evdns_base_new(base, 0);

	if (dns == NULL) {
		*error_r = "cannot create the resolver";
		return NULL;
	}
	if (strcmp(resolver, "system") == 0) {
		if (evdns_base_resolv_conf_parse(dns, DNS_OPTION_NAMESERVERS, "/etc/resolv.conf") != 0)
			log_warn("client_hostname_lookups: cannot read /etc/resolv.conf");
	} else if (evdns_base_nameserver_ip_add(dns, resolver) != 0) {
		*error_r = "resolver: not an IP[:PORT]";
		evdns_base_free(dns, 0);
		return NULL;
	}
	evdns_base_set_option(dns, "timeout:", "3");
	evdns_base_set_option(dns, "attempts:", "2");
	return dns;
}

void
fcrdns_resolver_free(struct evdns_base **dns)
{
	if (*dns != NULL)
		evdns_base_free(*dns, 1);	/* pending lookups call back with an error */
	*dns = NULL;
}

static void
finish(struct lookup *l, const char *name)
{
	fcrdns_cb *cb = l->cb;
	void *arg = l->arg;
	char copy[sizeof(l->ptrname)];

	if (name != NULL)
		snprintf(copy, sizeof(copy), "%s", name);
	free(l);
	cb(arg, name != NULL ? copy : NULL);
}

/* the PTR name must resolve back to the client */
static void
fwd_cb(int result, char type, int count, int ttl, void *addrs, void *arg)
{
	struct lookup *l = arg;
	int ok = 0;

	(void)ttl;
	if (result == DNS_ERR_NONE && type == DNS_IPv4_A && l->addr.family == 4) {
		const uint32_t *a = addrs;

		for (int i = 0; i < count; i++)
			ok |= ntohl(a[i]) == l->addr.v4;
	} else if (result == DNS_ERR_NONE && type == DNS_IPv6_AAAA && l->addr.family == 6) {
		const struct in6_addr *a = addrs;

		for (int i = 0; i < count; i++) {
			struct ipaddr x;
			struct sockaddr_in6 sin6;

			memset(&sin6, 0, sizeof(sin6));
			sin6.sin6_family = AF_INET6;
			sin6.sin6_addr = a[i];
			if (cidr_addr_from_sockaddr((struct sockaddr *)&sin6, &x) == 0)
				ok |= x.hi == l->addr.hi && x.lo == l->addr.lo;
		}
	}
	finish(l, ok ? l->ptrname : NULL);
}

static void
ptr_cb(int result, char type, int count, int ttl, void *addrs, void *arg)
{
	struct lookup *l = arg;

	(void)ttl;
	if (result == DNS_ERR_NONE && type == DNS_PTR && count > 0 && addrs != NULL) {
		const char *name = *(const char **)addrs;

		if (name != NULL && strlen(name) < sizeof(l->ptrname)) {
			snprintf(l->ptrname, sizeof(l->ptrname), "%s", name);
			if ((l->addr.family == 4 ? evdns_base_resolve_ipv4(l->dns, l->ptrname, 0, fwd_cb, l) :
			    evdns_base_resolve_ipv6(l->dns, l->ptrname, 0, fwd_cb, l)) != NULL)
				return;
		}
	}
	finish(l, NULL);
}

int
fcrdns_lookup(struct evdns_base *dns, const struct ipaddr *addr, fcrdns_cb *cb, void *arg)
{
	struct lookup *l = xcalloc(1, sizeof(*l));
	struct evdns_request *r;

	l->dns = dns;
	l->addr = *addr;
	l->cb = cb;
	l->arg = arg;
	if (addr->family == 4) {
		struct in_addr in = { .s_addr = htonl(addr->v4) };

		r = evdns_base_resolve_reverse(dns, &in, 0, ptr_cb, l);
	} else {
		struct in6_addr in6;

		for (int i = 0; i < 8; i++) {
			in6.s6_addr[i] = (uint8_t)(addr->hi >> (56 - 8 * i));
			in6.s6_addr[8 + i] = (uint8_t)(addr->lo >> (56 - 8 * i));
		}
		r = evdns_base_resolve_reverse_ipv6(dns, &in6, 0, ptr_cb, l);
	}
	if (r == NULL) {
		free(l);
		return -1;
	}
	return 0;
}
