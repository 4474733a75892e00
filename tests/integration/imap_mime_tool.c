/*
 * imap-mime-tool: imap_mime and imap_search on message files, printing what
 * an IMAP server built on them would send, for the differential test
 * against Dovecot (tests/integration/test_imap_mime_dovecot.py) and for
 * measuring (time, peak memory).
 *
 *   imap-mime-tool fetch FILE ATT...
 *       each ATT a FETCH attribute as a client writes it (ENVELOPE,
 *       BODY.PEEK[1.2]<0.10>, "BODY[HEADER.FIELDS (From To)]", RFC822.SIZE):
 *       prints "<n>\n" then the n bytes of its value, as in "* 1 FETCH (ATT value)"
 *   imap-mime-tool search MAILDIR KEYS
 *       the messages of MAILDIR/cur in file-name order (UID = position),
 *       flags from the names, keywords from dovecot-keywords, internal date
 *       = mtime, all \Recent; prints "* SEARCH n n ...\r\n" or the NO text
 *   imap-mime-tool bench FILE N
 *       N times open + ENVELOPE + BODYSTRUCTURE; prints microseconds per message
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/xmalloc.h"
#include "pop-imap-proxy/imap_mime.h"
#include "pop-imap-proxy/imap_parser.h"
#include "pop-imap-proxy/imap_search.h"
#include "storage-adapter/mailstore.h"

static const struct imap_cmd *
parse_cmd(struct imap_parser **pp, const char *line)
{
	struct imap_parser_limits lim;
	struct imap_event ev;
	size_t len = strlen(line), off = 0;

	imap_parser_limits_default(&lim, 1);
	*pp = imap_parser_new(&lim);
	while (off < len) {
		off += imap_parser_feed(*pp, line + off, len - off, &ev);
		if (ev.type == IMAP_EV_COMMAND)
			return ev.cmd;
		if (ev.type == IMAP_EV_REPLY || ev.type == IMAP_EV_DISCONNECT) {
			fprintf(stderr, "parse: %s", ev.reply);
			return NULL;
		}
	}
	return NULL;
}

static int
open_msg(const char *path, struct imap_mime **m_r)
{
	int fd = open(path, O_RDONLY);
	struct stat st;
	const char *err;

	if (fd < 0 || fstat(fd, &st) < 0) {
		perror(path);
		return -1;
	}
	int r = imap_mime_open(fd, (uint64_t)st.st_size, m_r, &err);
	close(fd);
	if (r < 0)
		fprintf(stderr, "%s: %s\n", path, err);
	return r;
}

static void
out(const char *p, size_t n)
{
	printf("%zu\n", n);
	fwrite(p, 1, n, stdout);
	printf("\n");
}

static int
cmd_fetch(const char *path, char **atts, int n)
{
	struct imap_mime *m;

	if (open_msg(path, &m) < 0)
		return 1;
	for (int i = 0; i < n; i++) {
		char line[4096];
		struct imap_parser *p;
		snprintf(line, sizeof(line), "t FETCH 1 (%s)\r\n", atts[i]);
		const struct imap_cmd *c = parse_cmd(&p, line);
		if (c == NULL || c->nfetch != 1) {
			fprintf(stderr, "bad attribute: %s\n", atts[i]);
			imap_parser_free(&p);
			imap_mime_free(&m);
			return 1;
		}
		const struct imap_fetch_att *a = &c->fetch[0];
		char *s = NULL;
		size_t len = 0;
		switch (a->kind) {
		case IMAP_FETCH_ENVELOPE:
			s = imap_mime_envelope(m, &len);
			break;
		case IMAP_FETCH_BODYSTRUCTURE:
			s = imap_mime_bodystructure(m, 1, &len);
			break;
		case IMAP_FETCH_BODY:
			s = imap_mime_bodystructure(m, 0, &len);
			break;
		case IMAP_FETCH_RFC822_SIZE:
			s = xasprintf("%llu", (unsigned long long)imap_mime_vsize(m));
			len = strlen(s);
			break;
		case IMAP_FETCH_SECTION:
		case IMAP_FETCH_RFC822:
		case IMAP_FETCH_RFC822_HEADER:
		case IMAP_FETCH_RFC822_TEXT: {
			struct imap_mime_section sec;
			if (imap_mime_section(m, a, &sec) < 0) {
				s = xstrdup("NIL");
				len = 3;
				break;
			}
			char head[64];
			int hl = snprintf(head, sizeof(head), "{%llu}\r\n", (unsigned long long)sec.size);
			s = xmalloc(hl + sec.size + 1);
			memcpy(s, head, hl);
			size_t got = 0;
			while (got < sec.size) {
				size_t k = imap_mime_section_read(m, &sec, got, s + hl + got,
				    sec.size - got > 4096 ? 4096 : sec.size - got);
				if (k == 0)
					break;
				got += k;
			}
			len = hl + got;
			imap_mime_section_deinit(&sec);
			break;
		}
		default:
			fprintf(stderr, "unsupported attribute: %s\n", atts[i]);
			imap_parser_free(&p);
			imap_mime_free(&m);
			return 1;
		}
		out(s, len);
		free(s);
		imap_parser_free(&p);
	}
	imap_mime_free(&m);
	return 0;
}

struct smsg {
	char *path;
	struct mailstore_msg msg;
	time_t mtime;
	struct imap_mime *m;
};

static int
s_date(void *ctx, time_t *t)
{
	*t = ((struct smsg *)ctx)->mtime;
	return 0;
}

static int
s_open(void *ctx, struct imap_mime **m_r)
{
	struct smsg *s = ctx;

	if (s->m == NULL && open_msg(s->path, &s->m) < 0)
		return -1;
	*m_r = s->m;
	return 0;
}

static int
name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int
cmd_search(const char *dir, const char *keys)
{
	char path[4096];
	char *kw[26] = { 0 };
	char **names = NULL;
	size_t n = 0;

	snprintf(path, sizeof(path), "%s/dovecot-keywords", dir);
	FILE *f = fopen(path, "r");
	if (f != NULL) {
		char line[256];
		while (fgets(line, sizeof(line), f)) {
			unsigned idx;
			char name[200];
			if (sscanf(line, "%u %199s", &idx, name) == 2 && idx < 26)
				kw[idx] = xstrdup(name);
		}
		fclose(f);
	}
	snprintf(path, sizeof(path), "%s/cur", dir);
	DIR *d = opendir(path);
	if (d == NULL) {
		perror(path);
		return 1;
	}
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		names = xreallocarray(names, n + 1, sizeof(*names));
		names[n++] = xstrdup(de->d_name);
	}
	closedir(d);
	if (n > 0)
		qsort(names, n, sizeof(*names), name_cmp);

	char line[8192];
	struct imap_parser *p;
	snprintf(line, sizeof(line), "t SEARCH %s\r\n", keys);
	const struct imap_cmd *c = parse_cmd(&p, line);
	if (c == NULL)
		return 1;
	const char *err;
	if (imap_search_charset_check(c->charset, &err) < 0) {
		printf("t NO %s\r\n", err);
		imap_parser_free(&p);
		for (size_t i = 0; i < n; i++)
			free(names[i]);
		free(names);
		for (int i = 0; i < 26; i++)
			free(kw[i]);
		return 0;
	}
	printf("* SEARCH");
	for (size_t i = 0; i < n; i++) {
		struct smsg s;
		struct stat st;
		memset(&s, 0, sizeof(s));
		s.path = xasprintf("%s/cur/%s", dir, names[i]);
		if (stat(s.path, &st) < 0)
			return 1;
		s.mtime = st.st_mtime;
		s.msg.uid = (uint32_t)i + 1;
		s.msg.size = (uint64_t)st.st_size;
		s.msg.recent = 1;
		const char *info = strstr(names[i], ":2,");
		for (const char *q = info ? info + 3 : ""; *q; q++) {
			switch (*q) {
			case 'R': s.msg.flags |= MAILSTORE_ANSWERED; break;
			case 'F': s.msg.flags |= MAILSTORE_FLAGGED; break;
			case 'T': s.msg.flags |= MAILSTORE_DELETED; break;
			case 'S': s.msg.flags |= MAILSTORE_SEEN; break;
			case 'D': s.msg.flags |= MAILSTORE_DRAFT; break;
			default:
				if (*q >= 'a' && *q <= 'z')
					s.msg.keywords |= 1u << (*q - 'a');
			}
		}
		struct imap_mime *vm;
		if (open_msg(s.path, &vm) < 0)
			return 1;
		s.msg.vsize = imap_mime_vsize(vm);
		imap_mime_free(&vm);
		struct imap_search_input in = {
			.msg = &s.msg, .seq = (uint32_t)i + 1, .max_seq = (uint32_t)n,
			.max_uid = (uint32_t)n, .keywords = (const char *const *)kw, .nkeywords = 26,
			.date = s_date, .open = s_open, .ctx = &s,
		};
		int match;
		if (imap_search_match(c->search, &in, &match, &err) < 0) {
			printf("\r\nt NO %s\r\n", err);
			return 0;
		}
		if (match)
			printf(" %zu", i + 1);
		imap_mime_free(&s.m);
		free(s.path);
		free(names[i]);
	}
	printf("\r\n");
	free(names);
	for (int i = 0; i < 26; i++)
		free(kw[i]);
	imap_parser_free(&p);
	return 0;
}

/* kB of a /proc/self/status line ("RssAnon:"), or -1 */
static long
status_kb(const char *key)
{
	char line[256];
	long v = -1;
	FILE *f = fopen("/proc/self/status", "r");

	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, key, strlen(key)) == 0)
			v = atol(line + strlen(key));
	fclose(f);
	return v;
}

