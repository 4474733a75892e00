/*
 * conf - Postfix main.cf-style configuration.
 *
 *   conf_new()            every key at its default (conf_keys.c)
 *   conf_load_file()      "key = value" lines; '#' comments; a line starting
 *                         with white space continues the previous one
 *   conf_set_override()   "-o key=value"
 *   conf_finish()         expand $name / ${name} ($$ is a dollar), type-check,
 *                         then the key's rows of conf_validators[] (conf_check.c)
 *   conf_get*()           typed reads after conf_finish()
 *   conf_print()          like postconf / postconf -n
 *
 * Errors name FILE:LINE and what is wrong. Unknown keys are errors: a typo
 * must not silently leave a default in force. Not thread-safe until finished.
 */
#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/conf.h"
#include "common/log.h"
#include "common/pclimits.h"
#include "common/xmalloc.h"

struct conf {
	size_t n;
	char **raw;		/* as written (or default) */
	char **value;		/* expanded, after conf_finish() */
	char **where;		/* NULL: default */
	char err[512];
	int finished;
};

static size_t
conf_nkeys(void)
{
	size_t n = 0;

	while (conf_keys[n].name != NULL)
		n++;
	return n;
}

static int
conf_index(const char *name, size_t len)
{
	for (size_t i = 0; conf_keys[i].name != NULL; i++)
		if (strlen(conf_keys[i].name) == len &&
		    strncmp(conf_keys[i].name, name, len) == 0)
			return (int)i;
	return -1;
}

struct conf *
conf_new(void)
{
	struct conf *c = xcalloc(1, sizeof(*c));

	c->n = conf_nkeys();
	c->raw = xcalloc(c->n, sizeof(char *));
	c->value = xcalloc(c->n, sizeof(char *));
	c->where = xcalloc(c->n, sizeof(char *));
	for (size_t i = 0; i < c->n; i++) {
		if (strcmp(conf_keys[i].name, "myhostname") == 0 && conf_keys[i].def[0] == '\0') {
			char host[256] = "localhost";

			/* like Postfix: the machine's own name unless set */
			if (gethostname(host, sizeof(host) - 1) < 0 || host[0] == '\0')
				strcpy(host, "localhost");
			host[sizeof(host) - 1] = '\0';
			c->raw[i] = xstrdup(host);
			continue;
		}
		c->raw[i] = xstrdup(conf_keys[i].def);
	}
	return c;
}

void
conf_free(struct conf **cp)
{
	struct conf *c = *cp;

	if (c == NULL)
		return;
	for (size_t i = 0; i < c->n; i++) {
		free(c->raw[i]);
		free(c->value[i]);
		free(c->where[i]);
	}
	free(c->raw);
	free(c->value);
	free(c->where);
	free(c);
	*cp = NULL;
}

static int
conf_fail(struct conf *c, const char **error_r, const char *where,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static char **conf_get_list_unchecked(const struct conf *c, int idx, size_t *n_r);

static int
conf_fail(struct conf *c, const char **error_r, const char *where, const char *fmt, ...)
{
	va_list ap;
	int n = snprintf(c->err, sizeof(c->err), "%s: ", where);

	va_start(ap, fmt);
	vsnprintf(c->err + n, sizeof(c->err) - (size_t)n, fmt, ap);
	va_end(ap);
	*error_r = c->err;
	return -1;
}

static void
trim_right(char *s)
{
	size_t n = strlen(s);

	while (n > 0 && isspace((unsigned char)s[n - 1]))
		s[--n] = '\0';
}

/* one logical line "name = value" */
static int
conf_assign(struct conf *c, char *line, const char *where, const char **error_r)
{
	char *p = line, *name = line, *value;
	size_t namelen;
	int idx;

	while (*p == '_' || isalnum((unsigned char)*p))
		p++;
	namelen = (size_t)(p - name);
	if (namelen == 0)
		return conf_fail(c, error_r, where, "expected 'name = value'");
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p != '=')
		return conf_fail(c, error_r, where,
		    "missing '=' after parameter name \"%.*s\"", (int)namelen, name);
	value = p + 1;
	while (isspace((unsigned char)*value))
		value++;
	trim_right(value);
	idx = conf_index(name, namelen);
	if (idx < 0)
		return conf_fail(c, error_r, where, "unknown parameter \"%.*s\"",
		    (int)namelen > 64 ? 64 : (int)namelen, name);
	free(c->raw[idx]);
	free(c->where[idx]);
	c->raw[idx] = xstrdup(value);
	c->where[idx] = xstrdup(where);
	return 0;
}

