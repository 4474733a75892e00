/*
 * sieve_regex.c - the regex match type (draft-ietf-sieve-regex) on PCRE2,
 * with a match limit and a depth limit so that a pathological expression
 * fails (a runtime error) instead of running away.
 *
 *   sv_regex_compile() / sv_regex_match() / sv_regex_free()
 *
 * A pattern is JIT-compiled when PCRE2 can (else interpreted); the JIT
 * honours the match limit, and its stack (not the depth limit) bounds
 * recursion: either way a runaway match is a -1. The match context and the
 * match data are one per thread, not made per match.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "rules/sieve_ast.h"
#include "common/xmalloc.h"

#define MAX_REGEX_MATCH_STEPS	100000
#define MAX_REGEX_DEPTH		1000

void *sv_regex_compile(const char *pat, int icase, const char **error_r)
{
	int ec;
	PCRE2_SIZE eo;
	static _Thread_local char buf[160];	/* runs may be concurrent */
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
	    (icase ? PCRE2_CASELESS : 0) | PCRE2_DOLLAR_ENDONLY, &ec, &eo, NULL);
	if (re == NULL) {
		pcre2_get_error_message(ec, (PCRE2_UCHAR *)buf, sizeof(buf));
		*error_r = buf;
		return NULL;
	}
	(void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);	/* else interpreted */
	return re;
}

/* one match context (the limits) and one match data per thread */
struct tl_match {
	pcre2_match_context *mc;
	pcre2_match_data *md;
};
static pthread_key_t tl_key;
static pthread_once_t tl_once = PTHREAD_ONCE_INIT;

static void tl_free(void *p)
{
	struct tl_match *t = p;
	pcre2_match_context_free(t->mc);
	pcre2_match_data_free(t->md);
	free(t);
}

static void tl_init(void)
{
	if (pthread_key_create(&tl_key, tl_free) != 0)
		abort();
}

static struct tl_match *tl_get(void)
{
	struct tl_match *t;
	pthread_once(&tl_once, tl_init);
	if ((t = pthread_getspecific(tl_key)) != NULL)
		return t;
	t = xcalloc(1, sizeof(*t));
	t->mc = pcre2_match_context_create(NULL);
	t->md = pcre2_match_data_create(SV_NCAPS, NULL);
	if (t->mc == NULL || t->md == NULL)
		abort();
	pcre2_set_match_limit(t->mc, MAX_REGEX_MATCH_STEPS);
	pcre2_set_depth_limit(t->mc, MAX_REGEX_DEPTH);
	if (pthread_setspecific(tl_key, t) != 0)
		abort();
	return t;
}

void sv_regex_free(void *re)
{
	pcre2_code_free(re);
}

int sv_regex_match(void *re, const char *s, size_t len, char **caps)
{
	struct tl_match *t = tl_get();
	pcre2_match_data *md = t->md;
	int rc = pcre2_match(re, (PCRE2_SPTR)s, len, 0, 0, md, t->mc);
	int ret;
	if (rc >= 0) {
		ret = 1;
		if (rc == 0)	/* more groups than the ovector: all of it is set */
			rc = SV_NCAPS;
		if (caps) {
			PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
			for (int k = 0; k < SV_NCAPS; k++) {
				free(caps[k]);
				caps[k] = NULL;
				if (k < rc && ov[2 * k] != PCRE2_UNSET)
					caps[k] = xstrndup(s + ov[2 * k], ov[2 * k + 1] - ov[2 * k]);
				else
					caps[k] = xstrdup("");
			}
		}
	} else if (rc == PCRE2_ERROR_NOMATCH) {
		ret = 0;
	} else {
		ret = -1;
	}
	return ret;
}
