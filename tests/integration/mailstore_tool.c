/*
 * mailstore-tool - drive storage-adapter/mailstore.h from a test script.
 *
 *   mailstore-tool ROOT USER folders
 *   mailstore-tool ROOT USER create|delete NAME
 *   mailstore-tool ROOT USER rename FROM TO
 *   mailstore-tool ROOT USER list BOX          JSON: uidvalidity, uidnext, messages
 *   mailstore-tool ROOT USER append BOX FILE [LETTERS [KEYWORD...]]   prints the UID
 *   mailstore-tool ROOT USER store BOX UID +|-|= LETTERS [KEYWORD...]
 *   mailstore-tool ROOT USER expunge BOX UID
 *   mailstore-tool ROOT USER cat BOX UID
 *
 * LETTERS are Maildir's (D F R S T; "-" for none). A test tool only: exits 1
 * with the store's error on stderr.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "storage-adapter/mailstore.h"

static void
die(const char *what, const char *error)
{
	fprintf(stderr, "mailstore-tool: %s: %s\n", what, error);
	exit(1);
}

static unsigned
letters(const char *s)
{
	unsigned f = 0;

	for (; *s; s++) {
		switch (*s) {
		case 'D': f |= MAILSTORE_DRAFT; break;
		case 'F': f |= MAILSTORE_FLAGGED; break;
		case 'R': f |= MAILSTORE_ANSWERED; break;
		case 'S': f |= MAILSTORE_SEEN; break;
		case 'T': f |= MAILSTORE_DELETED; break;
		default: break;
		}
	}
	return f;
}

static void
list(struct mailstore_box *box)
{
	const char *error;
	static const struct { unsigned bit; const char *name; } fl[] = {
		{ MAILSTORE_ANSWERED, "\\\\Answered" }, { MAILSTORE_FLAGGED, "\\\\Flagged" },
		{ MAILSTORE_DELETED, "\\\\Deleted" }, { MAILSTORE_SEEN, "\\\\Seen" },
		{ MAILSTORE_DRAFT, "\\\\Draft" },
	};

	printf("{\"uidvalidity\": %u, \"uidnext\": %u, \"messages\": [",
	    mailstore_box_uidvalidity(box), mailstore_box_uidnext(box));
	for (size_t i = 0; i < mailstore_box_count(box); i++) {
		const struct mailstore_msg *m = mailstore_box_msg(box, i);
		int first = 1;
		time_t date = 0;

		if (mailstore_msg_date(box, m->uid, &date, &error) < 0)
			die("date", error);

		printf("%s{\"uid\": %u, \"size\": %llu, \"vsize\": %llu, \"date\": %lld, "
		    "\"recent\": %s, \"flags\": [", i ? ", " : "", m->uid,
		    (unsigned long long)m->size, (unsigned long long)m->vsize, (long long)date,
		    m->recent ? "true" : "false");
		for (size_t k = 0; k < sizeof(fl) / sizeof(fl[0]); k++)
			if (m->flags & fl[k].bit) {
				printf("%s\"%s\"", first ? "" : ", ", fl[k].name);
				first = 0;
			}
		printf("], \"keywords\": [");
		first = 1;
		for (unsigned k = 0; k < MAX_MAILSTORE_KEYWORDS; k++)
			if ((m->keywords & (1u << k)) && mailstore_box_keyword(box, k)) {
				/* keyword names never hold '"' or '\' (see keyword_ok) */
				printf("%s\"%s\"", first ? "" : ", ", mailstore_box_keyword(box, k));
				first = 0;
			}
		printf("]}");
	}
	printf("]}\n");
}