int
conf_load_string(struct conf *c, const char *name, const char *text,
    const char **error_r)
{
	char *logical = xmalloc(MAX_CONF_LINE + 1);
	size_t llen = 0;
	unsigned lineno = 0, startline = 0;
	const char *p = text;
	char where[512];
	int have = 0, rc = 0;

	while (*p != '\0') {
		const char *eol = strchr(p, '\n');
		size_t len = eol ? (size_t)(eol - p) : strlen(p);
		const char *next = eol ? eol + 1 : p + len;
		const char *q = p;

		lineno++;
		if (len > 0 && p[len - 1] == '\r')
			len--;
		while (q < p + len && isspace((unsigned char)*q))
			q++;
		if (q == p + len || *q == '#') {	/* blank or comment */
			p = next;
			continue;
		}
		snprintf(where, sizeof(where), "%s:%u", name, lineno);
		if (*p == ' ' || *p == '\t') {
			size_t add = (size_t)(p + len - q);

			if (!have) {
				rc = conf_fail(c, error_r, where,
				    "continuation line (starts with white space) with nothing to continue");
				break;
			}
			if (llen + 1 + add > MAX_CONF_LINE) {
				rc = conf_fail(c, error_r, where,
				    "logical line longer than %d bytes", MAX_CONF_LINE);
				break;
			}
			logical[llen++] = ' ';
			memcpy(logical + llen, q, add);
			llen += add;
		} else {
			if (have) {
				char w[512];

				logical[llen] = '\0';
				snprintf(w, sizeof(w), "%s:%u", name, startline);
				if ((rc = conf_assign(c, logical, w, error_r)) < 0)
					break;
			}
			if (len > MAX_CONF_LINE) {
				rc = conf_fail(c, error_r, where, "line longer than %d bytes",
				    MAX_CONF_LINE);
				break;
			}
			memcpy(logical, p, len);
			llen = len;
			have = 1;
			startline = lineno;
		}
		p = next;
	}
	if (rc == 0 && have) {
		logical[llen] = '\0';
		snprintf(where, sizeof(where), "%s:%u", name, startline);
		rc = conf_assign(c, logical, where, error_r);
	}
	free(logical);
	return rc;
}

int
conf_load_file(struct conf *c, const char *path, const char **error_r)
{
	FILE *fp = fopen(path, "r");
	char *buf;
	size_t n;
	int rc;

	if (fp == NULL)
		return conf_fail(c, error_r, path, "cannot open: %s", strerror(errno));
	buf = xmalloc(1024 * 1024 + 1);
	n = fread(buf, 1, 1024 * 1024 + 1, fp);
	if (ferror(fp)) {
		fclose(fp);
		free(buf);
		return conf_fail(c, error_r, path, "read error: %s", strerror(errno));
	}
	fclose(fp);
	if (n > 1024 * 1024) {
		free(buf);
		return conf_fail(c, error_r, path, "larger than 1 MiB");
	}
	buf[n] = '\0';
	if (strlen(buf) != n) {
		free(buf);
		return conf_fail(c, error_r, path, "contains a NUL byte");
	}
	rc = conf_load_string(c, path, buf, error_r);
	free(buf);
	return rc;
}

int
conf_set_override(struct conf *c, const char *kv, const char **error_r)
{
	char *line = xstrdup(kv);
	int rc;

	rc = conf_assign(c, line, "-o", error_r);
	free(line);
	return rc;
}

