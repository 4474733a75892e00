/*
 * sieve_result.c - the action list of a run, with Pigeonhole's rules:
 * duplicate keep/fileinto (same folder) and redirect (same address) collapse,
 * reject/ereject conflicts with anything that delivers, a second reject or
 * vacation is an error, the action and redirect limits, and the implicit
 * keep (cancelled by fileinto, redirect without :copy, discard, reject).
 *
 *   sv_result_add()      one action, checked: 0 added, 1 merged into an earlier
 *                        one (or dropped), -1 with a runtime error
 *   sieve_result_free()  sieve_action_name()
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "rules/sieve_eval.h"
#include "common/xmalloc.h"

const char *sieve_action_name(const struct sieve_action *a)
{
	switch (a->type) {
	case SIEVE_A_KEEP: return "keep";
	case SIEVE_A_FILEINTO: return "store";
	case SIEVE_A_REDIRECT: return "redirect";
	case SIEVE_A_DISCARD: return "discard";
	case SIEVE_A_REJECT: return "reject";
	case SIEVE_A_EREJECT: return "ereject";
	case SIEVE_A_VACATION: return "vacation";
	case SIEVE_A_ADDHEADER: return "addheader";
	case SIEVE_A_DELETEHEADER: return "deleteheader";
	}
	return "?";
}

void sieve_headers_free(struct sieve_header **hp, size_t n)
{
	struct sieve_header *h = *hp;
	if (h == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		free(h[i].name);
		free(h[i].value);
	}
	free(h);
	*hp = NULL;
}

static struct sieve_header *hdr_copy(const struct sieve_header *h, size_t n)
{
	struct sieve_header *c = xcalloc(n + 1, sizeof(*c));
	for (size_t i = 0; i < n; i++) {
		c[i].name = xstrdup(h[i].name);
		c[i].value = xstrdup(h[i].value);
	}
	return c;
}

void sv_result_snapshot(struct sieve_run *run, struct sieve_header **h_r, size_t *n_r)
{
	sieve_headers_free(h_r, *n_r);
	*n_r = 0;
	if (!run->hdr_edited)
		return;
	*h_r = hdr_copy(run->hdr, run->nhdr);
	*n_r = run->nhdr;
}

void sv_action_clear(struct sieve_action *a)
{
	sieve_headers_free(&a->hdr, a->nhdr);
	free(a->target);
	free(a->value);
	sieve_strv_free(a->flags, a->nflags);
	free(a->from);
	free(a->handle);
	free(a->mime_from);
	sieve_strv_free(a->addresses, a->naddresses);
	memset(a, 0, sizeof(*a));
}

void sieve_result_free(struct sieve_result **rp)
{
	struct sieve_result *r = *rp;
	if (r == NULL)
		return;
	for (size_t i = 0; i < r->n; i++)
		sv_action_clear(&r->a[i]);
	free(r->a);
	sieve_strv_free(r->keep_flags, r->nkeep_flags);
	sieve_headers_free(&r->keep_hdr, r->keep_nhdr);
	free(r);
	*rp = NULL;
}

static int is_store(const struct sieve_action *a)
{
	return a->type == SIEVE_A_KEEP || a->type == SIEVE_A_FILEINTO;
}

static const char *store_box(const struct sieve_action *a)
{
	return a->type == SIEVE_A_KEEP ? "INBOX" : a->target;
}

static int same_box(const char *a, const char *b)
{
	/* INBOX is case-insensitive (RFC 3501), other names are not */
	if (strcasecmp(a, "INBOX") == 0 && strcasecmp(b, "INBOX") == 0)
		return 1;
	return strcmp(a, b) == 0;
}

static int delivers(const struct sieve_action *a)
{
	return a->type == SIEVE_A_KEEP || a->type == SIEVE_A_FILEINTO ||
	    a->type == SIEVE_A_REDIRECT;
}

static int is_reject(const struct sieve_action *a)
{
	return a->type == SIEVE_A_REJECT || a->type == SIEVE_A_EREJECT;
}

