#ifndef PC_MAILADDR_H
#define PC_MAILADDR_H
#include <stddef.h>

#define MAILADDR_PART_MAX 256	/* local part (unquoted) or domain, NUL included */
#define MAILADDR_TEXT_MAX 512	/* mailaddr_format() output, NUL included */

/*
 * An envelope address as RFC 5321 §4.1.2 defines it (Path / Mailbox), the
 * one form every door, the engine, the logs, the store and the downstream
 * MTA agree on. Parse with mailaddr_parse(), write with mailaddr_format().
 */
struct mailaddr {
	char local[MAILADDR_PART_MAX];	/* unquoted, case kept */
	char domain[MAILADDR_PART_MAX];	/* lower case, no trailing dot; "" when
					 * unqualified; "[192.0.2.1]", "[ipv6:...]" */
	unsigned is_null:1;		/* <> */
	unsigned source_route:1;	/* @a,@b:user@dom (the route was dropped) */
	unsigned routing_local:1;	/* local part holds % ! or @ */
	unsigned domain_literal:1;	/* user@[192.0.2.1] */
	unsigned quoted:1;		/* local part was written quoted */
};

/*
 * raw: "<Path>" (RFC 5321: "<" [A-d-l ":"] Mailbox ">", or "<>"), or the
 * same without the brackets (what `portcullis explain` and some MTAs pass);
 * white space around it is ignored. An unqualified Mailbox ("<postmaster>")
 * parses with an empty domain. Everything else -- RFC 5322 comments, ( ) , ;
 * : < > outside quotes, control or 8-bit bytes, empty or over-long parts,
 * bad address literals, a formatted form over MAILADDR_TEXT_MAX - 3 octets
 * (so that "<...>" fits) -- is an error: -1, *error_r says why, *addr_r
 * undefined.
 */
int mailaddr_parse_why(const char *raw, struct mailaddr *addr_r, const char **error_r)
    __attribute__((warn_unused_result));
/* the same; MAILADDR_UTF8: an SMTPUTF8 transaction (RFC 6531), where
 * well-formed UTF-8 (no C1 controls) is allowed in the local part and domain */
#define MAILADDR_UTF8 1u
int mailaddr_parse_flags(const char *raw, unsigned flags, struct mailaddr *addr_r,
    const char **error_r) __attribute__((warn_unused_result));
int mailaddr_parse(const char *raw, struct mailaddr *addr_r)
    __attribute__((warn_unused_result));
/*
 * "local@domain" (no brackets), the local part quoted when it is not a
 * Dot-string (RFC 5321 §4.1.2); "" for <>; "local" when unqualified. buf
 * holds MAILADDR_TEXT_MAX bytes; returns buf.
 */
const char *mailaddr_format(const struct mailaddr *a, char *buf);
/*
 * Postfix's internal form (what its policy delegation protocol sends: the
 * local part unquoted, the last '@' before the domain, "" for <>) -> the
 * external "<...>" that mailaddr_parse() reads, the local part quoted when
 * it is not a Dot-string. buf holds cap bytes; when the result would not
 * fit, the internal form is returned as it is (the parser refuses it).
 */
const char *mailaddr_externalize(const char *internal, char *buf, size_t cap);
/* "local@domain" lower-cased, or "local" when unqualified; buf >= 2*MAILADDR_PART_MAX */
const char *mailaddr_key(const struct mailaddr *a, char *buf);
/* a Domain or address literal as a Mailbox may carry it (a trailing dot allowed):
 * what HELO/EHLO must name */
int mailaddr_domain_is_valid(const char *s);
/* the unqualified local part "postmaster", any case (RFC 5321 §4.5.1) */
int mailaddr_is_postmaster(const struct mailaddr *a);

#endif
