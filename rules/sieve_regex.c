/*
 * sieve_regex.c - the regex match type (draft-ietf-sieve-regex) on PCRE2,
 * with a match limit and a depth limit so that a pathological expression
 * fails (a runtime error) instead of running away.
 *
 *   sv_regex_compile() / sv_regex_match() / sv_regex_free()
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
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
	}
	return re;
}

void sv_regex_free(void *re)
{
	pcre2_code_free(re);
}

int sv_regex_match(void *re, const char *s, size_t len, char **caps)
{
	pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
	pcre2_match_context *mc = pcre2_match_context_create(NULL);
	pcre2_set_match_limit(mc, MAX_REGEX_MATCH_STEPS);
	pcre2_set_depth_limit(mc, MAX_REGEX_DEPTH);
	int rc = pcre2_match(re, (PCRE2_SPTR)s, len, 0, 0, md, mc);
	int ret;
	if (rc >= 0) {
		ret = 1;
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
	pcre2_match_context_free(mc);
	pcre2_match_data_free(md);
	return ret;
}
