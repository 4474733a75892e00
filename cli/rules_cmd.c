/*
 * rules_cmd.c - `portcullis rules check FILE`: compile a Sieve script as the
 * daemon would and report. Exit 0 when it compiles; otherwise exit 1 and
 * one line per error on stderr, FILE:LINE:COLUMN: message.
 *
 *   cmd_rules(argc, argv)   argv after "rules"
 *
 * Needs no configuration and no daemon; reads only FILE and what it includes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/xmalloc.h"
#include "rules/sieve.h"

int cmd_rules(int argc, char **argv);

static int rules_check(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		fprintf(stderr, "%s: cannot open: %s\n", path, strerror(errno));
		return 1;
	}
	char *buf = xmalloc(SIEVE_MAX_SCRIPT_SIZE + 2);
	size_t len = fread(buf, 1, SIEVE_MAX_SCRIPT_SIZE + 1, f);
	int rerr = ferror(f);
	fclose(f);
	if (rerr) {
		fprintf(stderr, "%s: read error\n", path);
		free(buf);
		return 1;
	}
	char *dir = xstrdup(path);
	char *sl = strrchr(dir, '/');
	if (sl)
		*sl = '\0';
	else
		strcpy(dir, ".");
	struct sieve_compile_opts o = { .dir = dir };
	struct sieve_errors err = { 0 };
	struct sieve_script *s = NULL;
	int rc = 0;
	if (sieve_compile(path, buf, len, &o, &s, &err) < 0) {
		/* the located errors; the summary line only when there is nothing else */
		size_t shown = 0;
		for (size_t i = 0; i < err.n; i++)
			if (strncmp(err.msg[i], path, strlen(path)) == 0 &&
			    err.msg[i][strlen(path)] == ':' && err.msg[i][strlen(path) + 1] != ' ') {
				fprintf(stderr, "%s\n", err.msg[i]);
				shown++;
			}
		for (size_t i = 0; i < err.n && shown == 0; i++)
			fprintf(stderr, "%s\n", err.msg[i]);
		rc = 1;
	}
	sieve_script_free(&s);
	sieve_errors_clear(&err);
	free(dir);
	free(buf);
	return rc;
}

int cmd_rules(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[0], "check") == 0)
		return rules_check(argv[1]);
	fprintf(stderr, "usage: portcullis rules check FILE\n");
	return 2;
}
