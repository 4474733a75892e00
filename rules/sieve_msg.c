/*
 * sieve_msg.c - the message a Sieve script looks at: header fields with
 * unfolded values (parsed by common/hdrparse), the body, the size, the
 * envelope and the environment items.
 *
 *   sieve_msg_new() / sieve_msg_parse() / sieve_msg_set_env() /
 *   sieve_msg_set_item() / sieve_msg_free()
 *
 * A door fills one from its own facts; tests parse a whole text.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "rules/sieve.h"
#include "common/hdrparse.h"
#include "common/xmalloc.h"

struct sieve_msg *sieve_msg_new(void)
{
	return xcalloc(1, sizeof(struct sieve_msg));
}

static int on_field(void *arg, const struct hdr_field *f)
{
	struct sieve_msg *m = arg;
	if (m->nhdr >= 10000)
		return 0;
	/* room for 16, then doubled (not a realloc per field); others may
	 * still grow it by one after the parse */
	if (m->nhdr == 0 || (m->nhdr >= 16 && (m->nhdr & (m->nhdr - 1)) == 0))
		m->hdr = xreallocarray(m->hdr, m->nhdr ? 2 * m->nhdr : 16, sizeof(*m->hdr));
	m->hdr[m->nhdr].name = xstrndup(f->name, f->name_len);
	/* values keep their folds' whitespace; trailing WSP dropped */
	size_t l = f->value_len;
	while (l > 0 && (f->value[l - 1] == ' ' || f->value[l - 1] == '\t'))
		l--;
	m->hdr[m->nhdr].value = xstrndup(f->value, l);
	m->nhdr++;
	return 0;
}

/* one parser per thread, reset for each message (it carries a 64 KB field
 * buffer: not allocated and cleared per message); its callback finds the
 * message being parsed in parse_cur */
static _Thread_local struct sieve_msg *parse_cur;
static pthread_key_t parse_key;
static pthread_once_t parse_once = PTHREAD_ONCE_INIT;

static int on_field_cur(void *arg, const struct hdr_field *f)
{
	(void)arg;
	return on_field(parse_cur, f);
}

static void parse_key_free(void *p)
{
	struct hdrparse *hp = p;
	hdrparse_free(&hp);
}

static void parse_key_init(void)
{
	if (pthread_key_create(&parse_key, parse_key_free) != 0)
		abort();
}

static struct hdrparse *thread_parser(void)
{
	struct hdrparse *hp;
	(void)pthread_once(&parse_once, parse_key_init);
	if ((hp = pthread_getspecific(parse_key)) != NULL) {
		hdrparse_reset(hp);
		return hp;
	}
	hp = hdrparse_new(on_field_cur, NULL);
	if (pthread_setspecific(parse_key, hp) != 0)
		abort();
	return hp;
}

struct sieve_msg *sieve_msg_parse(const char *text, size_t len)
{
	struct sieve_msg *m = sieve_msg_new();
	struct hdrparse *hp = thread_parser();
	int stop;
	parse_cur = m;
	long took = hdrparse_feed(hp, text, len, &stop);
	int has_body = hdrparse_done(hp);
	if (took >= 0 && !hdrparse_done(hp))
		(void)hdrparse_finish(hp, &stop);
	size_t off = has_body ? (size_t)hdrparse_body_offset(hp) : len;
	if (off > len)
		off = len;
	parse_cur = NULL;
	/* no empty line: no body at all (the body test then has nothing to match) */
	m->body = has_body ? xstrndup(text + off, len - off) : NULL;
	m->body_len = has_body ? len - off : 0;
	/* the octets as received (SMTP text is CRLF already); Pigeonhole's
	 * sieve-test counts a bare-LF file the same way */
	m->size = len;
	return m;
}

static void setp(char **p, const char *v)
{
	free(*p);
	*p = v ? xstrdup(v) : NULL;
}

void sieve_msg_set_env(struct sieve_msg *m, const char *name, const char *value)
{
	if (!strcmp(name, "from"))
		setp(&m->env_from, value);
	else if (!strcmp(name, "to"))
		setp(&m->env_to, value);
	else if (!strcmp(name, "orig_to"))
		setp(&m->env_orig_to, value);
	else if (!strcmp(name, "auth"))
		setp(&m->env_auth, value);
}

void sieve_msg_set_item(struct sieve_msg *m, const char *name, const char *value)
{
	for (size_t i = 0; i < m->nenv; i++)
		if (!strcmp(m->env_items[2 * i], name)) {
			setp(&m->env_items[2 * i + 1], value);
			return;
		}
	/* room for 8 items, then doubled (a door sets ~7 per message) */
	if (m->nenv == 0 || (m->nenv >= 8 && (m->nenv & (m->nenv - 1)) == 0))
		m->env_items = xreallocarray(m->env_items, 2 * (m->nenv ? 2 * m->nenv : 8),
		    sizeof(char *));
	m->env_items[2 * m->nenv] = xstrdup(name);
	m->env_items[2 * m->nenv + 1] = xstrdup(value);
	m->nenv++;
}

void sieve_msg_free(struct sieve_msg **mp)
{
	struct sieve_msg *m = *mp;
	if (m == NULL)
		return;
	sieve_msg_changed(m);
	for (size_t i = 0; i < m->nhdr; i++) {
		free(m->hdr[i].name);
		free(m->hdr[i].value);
	}
	free(m->hdr);
	free(m->body);
	free(m->env_from);
	free(m->env_to);
	free(m->env_orig_to);
	free(m->env_auth);
	for (size_t i = 0; i < 2 * m->nenv; i++)
		free(m->env_items[i]);
	free(m->env_items);
	free(m);
	*mp = NULL;
}
