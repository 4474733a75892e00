/*
 * sieve_vars.c - RFC 5229 variables: ${name} and ${N} expansion in strings,
 * the set modifiers, and global variables shared with included scripts
 * (RFC 6609 `global`, and the global. namespace).
 *
 *   sv_expand()      a fresh copy of s with its variables substituted
 *   sv_var_get/set   by name (case-insensitive)
 *   sv_set_modify()  :lower :upper :lowerfirst :upperfirst :quotewildcard :length
 *
 * Values are capped at SIEVE_MAX_VAR_SIZE, their count at SIEVE_MAX_VARIABLES.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "rules/sieve_eval.h"
#include "common/xmalloc.h"

void sv_vars_free(struct sv_vars *v)
{
	for (size_t i = 0; i < v->n; i++) {
		free(v->v[i].name);
		free(v->v[i].value);
	}
	free(v->v);
	v->v = NULL;
	v->n = 0;
}

static struct sv_var *find(struct sv_vars *v, const char *name)
{
	for (size_t i = 0; i < v->n; i++)
		if (strcasecmp(v->v[i].name, name) == 0)
			return &v->v[i];
	return NULL;
}

/* the table a name lives in: globals for global.X and declared globals */
static struct sv_vars *table(struct sieve_run *run, const char **name)
{
	if (strncasecmp(*name, "global.", 7) == 0) {
		*name += 7;
		return &run->globals;
	}
	struct sv_var *d = run->vars ? find(run->vars, *name) : NULL;
	if (d && d->value == NULL)
		return &run->globals;
	return run->vars;
}

const char *sv_var_get(struct sieve_run *run, const char *name)
{
	if (strchr(name, '.') && strncasecmp(name, "global.", 7) != 0) {
		/* another namespace: provided by the environment in the globals */
		struct sv_var *x = find(&run->globals, name);
		return x && x->value ? x->value : "";
	}
	struct sv_vars *t = table(run, &name);
	struct sv_var *x = t ? find(t, name) : NULL;
	return x && x->value ? x->value : "";
}

void sv_var_set(struct sieve_run *run, const char *name, const char *value)
{
	struct sv_vars *t = table(run, &name);
	if (t == NULL)
		return;
	struct sv_var *x = find(t, name);
	size_t l = strlen(value), max = run->limits.max_var_size;
	if (l > max) {
		l = max;
		/* never cut a UTF-8 character in two */
		while (l > 0 && ((unsigned char)value[l] & 0xc0) == 0x80)
			l--;
	}
	if (x == NULL) {
		if (t->n >= SIEVE_MAX_VARIABLES)
			return;
		t->v = xreallocarray(t->v, t->n + 1, sizeof(*t->v));
		x = &t->v[t->n++];
		x->name = xstrdup(name);
		x->value = NULL;
	}
	free(x->value);
	x->value = xstrndup(value, l);
}

/* declare name global in the current script */
void sv_var_declare_global(struct sieve_run *run, const char *name)
{
	struct sv_var *x = find(run->vars, name);
	if (x) {
		free(x->value);
		x->value = NULL;
		return;
	}
	run->vars->v = xreallocarray(run->vars->v, run->vars->n + 1, sizeof(struct sv_var));
	x = &run->vars->v[run->vars->n++];
	x->name = xstrdup(name);
	x->value = NULL;
}

static int name_ok(const char *s, size_t n, int *num_r)
{
	if (n == 0)
		return 0;
	if (isdigit((unsigned char)s[0])) {
		for (size_t i = 0; i < n; i++)
			if (!isdigit((unsigned char)s[i]))
				return 0;
		*num_r = 1;
		return 1;
	}
	*num_r = 0;
	int start = 1;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (start) {
			if (!(isalpha(c) || c == '_'))
				return 0;
			start = 0;
		} else if (c == '.') {
			start = 1;
		} else if (!(isalnum(c) || c == '_')) {
			return 0;
		}
	}
	return !start;
}

char *sv_expand(struct sieve_run *run, const char *s)
{
	if (!run->script->uses_vars || strstr(s, "${") == NULL)
		return xstrdup(s);
	size_t cap = strlen(s) + 64, n = 0;
	char *o = xmalloc(cap);
	const char *p = s;
	while (*p) {
		const char *val = NULL;
		size_t skip = 0;
		if (p[0] == '$' && p[1] == '{') {
			const char *e = strchr(p + 2, '}');
			int num;
			if (e && name_ok(p + 2, (size_t)(e - p - 2), &num)) {
				char name[256];
				size_t nl = (size_t)(e - p - 2);
				if (nl < sizeof(name)) {
					memcpy(name, p + 2, nl);
					name[nl] = '\0';
					if (num) {
						unsigned long k = strtoul(name, NULL, 10);
						val = k < SV_NCAPS && run->caps[k] ? run->caps[k] : "";
					} else {
						val = sv_var_get(run, name);
					}
					skip = nl + 3;
				}
			}
		}
		if (val) {
			size_t vl = strlen(val);
			if (n + vl + 1 > cap) {
				cap = (n + vl + 1) * 2;
				o = xrealloc(o, cap);
			}
			memcpy(o + n, val, vl);
			n += vl;
			p += skip;
		} else {
			if (n + 2 > cap) {
				cap *= 2;
				o = xrealloc(o, cap);
			}
			o[n++] = *p++;
		}
		if (n >= SIEVE_MAX_STRING)
			break;	/* an expansion is a string: the same cap */
	}
	if (n > SIEVE_MAX_STRING)
		n = SIEVE_MAX_STRING;
	o[n] = '\0';
	run->steps += n / 64;	/* expansions cost CPU too */
	return o;
}

static size_t u8_count(const char *s)
{
	size_t n = 0;
	for (; *s; s++)
		if (((unsigned char)*s & 0xc0) != 0x80)
			n++;
	return n;
}

char *sv_set_modify(const struct sieve_node *n, const char *value)
{
	char *v = xstrdup(value);
	/* precedence: 40 lower/upper, 30 lowerfirst/upperfirst, 20 quote, 10 length */
	if (n->tagset[0])
		for (char *p = v; *p; p++) *p = (char)tolower((unsigned char)*p);
	if (n->tagset[1])
		for (char *p = v; *p; p++) *p = (char)toupper((unsigned char)*p);
	if (n->tagset[2] && v[0])
		v[0] = (char)tolower((unsigned char)v[0]);
	if (n->tagset[3] && v[0])
		v[0] = (char)toupper((unsigned char)v[0]);
	if (n->tagset[4] || n->tagset[6]) {
		const char *special = n->tagset[6] ? "*?\\.+^$()[]{}|" : "*?\\";
		char *q = xmalloc(2 * strlen(v) + 1), *o = q;
		for (const char *p = v; *p; p++) {
			if (strchr(special, *p))
				*o++ = '\\';
			*o++ = *p;
		}
		*o = '\0';
		free(v);
		v = q;
	}
	if (n->tagset[5]) {
		char buf[32];
		snprintf(buf, sizeof(buf), "%zu", u8_count(v));
		free(v);
		v = xstrdup(buf);
	}
	return v;
}