int
main(int argc, char **argv)
{
	struct mailstore *ms;
	struct mailstore_box *box = NULL;
	const char *error, *cmd;

	log_open("mailstore-tool", 1);
	if (argc < 4) {
		fprintf(stderr, "usage: mailstore-tool ROOT USER COMMAND [ARGS]\n");
		return 2;
	}
	cmd = argv[3];
	if (mailstore_open(argv[1], argv[2], &ms, &error) < 0)
		die("open", error);
	if (strcmp(cmd, "folders") == 0) {
		char **v;
		size_t n;

		if (mailstore_folders(ms, &v, &n, &error) < 0)
			die(cmd, error);
		for (size_t i = 0; i < n; i++)
			printf("%s\n", v[i]);
		mailstore_names_free(&v, n);
	} else if (strcmp(cmd, "create") == 0 && argc == 5) {
		if (mailstore_folder_create(ms, argv[4], &error) < 0)
			die(cmd, error);
	} else if (strcmp(cmd, "delete") == 0 && argc == 5) {
		if (mailstore_folder_delete(ms, argv[4], &error) < 0)
			die(cmd, error);
	} else if (strcmp(cmd, "rename") == 0 && argc == 6) {
		if (mailstore_folder_rename(ms, argv[4], argv[5], &error) < 0)
			die(cmd, error);
	} else if (argc >= 5) {
		/* an APPEND from a session that has not selected the folder takes
		 * no \Recent; "list" is a SELECT */
		if ((strcmp(cmd, "append") == 0 ? mailstore_box_open_peek : mailstore_box_open)(ms,
		    argv[4], &box, &error) < 0)
			die("open folder", error);
		if (strcmp(cmd, "list") == 0) {
			list(box);
		} else if (strcmp(cmd, "append") == 0 && argc >= 6) {
			struct mailstore_append *a;
			char buf[65536];
			ssize_t r;
			int fd = open(argv[5], O_RDONLY);
			uint32_t uid;

			if (fd < 0)
				die(argv[5], "cannot open");
			if (mailstore_append_begin(box, &a, &error) < 0)
				die(cmd, error);
			while ((r = read(fd, buf, sizeof(buf))) > 0)
				if (mailstore_append_write(a, buf, (size_t)r, &error) < 0)
					die(cmd, error);
			close(fd);
			if (mailstore_append_commit(&a, argc > 6 ? letters(argv[6]) : 0,
			    (const char *const *)argv + 7, argc > 7 ? (size_t)(argc - 7) : 0, 0, &uid,
			    &error) < 0)
				die(cmd, error);
			printf("%u\n", uid);
		} else if (strcmp(cmd, "store") == 0 && argc >= 8) {
			enum mailstore_flag_mode mode = argv[6][0] == '+' ? MAILSTORE_FLAGS_ADD :
			    argv[6][0] == '-' ? MAILSTORE_FLAGS_REMOVE : MAILSTORE_FLAGS_REPLACE;

			if (mailstore_msg_set_flags(box, (uint32_t)strtoul(argv[5], NULL, 10), mode,
			    letters(argv[7]), (const char *const *)argv + 8, (size_t)(argc - 8),
			    &error) < 0)
				die(cmd, error);
		} else if (strcmp(cmd, "expunge") == 0 && argc == 6) {
			if (mailstore_msg_expunge(box, (uint32_t)strtoul(argv[5], NULL, 10), &error) < 0)
				die(cmd, error);
		} else if (strcmp(cmd, "cat") == 0 && argc == 6) {
			int fd;
			char buf[65536];
			ssize_t r;

			if (mailstore_msg_open(box, (uint32_t)strtoul(argv[5], NULL, 10), &fd,
			    &error) < 0)
				die(cmd, error);
			while ((r = read(fd, buf, sizeof(buf))) > 0)
				fwrite(buf, 1, (size_t)r, stdout);
			close(fd);
		} else {
			fprintf(stderr, "mailstore-tool: bad command\n");
			return 2;
		}
		mailstore_box_close(&box);
	} else {
		fprintf(stderr, "mailstore-tool: bad command\n");
		return 2;
	}
	mailstore_free(&ms);
	return 0;
}