/* expand $name, ${name} and $$ in raw[idx] */
static int
conf_expand(struct conf *c, int idx, int depth, char **out_r, const char **error_r)
{
	const char *where = c->where[idx] ? c->where[idx] : "default";
	const char *s = c->raw[idx];
	size_t cap = strlen(s) + 64, len = 0;
	char *out = xmalloc(cap);

	if (depth > MAX_CONF_EXPAND_DEPTH) {
		free(out);
		return conf_fail(c, error_r, where, "%s: $name expansion loops",
		    conf_keys[idx].name);
	}
	while (*s != '\0') {
		const char *piece = s;
		size_t plen = 1;
		char *sub = NULL;

		if (*s == '$') {
			const char *nstart, *nend;

			if (s[1] == '$') {
				piece = "$";
				s += 2;
				goto append;
			}
			if (s[1] == '{') {
				nstart = s + 2;
				nend = strchr(nstart, '}');
				if (nend == NULL) {
					free(out);
					return conf_fail(c, error_r, where,
					    "%s: missing '}' after \"${\"", conf_keys[idx].name);
				}
				s = nend + 1;
			} else {
				nstart = s + 1;
				nend = nstart;
				while (*nend == '_' || isalnum((unsigned char)*nend))
					nend++;
				if (nend == nstart) {
					free(out);
					return conf_fail(c, error_r, where,
					    "%s: '$' not followed by a parameter name (write $$ for a dollar)",
					    conf_keys[idx].name);
				}
				s = nend;
			}
			int ref = conf_index(nstart, (size_t)(nend - nstart));

			if (ref < 0) {
				free(out);
				return conf_fail(c, error_r, where,
				    "%s: $%.*s is not a known parameter", conf_keys[idx].name,
				    (int)(nend - nstart) > 64 ? 64 : (int)(nend - nstart), nstart);
			}
			if (conf_expand(c, ref, depth + 1, &sub, error_r) < 0) {
				free(out);
				return -1;
			}
			piece = sub;
			plen = strlen(sub);
		} else {
			s++;
		}
append:
		if (piece[0] == '$' && piece[1] == '\0')
			plen = 1;
		if (len + plen + 1 > cap) {
			cap = (len + plen + 1) * 2;
			out = xrealloc(out, cap);
		}
		memcpy(out + len, piece, plen);
		len += plen;
		free(sub);
		if (len > MAX_CONF_LINE * 4) {
			free(out);
			return conf_fail(c, error_r, where, "%s: value too long after expansion",
			    conf_keys[idx].name);
		}
	}
	out[len] = '\0';
	*out_r = out;
	return 0;
}

int
conf_parse_time(const char *s, long *secs_r)
{
	char *end;
	long v, mult = 1;

	if (!isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || v < 0)
		return -1;
	switch (*end) {
	case '\0': case 's': mult = 1; break;
	case 'm': mult = 60; break;
	case 'h': mult = 3600; break;
	case 'd': mult = 86400; break;
	case 'w': mult = 7 * 86400; break;
	default: return -1;
	}
	if (*end != '\0' && end[1] != '\0')
		return -1;
	if (v > 0 && mult > 0 && v > 3153600000L / mult)
		return -1;
	*secs_r = v * mult;
	return 0;
}

/* the rows of conf_validators[] for key idx; errors quote the item at fault */
static int
conf_validate(struct conf *c, int idx, const char **error_r)
{
	const struct conf_key *k = &conf_keys[idx];
	const char *where = c->where[idx] ? c->where[idx] : "default";
	char esc[4 * MAX_LOG_ESCAPED + 8];

	for (const struct conf_validator *v = conf_validators; v->name != NULL; v++) {
		const char *why = "invalid";

		if (strcmp(v->name, k->name) != 0)
			continue;
		if (!v->each_item) {
			if (v->check(c->value[idx], &why) < 0)
				return conf_fail(c, error_r, where, "%s: \"%s\": %s", k->name,
				    log_escape(esc, c->value[idx], strlen(c->value[idx])), why);
			continue;
		}
		size_t n;
		char **items = conf_get_list_unchecked(c, idx, &n);

		for (size_t i = 0; i < n; i++)
			if (v->check(items[i], &why) < 0) {
				conf_fail(c, error_r, where, "%s: \"%s\": %s", k->name,
				    log_escape(esc, items[i], strlen(items[i])), why);
				conf_list_free(items);
				return -1;
			}
		conf_list_free(items);
	}
	return 0;
}