/* a: the new action, owned by the result on success, cleared on failure */
int sv_result_add(struct sieve_run *run, struct sieve_action *a)
{
	struct sieve_result *r = run->res;
	for (size_t i = 0; i < r->n; i++) {
		struct sieve_action *o = &r->a[i];
		if (o->executed && is_reject(a) && is_reject(o)) {
			sv_action_clear(a);	/* already refused once: a second is moot */
			return 1;
		}
		if (o->executed && (is_reject(a) || is_reject(o)))
			continue;	/* what is done is done: no conflict, no merge */
		if (is_reject(a) && is_reject(o)) {
			sv_runtime_error(run, a->line, "duplicate reject/ereject action not allowed "
			    "(previously triggered one was here: line %u)", o->line);
			goto fail;
		}
		if (is_reject(a) && delivers(o) && !o->implicit) {
			sv_runtime_error(run, a->line, "reject action conflicts with other action: "
			    "the %s action (line %u) tries to deliver the message", sieve_action_name(o),
			    o->line);
			goto fail;
		}
		if (is_reject(o) && delivers(a)) {
			sv_runtime_error(run, a->line, "%s action conflicts with other action: the "
			    "reject action (line %u) rejects the message", sieve_action_name(a), o->line);
			goto fail;
		}
		if ((a->type == SIEVE_A_VACATION && is_reject(o)) ||
		    (is_reject(a) && o->type == SIEVE_A_VACATION)) {
			sv_runtime_error(run, a->line, "%s action conflicts with other action: the %s "
			    "action (line %u) also sends a response to the sender", sieve_action_name(a),
			    sieve_action_name(o), o->line);
			goto fail;
		}
		if (a->type == SIEVE_A_VACATION && o->type == SIEVE_A_VACATION) {
			sv_runtime_error(run, a->line, "duplicate vacation action not allowed "
			    "(previously triggered one was here: line %u)", o->line);
			goto fail;
		}
		if (is_store(a) && is_store(o) && same_box(store_box(a), store_box(o))) {
			/* the later one's flags win; :copy-less wins over :copy */
			if (a->nflags || a->flags) {
				sieve_strv_free(o->flags, o->nflags);
				o->flags = a->flags;
				o->nflags = a->nflags;
				a->flags = NULL;
				a->nflags = 0;
			}
			if (a->type == SIEVE_A_KEEP)
				o->type = SIEVE_A_KEEP;	/* keep names the INBOX store */
			sv_action_clear(a);
			return 1;
		}
		if (a->type == SIEVE_A_REDIRECT && o->type == SIEVE_A_REDIRECT &&
		    strcasecmp(a->target, o->target) == 0) {
			sv_action_clear(a);
			return 1;
		}
		if (a->type == SIEVE_A_DISCARD && o->type == SIEVE_A_DISCARD) {
			sv_action_clear(a);
			return 1;
		}
	}
	size_t max = run->limits.max_actions;
	if (r->n >= max) {
		sv_runtime_error(run, a->line, "total number of actions exceeds policy limit "
		    "(%zu > %zu)", r->n + 1, max);
		goto fail;
	}
	if (a->type == SIEVE_A_REDIRECT) {
		size_t nr = 0;
		for (size_t i = 0; i < r->n; i++)
			nr += r->a[i].type == SIEVE_A_REDIRECT;
		if (nr >= run->limits.max_redirects) {
			sv_runtime_error(run, a->line, "number of redirect actions exceeds policy "
			    "limit (%zu > %u)", nr + 1, run->limits.max_redirects);
			goto fail;
		}
	}
	if (delivers(a))
		sv_result_snapshot(run, &a->hdr, &a->nhdr);
	r->a = xreallocarray(r->a, r->n + 1, sizeof(*r->a));
	r->a[r->n++] = *a;
	memset(a, 0, sizeof(*a));
	return 0;
fail:
	sv_action_clear(a);
	return -1;
}