static int
bench_text(void *ctx, int start, const char *d, size_t len)
{
	(void)start;
	(void)d;
	*(size_t *)ctx += len;
	return 0;
}

static int
cmd_bench(const char *path, int n)
{
	struct timespec a, b;
	long anon = 0, file = 0;

	clock_gettime(CLOCK_MONOTONIC, &a);
	for (int i = 0; i < n; i++) {
		struct imap_mime *m;
		size_t len;
		if (open_msg(path, &m) < 0)
			return 1;
		free(imap_mime_envelope(m, &len));
		free(imap_mime_bodystructure(m, 1, &len));
		if (i == 0) {
			anon = status_kb("RssAnon:");
			file = status_kb("RssFile:");
		}
		imap_mime_free(&m);
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	double us = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / n;
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("%.1f us/message (open+ENVELOPE+BODYSTRUCTURE), peak RSS %ld KiB, "
	    "while open: anonymous %ld KiB, file pages %ld KiB\n", us, ru.ru_maxrss, anon, file);
	/* SEARCH TEXT's walk: every header and every decoded text part */
	struct imap_mime *m;
	size_t total = 0;
	if (open_msg(path, &m) < 0)
		return 1;
	clock_gettime(CLOCK_MONOTONIC, &a);
	(void)imap_mime_text_foreach(m, 1, IMAP_SEARCH_TEXT_MAX, bench_text, &total);
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("text walk: %zu octets in %.1f ms, anonymous %ld KiB\n", total,
	    ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e6, status_kb("RssAnon:"));
	imap_mime_free(&m);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc >= 3 && strcmp(argv[1], "fetch") == 0)
		return cmd_fetch(argv[2], argv + 3, argc - 3);
	if (argc == 4 && strcmp(argv[1], "search") == 0)
		return cmd_search(argv[2], argv[3]);
	if (argc == 4 && strcmp(argv[1], "bench") == 0)
		return cmd_bench(argv[2], atoi(argv[3]));
	fprintf(stderr, "usage: imap-mime-tool fetch FILE ATT... | search MAILDIR KEYS | bench FILE N\n");
	return 2;
}