static int
conf_check(struct conf *c, int idx, const char **error_r)
{
	const struct conf_key *k = &conf_keys[idx];
	const char *v = c->value[idx];
	const char *where = c->where[idx] ? c->where[idx] : "default";
	char *end;
	long n;

	switch (k->type) {
	case CT_BOOL:
		if (strcmp(v, "yes") != 0 && strcmp(v, "no") != 0)
			return conf_fail(c, error_r, where, "%s: \"%.64s\" is not yes or no",
			    k->name, v);
		break;
	case CT_INT:
		errno = 0;
		n = strtol(v, &end, 10);
		if (*v == '\0' || *end != '\0' || errno != 0)
			return conf_fail(c, error_r, where, "%s: \"%.64s\" is not a number",
			    k->name, v);
		if (n < k->min || n > k->max)
			return conf_fail(c, error_r, where, "%s: %ld is out of range %ld..%ld",
			    k->name, n, k->min, k->max);
		break;
	case CT_TIME:
		if (conf_parse_time(v, &n) < 0)
			return conf_fail(c, error_r, where,
			    "%s: \"%.64s\" is not a time (e.g. 3600, 60s, 10m, 1h, 7d)", k->name, v);
		if (n < k->min || n > k->max)
			return conf_fail(c, error_r, where, "%s: %ld seconds is out of range",
			    k->name, n);
		break;
	case CT_ENUM: {
		const char *p = k->enum_values;
		size_t vl = strlen(v);

		for (;;) {
			const char *bar = strchr(p, '|');
			size_t l = bar ? (size_t)(bar - p) : strlen(p);

			if (l == vl && strncmp(p, v, l) == 0)
				break;
			if (bar == NULL)
				return conf_fail(c, error_r, where,
				    "%s: \"%.64s\" is not one of %s", k->name, v, k->enum_values);
			p = bar + 1;
		}
		break;
	}
	case CT_STR:
	case CT_LIST:
		break;
	}
	return conf_validate(c, idx, error_r);
}

int
conf_finish(struct conf *c, const char **error_r)
{
	for (size_t i = 0; i < c->n; i++) {
		free(c->value[i]);
		c->value[i] = NULL;
		if (conf_expand(c, (int)i, 0, &c->value[i], error_r) < 0)
			return -1;
	}
	for (size_t i = 0; i < c->n; i++)
		if (conf_check(c, (int)i, error_r) < 0)
			return -1;
	c->finished = 1;
	return 0;
}

static int
conf_must(const struct conf *c, const char *name)
{
	int idx = conf_index(name, strlen(name));

	if (idx < 0 || !c->finished)
		panic("conf_get: %s parameter \"%s\"", idx < 0 ? "unknown" : "unfinished", name);
	return idx;
}

const char *
conf_get(const struct conf *c, const char *name)
{
	return c->value[conf_must(c, name)];
}

int
conf_get_bool(const struct conf *c, const char *name)
{
	return strcmp(conf_get(c, name), "yes") == 0;
}

long
conf_get_int(const struct conf *c, const char *name)
{
	int idx = conf_must(c, name);
	long v = 0;

	if (conf_keys[idx].type == CT_TIME) {
		if (conf_parse_time(c->value[idx], &v) < 0)
			panic("conf_get_int: %s unchecked", name);
		return v;
	}
	return strtol(c->value[idx], NULL, 10);
}

char **
conf_get_list(const struct conf *c, const char *name, size_t *n_r)
{
	return conf_get_list_unchecked(c, conf_must(c, name), n_r);
}

static char **
conf_get_list_unchecked(const struct conf *c, int idx, size_t *n_r)
{
	const char *s = c->value[idx];
	size_t cap = 8, n = 0;
	char **v = xcalloc(cap, sizeof(char *));

	while (*s != '\0') {
		size_t l;

		while (*s == ',' || isspace((unsigned char)*s))
			s++;
		if (*s == '\0')
			break;
		l = strcspn(s, ", \t\r\n");
		if (n + 2 > cap) {
			cap *= 2;
			v = xreallocarray(v, cap, sizeof(char *));
		}
		v[n++] = xstrndup(s, l);
		s += l;
	}
	v[n] = NULL;
	*n_r = n;
	return v;
}

void
conf_list_free(char **list)
{
	if (list == NULL)
		return;
	for (char **p = list; *p != NULL; p++)
		free(*p);
	free(list);
}

const char *
conf_where(const struct conf *c, const char *name)
{
	int idx = conf_must(c, name);

	return c->where[idx] ? c->where[idx] : "default";
}

void
conf_print(const struct conf *c, FILE *fp, int only_set)
{
	for (size_t i = 0; i < c->n; i++) {
		if (only_set && (c->where[i] == NULL ||
		    (strcmp(c->raw[i], conf_keys[i].def) == 0 && conf_keys[i].def[0] != '\0')))
			continue;
		fprintf(fp, "%s = %s\n", conf_keys[i].name, c->raw[i]);
	}
}
