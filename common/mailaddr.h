#ifndef PC_MAILADDR_H
#define PC_MAILADDR_H

#define MAILADDR_PART_MAX 256

/*
 * An envelope address, reduced to what policy needs: the final local part
 * (unquoted) and domain (lower case, no trailing dot), and flags for every
 * trick that can smuggle a second destination past a domain check.
 */
struct mailaddr {
	char local[MAILADDR_PART_MAX];
	char domain[MAILADDR_PART_MAX];	/* "" when unqualified */
	unsigned is_null:1;		/* <> */
	unsigned source_route:1;	/* @a,@b:user@dom (the route is dropped) */
	unsigned routing_local:1;	/* local part holds % ! or @ */
	unsigned domain_literal:1;	/* user@[192.0.2.1] */
	unsigned quoted:1;		/* local part was quoted */
};

/* raw: "<user@dom>", "user@dom", "<>" ... Returns -1 for garbage. */
int mailaddr_parse(const char *raw, struct mailaddr *addr_r)
    __attribute__((warn_unused_result));
/* "local@domain" lower-cased, or "local" when unqualified; buf >= 2*MAILADDR_PART_MAX */
const char *mailaddr_key(const struct mailaddr *a, char *buf);

#endif
