/*
 * imap_parser: a table of client inputs and the events they must give,
 * rendered as one transcript string. Every row is fed whole, one byte at a
 * time and in random pieces; all three must give the same transcript.
 *
 * Transcript: events joined by " | ":
 *   CMD <tag> <NAME>[ UID] <args>[ F:<fetch atts>][ S:<search>][ ST:<store>]
 *   +               a continuation request
 *   <reply line>    REPLY (without CRLF)
 *   BYE:<reply>     DISCONNECT
 *   DONE            the end of IDLE
 * Args: atom as is, "quoted", {n}literal, (list).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/xmalloc.h"
#include "pop-imap-proxy/imap_parser.h"
#include "tests/unit/fixture.h"
#include "tests/unit/unit.h"

struct buf {
	char s[8192];
	size_t n;
};

static void
put(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
put(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(b->s + b->n, sizeof(b->s) - b->n, fmt, ap);
	va_end(ap);
	if (n > 0)
		b->n += (size_t)n < sizeof(b->s) - b->n ? (size_t)n : sizeof(b->s) - b->n - 1;
}

static void
render_args(struct buf *b, const struct imap_arg *a, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			put(b, " ");
		switch (a[i].type) {
		case IMAP_ARG_ATOM:
			put(b, "%s", a[i].str);
			break;
		case IMAP_ARG_QUOTED:
			put(b, "\"%s\"", a[i].str);
			break;
		case IMAP_ARG_LITERAL:
			put(b, "{%zu}%.*s", a[i].len, (int)a[i].len, a[i].str);
			break;
		case IMAP_ARG_LIST:
			put(b, "(");
			render_args(b, a[i].list, a[i].count);
			put(b, ")");
			break;
		}
	}
}

static void
render_set(struct buf *b, const struct imap_seqset *s)
{
	if (s->saved) {
		put(b, "$");
		return;
	}
	for (size_t i = 0; i < s->n; i++)
		put(b, "%s%u-%u", i ? "," : "", s->r[i].lo, s->r[i].hi);
}

static const char *const fetch_names[] = { "ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822",
	"RFC822.HEADER", "RFC822.SIZE", "RFC822.TEXT", "BODY", "BODYSTRUCTURE", "UID", "SECTION" };
static const char *const text_names[] = { "", "HEADER", "FIELDS", "NOTFIELDS", "TEXT", "MIME" };
static const char *const sk_names[] = { "AND", "OR", "NOT", "ALL", "ANSWERED", "DELETED",
	"DRAFT", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN", "UNANSWERED", "UNDELETED", "UNDRAFT",
	"UNFLAGGED", "UNSEEN", "BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO", "HEADER",
	"KEYWORD", "UNKEYWORD", "BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE",
	"LARGER", "SMALLER", "UID", "SET" };

static void
render_search(struct buf *b, const struct imap_search *s)
{
	put(b, "%s", sk_names[s->key]);
	if (s->str != NULL)
		put(b, "=%s", s->str);
	if (s->str2 != NULL)
		put(b, ":%s", s->str2);
	if (s->year != 0)
		put(b, "=%04d%02d%02d", s->year, s->month, s->day);
	if (s->key == IMAP_SK_LARGER || s->key == IMAP_SK_SMALLER)
		put(b, "=%u", s->num);
	if (s->key == IMAP_SK_UID || s->key == IMAP_SK_SEQSET) {
		put(b, "=");
		render_set(b, &s->set);
	}
	if (s->nchild > 0) {
		put(b, "(");
		for (size_t i = 0; i < s->nchild; i++) {
			if (i > 0)
				put(b, " ");
			render_search(b, &s->child[i]);
		}
		put(b, ")");
	}
}

static void
render_cmd(struct buf *b, const struct imap_cmd *c)
{
	put(b, "CMD %s %s%s", c->tag, c->name, c->uid ? " UID" : "");
	if (c->nargs > 0) {
		put(b, " ");
		render_args(b, c->args, c->nargs);
	}
	if (c->nfetch > 0) {
		put(b, " F:");
		for (size_t i = 0; i < c->nfetch; i++) {
			const struct imap_fetch_att *f = &c->fetch[i];

			put(b, "%s%s", i ? "," : "", fetch_names[f->kind]);
			if (f->kind != IMAP_FETCH_SECTION)
				continue;
			put(b, "%s[", f->peek ? "P" : "");
			for (size_t k = 0; k < f->nparts; k++)
				put(b, "%s%u", k ? "." : "", f->part[k]);
			put(b, "%s%s", f->nparts && f->text ? "." : "", text_names[f->text]);
			for (size_t k = 0; k < f->nfields; k++)
				put(b, "%s%s", k ? " " : " ", f->fields[k]);
			put(b, "]");
			if (f->partial)
				put(b, "<%u.%u>", f->offset, f->length);
		}
	}
	if (c->seq.n > 0 || c->seq.saved) {
		put(b, " Q:");
		render_set(b, &c->seq);
	}
	if (c->search != NULL) {
		put(b, " S:");
		if (c->charset)
			put(b, "[%s]", c->charset);
		if (c->search_return)
			put(b, "[R%x]", c->search_return);
		render_search(b, c->search);
	}
	if (strcmp(c->name, "STORE") == 0) {
		put(b, " ST:%d%s", (int)c->store_mode, c->store_silent ? "s" : "");
		for (size_t i = 0; i < c->nflags; i++)
			put(b, ",%s", c->flags[i]);
	}
	if (c->append_msg != NULL)
		put(b, " A:%zu:%s", c->nflags, c->append_date ? c->append_date : "-");
}

/* mode 0: whole, 1: byte by byte, 2+: random pieces (seeded by mode) */
static void
run(const char *in, size_t len, int mode, const struct imap_parser_limits *lim, int idle,
    struct buf *out)
{
	struct imap_parser *p = imap_parser_new(lim);
	size_t off = 0;
	unsigned seed = (unsigned)mode * 2654435761u;
	int dead = 0;

	out->n = 0;
	out->s[0] = '\0';
	static struct buf dat;

	dat.n = 0;
	dat.s[0] = '\0';
	if (idle & 1)
		imap_parser_set_idle(p);
	if (idle & 2)
		imap_parser_set_append_stream(p, 1);
	while (off < len && !dead) {
		size_t end = off + fixture_piece(mode, &seed, len - off, 7);

		while (off < end) {
			struct imap_event ev;
			size_t used = imap_parser_feed(p, in + off, end - off, &ev);

			off += used;
			if (ev.type != IMAP_EV_NONE && out->n > 0)
				put(out, " | ");
			switch (ev.type) {
			case IMAP_EV_NONE:
				break;
			case IMAP_EV_COMMAND:
				render_cmd(out, ev.cmd);
				if (ev.cmd->append_streamed)
					put(out, " D:%s", dat.n ? dat.s : "");
				dat.n = 0;
				if (strcmp(ev.cmd->name, "IDLE") == 0)
					imap_parser_set_idle(p);
				break;
			case IMAP_EV_APPEND:
				put(out, "AP:%s:%zu:%llu:%c%s", ev.cmd->args[0].str, ev.cmd->nflags,
				    (unsigned long long)ev.append_size, ev.append_sync ? 's' : 'p',
				    ev.cmd->append_date ? ":date" : "");
				dat.n = 0;
				imap_parser_append_continue(p, strcmp(ev.cmd->args[0].str, "NO") != 0);
				break;
			case IMAP_EV_APPEND_DATA:
				CU_ASSERT(ev.datalen > 0);
				for (size_t k = 0; k < ev.datalen; k++)
					put(&dat, "%c", ev.data[k]);
				if (out->n > 3 && strcmp(out->s + out->n - 3, " | ") == 0)
					out->s[out->n -= 3] = '\0';
				break;
			case IMAP_EV_CONTINUE:
				CU_ASSERT_STRING_EQUAL(ev.reply, "+ OK\r\n");
				put(out, "+");
				break;
			case IMAP_EV_REPLY:
				put(out, "%.*s", (int)strlen(ev.reply) - 2, ev.reply);
				break;
			case IMAP_EV_DISCONNECT:
				put(out, "BYE:%.*s", (int)strlen(ev.reply) - 2, ev.reply);
				dead = 1;
				break;
			case IMAP_EV_IDLE_DONE:
				put(out, "DONE");
				break;
			}
			if (dead)
				break;
			if (used == 0 && ev.type == IMAP_EV_NONE)
				break;
		}
	}
	imap_parser_free(&p);
}

struct icase {
	const char *name;
	const char *in;
	const char *want;
};

static const struct icase icases[] = {
	/* basics */
	{ "no arguments", "a1 NOOP\r\n", "CMD a1 NOOP" },
	{ "name upper-cased, bare LF accepted", "a1 capability\n", "CMD a1 CAPABILITY" },
	{ "pipelined commands", "a NOOP\r\nb LOGOUT\r\n", "CMD a NOOP | CMD b LOGOUT" },
	{ "empty lines ignored", "\r\n\r\na NOOP\r\n", "CMD a NOOP" },
	{ "trailing space tolerated", "a NOOP \r\n", "CMD a NOOP" },
	{ "tag with ]", "a]1 NOOP\r\n", "CMD a]1 NOOP" },
	/* strings */
	{ "LOGIN atoms", "a LOGIN joe secret\r\n", "CMD a LOGIN joe secret" },
	{ "LOGIN quoted with escapes", "a LOGIN \"j o\\\"e\" \"s\\\\t\"\r\n",
	  "CMD a LOGIN \"j o\"e\" \"s\\t\"" },
	{ "empty quoted", "a LOGIN \"\" \"\"\r\n", "CMD a LOGIN \"\" \"\"" },
	{ "8-bit in quoted", "a SELECT \"caf\xc3\xa9\"\r\n", "CMD a SELECT \"caf\xc3\xa9\"" },
	{ "synchronising literal", "a LOGIN {3}\r\njoe {6}\r\nsecret\r\n",
	  "+ | + | CMD a LOGIN {3}joe {6}secret" },
	{ "LITERAL+", "a LOGIN {3+}\r\njoe {6+}\r\nsecret\r\n", "CMD a LOGIN {3}joe {6}secret" },
	{ "empty literal", "a LOGIN {0}\r\n {0+}\r\n\r\n", "+ | CMD a LOGIN {0} {0}" },
	{ "literal with CRLF and NUL inside", "a LOGIN x {4+}\r\n\r\n\0z\r\n",
	  "CMD a LOGIN x {4}\r\n\0z" },
	{ "literal header with bare LF", "a LOGIN x {1+}\nq\r\n", "CMD a LOGIN x {1}q" },
	/* lists */
	{ "STATUS list", "a STATUS INBOX (MESSAGES UIDNEXT)\r\n",
	  "CMD a STATUS INBOX (MESSAGES UIDNEXT)" },
	{ "nested and empty lists", "a ID (\"name\" \"x\" \"v\" NIL)\r\n",
	  "CMD a ID (\"name\" \"x\" \"v\" NIL)" },
	{ "ID NIL", "a ID NIL\r\n", "CMD a ID NIL" },
	{ "SELECT with params", "a SELECT INBOX (CONDSTORE)\r\n", "CMD a SELECT INBOX (CONDSTORE)" },
	{ "LIST patterns", "a LIST \"\" %\r\nb LIST \"\" *\r\nc LSUB \"\" INBOX.*\r\n",
	  "CMD a LIST \"\" % | CMD b LIST \"\" * | CMD c LSUB \"\" INBOX.*" },
	{ "LIST extended", "a LIST (SUBSCRIBED) \"\" (INBOX Sent) RETURN (CHILDREN)\r\n",
	  "CMD a LIST (SUBSCRIBED) \"\" (INBOX Sent) RETURN (CHILDREN)" },
	{ "ENABLE", "a ENABLE CONDSTORE UTF8=ACCEPT\r\n", "CMD a ENABLE CONDSTORE UTF8=ACCEPT" },
	{ "AUTHENTICATE with SASL-IR", "a AUTHENTICATE PLAIN AGpvZQBzZWNyZXQ=\r\n",
	  "CMD a AUTHENTICATE PLAIN AGpvZQBzZWNyZXQ=" },
	{ "RENAME, CREATE with USE", "a RENAME a b\r\nb CREATE x (USE (\\Sent))\r\n",
	  "CMD a RENAME a b | CMD b CREATE x (USE (\\Sent))" },
	/* sequence sets */
	{ "FETCH set and ranges", "a FETCH 1,3:5,7:*,* FLAGS\r\n",
	  "CMD a FETCH 1,3:5,7:*,* FLAGS F:FLAGS Q:1-1,3-5,7-0,0-0" },
	{ "UID FETCH, reversed range", "a UID FETCH 9:2 UID\r\n",
	  "CMD a FETCH UID 9:2 UID F:UID Q:9-2" },
	{ "SEARCHRES $", "a UID COPY $ Trash\r\n", "CMD a COPY UID $ Trash Q:$" },
	{ "UID EXPUNGE", "a UID EXPUNGE 4:5\r\n", "CMD a EXPUNGE UID 4:5 Q:4-5" },
	{ "max UID", "a FETCH 4294967295 UID\r\n", "CMD a FETCH 4294967295 UID F:UID Q:4294967295-4294967295" },
	/* fetch attributes */
	{ "FETCH macro ALL", "a FETCH 1 ALL\r\n",
	  "CMD a FETCH 1 ALL F:FLAGS,INTERNALDATE,RFC822.SIZE,ENVELOPE Q:1-1" },
	{ "FETCH macro FAST", "a FETCH 1 fast\r\n",
	  "CMD a FETCH 1 fast F:FLAGS,INTERNALDATE,RFC822.SIZE Q:1-1" },
	{ "FETCH macro FULL", "a FETCH 1 FULL\r\n",
	  "CMD a FETCH 1 FULL F:FLAGS,INTERNALDATE,RFC822.SIZE,ENVELOPE,BODY Q:1-1" },
	{ "FETCH list of simple items", "a FETCH 1 (UID RFC822.SIZE BODYSTRUCTURE envelope "
	  "RFC822 RFC822.HEADER RFC822.TEXT BODY INTERNALDATE)\r\n",
	  "CMD a FETCH 1 (UID RFC822.SIZE BODYSTRUCTURE envelope RFC822 RFC822.HEADER "
	  "RFC822.TEXT BODY INTERNALDATE) F:UID,RFC822.SIZE,BODYSTRUCTURE,ENVELOPE,RFC822,"
	  "RFC822.HEADER,RFC822.TEXT,BODY,INTERNALDATE Q:1-1" },
	{ "BODY[]", "a FETCH 1 BODY[]\r\n", "CMD a FETCH 1 BODY[] F:SECTION[] Q:1-1" },
	{ "BODY.PEEK[] partial", "a FETCH 1 BODY.PEEK[]<0.1024>\r\n",
	  "CMD a FETCH 1 BODY.PEEK[]<0.1024> F:SECTIONP[]<0.1024> Q:1-1" },
	{ "BODY[part.TEXT]", "a FETCH 1 (BODY[1.2.TEXT] BODY[3.MIME] BODY[HEADER] BODY[2])\r\n",
	  "CMD a FETCH 1 (BODY[1.2.TEXT] BODY[3.MIME] BODY[HEADER] BODY[2]) "
	  "F:SECTION[1.2.TEXT],SECTION[3.MIME],SECTION[HEADER],SECTION[2] Q:1-1" },
	{ "HEADER.FIELDS list", "a FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (From \"To\" "
	  "Subject)]<10.20>)\r\n",
	  "CMD a FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (From \"To\" Subject)]<10.20>) "
	  "F:UID,SECTIONP[FIELDS From To Subject]<10.20> Q:1-0" },
	{ "HEADER.FIELDS.NOT", "a FETCH 2 BODY[1.HEADER.FIELDS.NOT (Received)]\r\n",
	  "CMD a FETCH 2 BODY[1.HEADER.FIELDS.NOT (Received)] F:SECTION[1.NOTFIELDS Received] "
	  "Q:2-2" },
	/* search */
	{ "SEARCH flags", "a SEARCH UNSEEN FLAGGED\r\n",
	  "CMD a SEARCH UNSEEN FLAGGED S:AND(UNSEEN FLAGGED)" },
	{ "SEARCH charset and strings", "a SEARCH CHARSET UTF-8 FROM joe SUBJECT \"hi there\" "
	  "HEADER X-Spam yes\r\n",
	  "CMD a SEARCH CHARSET UTF-8 FROM joe SUBJECT \"hi there\" HEADER X-Spam yes "
	  "S:[UTF-8]AND(FROM=joe SUBJECT=hi there HEADER=X-Spam:yes)" },
	{ "SEARCH OR NOT list", "a SEARCH OR (SEEN DELETED) NOT KEYWORD $Junk\r\n",
	  "CMD a SEARCH OR (SEEN DELETED) NOT KEYWORD $Junk "
	  "S:AND(OR(AND(SEEN DELETED) NOT(KEYWORD=$Junk)))" },
	{ "SEARCH dates and sizes", "a SEARCH SINCE 1-Feb-2024 BEFORE \"15-dec-2025\" "
	  "LARGER 100 SMALLER 0\r\n",
	  "CMD a SEARCH SINCE 1-Feb-2024 BEFORE \"15-dec-2025\" LARGER 100 SMALLER 0 "
	  "S:AND(SINCE=20240201 BEFORE=20251215 LARGER=100 SMALLER=0)" },
	{ "SEARCH sets", "a UID SEARCH UID 1:5 2,4 $\r\n",
	  "CMD a SEARCH UID UID 1:5 2,4 $ S:AND(UID=1-5 SET=2-2,4-4 SET=$)" },
	{ "ESEARCH RETURN", "a SEARCH RETURN (MIN COUNT SAVE) ALL\r\n",
	  "CMD a SEARCH RETURN (MIN COUNT SAVE) ALL S:[R99]AND(ALL)" },
	{ "SEARCH literal string", "a SEARCH BODY {4+}\r\ntext\r\n",
	  "CMD a SEARCH BODY {4}text S:AND(BODY=text)" },
	/* store, append */
	{ "STORE +FLAGS.SILENT list", "a STORE 1:3 +FLAGS.SILENT (\\Seen $Label1)\r\n",
	  "CMD a STORE 1:3 +FLAGS.SILENT (\\Seen $Label1) Q:1-3 ST:1s,\\Seen,$Label1" },
	{ "UID STORE -FLAGS bare", "a UID STORE 7 -FLAGS \\Deleted\r\n",
	  "CMD a STORE UID 7 -FLAGS \\Deleted Q:7-7 ST:2,\\Deleted" },
	{ "STORE FLAGS ()", "a STORE 1 FLAGS ()\r\n", "CMD a STORE 1 FLAGS () Q:1-1 ST:0" },
	{ "APPEND flags date literal", "a APPEND INBOX (\\Seen) \" 1-Jan-2025 10:00:00 +0100\" "
	  "{5+}\r\nHello\r\n",
	  "CMD a APPEND INBOX (\\Seen) \" 1-Jan-2025 10:00:00 +0100\" {5}Hello "
	  "A:1: 1-Jan-2025 10:00:00 +0100" },
	{ "APPEND bare", "a APPEND Sent {2}\r\nhi\r\n", "+ | CMD a APPEND Sent {2}hi A:0:-" },
	{ "COPY and MOVE", "a COPY 1 Trash\r\nb UID MOVE 1:* \"Junk\"\r\n",
	  "CMD a COPY 1 Trash Q:1-1 | CMD b MOVE UID 1:* \"Junk\" Q:1-0" },
	/* BAD, and resync after it */
	{ "unknown command", "a FOO\r\nb NOOP\r\n", "a BAD Error in IMAP command FOO: Unknown command. | CMD b NOOP" },
	{ "missing command", "a\r\n", "a BAD Missing command" },
	{ "invalid tag", "+ NOOP\r\nb NOOP\r\n", "* BAD Invalid tag | CMD b NOOP" },
	{ "tag with *", "a* NOOP\r\n", "* BAD Invalid tag" },
	{ "quoted tag", "\"a\" NOOP\r\n", "* BAD Invalid tag" },
	{ "list as tag", "(a) NOOP\r\n", "* BAD Invalid tag" },
	{ "list as command", "a (NOOP)\r\n", "a BAD Invalid command name" },
	{ "arguments to NOOP", "a NOOP x\r\n", "a BAD Error in IMAP command NOOP: Unexpected arguments." },
	{ "double space", "a LOGIN  x y\r\nb NOOP\r\n", "a BAD Error in IMAP command LOGIN: Double space. | CMD b NOOP" },
	{ "bare CR", "a NOOP\rb NOOP\r\nc NOOP\r\n", "a BAD Error in IMAP command NOOP: Bare CR. | CMD c NOOP" },
	{ "unterminated quoted", "a LOGIN \"x\r\nb NOOP\r\n",
	  "a BAD Error in IMAP command LOGIN: Unterminated quoted string. | CMD b NOOP" },
	{ "bad escape", "a LOGIN \"\\x\" y\r\n", "a BAD Error in IMAP command LOGIN: Invalid escape in quoted string." },
	{ "NUL in quoted", "a LOGIN \"\0\" y\r\n", "a BAD Error in IMAP command LOGIN: Unterminated quoted string." },
	{ "8-bit atom", "a LOGIN j\xc3\xa9 y\r\n", "a BAD Error in IMAP command LOGIN: Invalid character." },
	{ "missing space after quoted", "a LOGIN \"x\"y z\r\n", "a BAD Error in IMAP command LOGIN: Missing space." },
	{ "unbalanced )", "a STATUS x (A))\r\n", "a BAD Error in IMAP command STATUS: Unexpected ')'." },
	{ "missing )", "a STATUS x (A\r\nb NOOP\r\n", "a BAD Error in IMAP command STATUS: Missing ')'. | CMD b NOOP" },
	{ "bad literal header", "a LOGIN {x}\r\nb NOOP\r\n", "a BAD Error in IMAP command LOGIN: Invalid literal. | CMD b NOOP" },
	{ "literal header junk", "a LOGIN {3}x\r\nb NOOP\r\n",
	  "a BAD Error in IMAP command LOGIN: Missing line end after literal. | CMD b NOOP" },
	{ "empty literal length", "a LOGIN {}\r\n", "a BAD Error in IMAP command LOGIN: Invalid literal." },
	{ "LOGIN arity", "a LOGIN x\r\n", "a BAD Error in IMAP command LOGIN: Invalid arguments." },
	{ "LOGIN with list", "a LOGIN (x) y\r\n", "a BAD Error in IMAP command LOGIN: Invalid arguments." },
	{ "SELECT wildcard", "a SELECT INBOX*\r\n", "a BAD Error in IMAP command SELECT: Invalid arguments." },
	{ "STATUS empty list", "a STATUS x ()\r\n", "a BAD Error in IMAP command STATUS: Invalid arguments." },
	{ "STATUS bad item", "a STATUS x (\"M\")\r\n", "a BAD Error in IMAP command STATUS: Invalid status item." },
	{ "AUTHENTICATE list", "a AUTHENTICATE (PLAIN)\r\n", "a BAD Error in IMAP command AUTHENTICATE: Invalid arguments." },
	{ "ID odd list", "a ID (\"a\")\r\n", "a BAD Error in IMAP command ID: Invalid arguments." },
	{ "ENABLE nothing", "a ENABLE\r\n", "a BAD Error in IMAP command ENABLE: Invalid arguments." },
	{ "UID NOOP", "a UID NOOP\r\n", "a BAD Error in IMAP command UID NOOP: Unknown UID command." },
	{ "UID alone", "a UID\r\n", "a BAD Error in IMAP command UID: Missing UID command." },
	{ "seqset zero", "a FETCH 0 UID\r\n", "a BAD Error in IMAP command FETCH: Invalid sequence set." },
	{ "seqset leading zero", "a FETCH 01 UID\r\n", "a BAD Error in IMAP command FETCH: Invalid sequence set." },
	{ "seqset overflow", "a FETCH 4294967296 UID\r\n", "a BAD Error in IMAP command FETCH: Invalid sequence set." },
	{ "seqset trailing comma", "a FETCH 1, UID\r\n", "a BAD Error in IMAP command FETCH: Invalid sequence set." },
	{ "seqset double colon", "a FETCH 1:2:3 UID\r\n", "a BAD Error in IMAP command FETCH: Invalid sequence set." },
	{ "seqset quoted", "a FETCH \"1\" UID\r\n", "a BAD Error in IMAP command FETCH: Invalid sequence set." },
	{ "$ in a list", "a FETCH 1,$ UID\r\n", "a BAD Error in IMAP command FETCH: Invalid sequence set." },
	{ "unknown fetch att", "a FETCH 1 (UID FOO)\r\n", "a BAD Error in IMAP command FETCH: Invalid fetch attribute." },
	{ "empty fetch list", "a FETCH 1 ()\r\n", "a BAD Error in IMAP command FETCH: Invalid fetch attribute." },
	{ "macro in list", "a FETCH 1 (ALL)\r\n", "a BAD Error in IMAP command FETCH: Invalid fetch attribute." },
	{ "bad section", "a FETCH 1 BODY[FOO]\r\n", "a BAD Error in IMAP command FETCH: Invalid fetch attribute." },
	{ "MIME without part", "a FETCH 1 BODY[MIME]\r\n", "a BAD Error in IMAP command FETCH: Invalid fetch attribute." },
	{ "section part 0", "a FETCH 1 BODY[0]\r\n", "a BAD Error in IMAP command FETCH: Invalid fetch attribute." },
	{ "section trailing dot", "a FETCH 1 BODY[1.]\r\n", "a BAD Error in IMAP command FETCH: Invalid fetch attribute." },
	{ "partial without length", "a FETCH 1 BODY[]<5>\r\n", "a BAD Error in IMAP command FETCH: Invalid fetch attribute." },
	{ "partial zero length", "a FETCH 1 BODY[]<5.0>\r\n", "a BAD Error in IMAP command FETCH: Invalid fetch attribute." },
	{ "partial junk", "a FETCH 1 BODY[]<5.1>x\r\n", "a BAD Error in IMAP command FETCH: Invalid fetch attribute." },
	{ "fields without list", "a FETCH 1 BODY[HEADER.FIELDS]\r\n",
	  "a BAD Error in IMAP command FETCH: Invalid fetch attribute." },
	{ "fields empty list", "a FETCH 1 BODY[HEADER.FIELDS ()]\r\n",
	  "a BAD Error in IMAP command FETCH: Invalid fetch attribute." },
	{ "unterminated section", "a FETCH 1 BODY[HEADER\r\nb NOOP\r\n",
	  "a BAD Error in IMAP command FETCH: Invalid BODY[..] parameter: Missing ']'. | CMD b NOOP" },
	{ "unknown search key", "a SEARCH FOO\r\n", "a BAD Error in IMAP command SEARCH: Unknown argument FOO." },
	{ "search missing argument", "a SEARCH FROM\r\n", "a BAD Error in IMAP command SEARCH: Missing search argument." },
	{ "search OR one key", "a SEARCH OR SEEN\r\n", "a BAD Error in IMAP command SEARCH: Missing search key." },
	{ "search bad date", "a SEARCH SINCE 32-Jan-2024\r\n", "a BAD Error in IMAP command SEARCH: Invalid search date." },
	{ "search bad month", "a SEARCH ON 1-Foo-2024\r\n", "a BAD Error in IMAP command SEARCH: Invalid search date." },
	{ "search bad number", "a SEARCH LARGER x\r\n", "a BAD Error in IMAP command SEARCH: Invalid search number." },
	{ "search empty", "a SEARCH\r\n", "a BAD Error in IMAP command SEARCH: Missing search key." },
	{ "search empty list", "a SEARCH ()\r\n", "a BAD Error in IMAP command SEARCH: Missing search key." },
	{ "search system flag as keyword", "a SEARCH KEYWORD \\Seen\r\n",
	  "a BAD Error in IMAP command SEARCH: Invalid keyword." },
	{ "search bad return", "a SEARCH RETURN (FOO) ALL\r\n",
	  "a BAD Error in IMAP command SEARCH: Unknown search return option." },
	{ "search NOT chain too deep", "a SEARCH NOT NOT NOT NOT NOT ALL\r\n", "a BAD Error in IMAP command SEARCH: Search program too deeply nested." },
	{ "STORE bad item", "a STORE 1 LABELS (x)\r\n", "a BAD Error in IMAP command STORE: Invalid arguments." },
	{ "STORE bad flag", "a STORE 1 FLAGS (\"x\")\r\n", "a BAD Error in IMAP command STORE: Invalid flag." },
	{ "STORE flag with wildcard", "a STORE 1 FLAGS (\\*)\r\n", "a BAD Error in IMAP command STORE: Invalid flag." },
	{ "APPEND without literal", "a APPEND INBOX \"x\"\r\n", "a BAD Error in IMAP command APPEND: Invalid arguments." },
	{ "APPEND bad date", "a APPEND INBOX \"1-Jan-2025\" {1+}\r\nx\r\n",
	  "a BAD Error in IMAP command APPEND: Invalid date-time." },
	{ "IDLE then DONE", "a IDLE\r\nDONE\r\nb NOOP\r\n", "CMD a IDLE | DONE | CMD b NOOP" },
	{ "IDLE then junk", "a IDLE\r\nDONEX\r\nb NOOP\r\n",
	  "CMD a IDLE | * BAD Expected DONE | CMD b NOOP" },
	{ "IDLE done lower case", "a IDLE\ndone\n", "CMD a IDLE | DONE" },
	/* a refused synchronising literal: the client sends nothing more */
	{ "sync literal too big", "a LOGIN {9999}\r\nb NOOP\r\n",
	  "a NO [TOOBIG] Literal too big | CMD b NOOP" },
	/* a refused LITERAL+ literal's bytes are skipped, never read as commands */
	{ "LITERAL+ after an error is skipped", "a LOGIN  x {10+}\r\nx NOOP\r\n\r\n\r\n"
	  "b NOOP\r\n", "a BAD Error in IMAP command LOGIN: Double space. | CMD b NOOP" },
	{ "LITERAL+ in an unknown command", "a FOO {10+}\r\nx NOOP\r\n\r\n\r\nb NOOP\r\n",
	  "a BAD Error in IMAP command FOO: Unknown command. | CMD b NOOP" },
	{ "the line goes on after a literal", "a FOO {1+}\r\nxb NOOP\r\n", "a BAD Error in IMAP command FOO: Missing space." },
	{ "LITERAL+ as tag", "{5+}\r\nx NOO a\r\nb NOOP\r\n", "* BAD Invalid tag | CMD b NOOP" },
	{ "LITERAL+ too big: BYE", "a LOGIN {9999+}\r\n",
	  "BYE:* BYE [TOOBIG] Literal too big" },
	{ "too many errors: BYE", "a X\r\nb X\r\nc X\r\nd NOOP\r\n",
	  "a BAD Error in IMAP command X: Unknown command. | b BAD Error in IMAP command X: Unknown "
	  "command. | BYE:c BAD Error in IMAP command X: Unknown command.\r\n"
	  "* BYE Too many invalid IMAP commands." },
	{ "a good command resets the error count", "a X\r\nb X\r\nn NOOP\r\nc X\r\nd X\r\n",
	  "a BAD Error in IMAP command X: Unknown command. | b BAD Error in IMAP command X: Unknown command. | CMD n NOOP | c BAD Error in IMAP command X: Unknown command."
	  " | d BAD Error in IMAP command X: Unknown command." },
	{ "nesting too deep", "a STATUS x ((((((((A))))))))\r\nb NOOP\r\n",
	  "a BAD Error in IMAP command STATUS: Too deeply nested. | CMD b NOOP" },
	{ "list too long", "a ENABLE A B C D E F G H I J K L M N O\r\nb NOOP\r\n",
	  "a BAD Error in IMAP command ENABLE: Too many arguments. | CMD b NOOP" },
	{ NULL, NULL, NULL },
};

/* APPEND streaming (imap_parser_set_append_stream); a mailbox named NO is refused */
static const struct icase scases[] = {
	{ "sync literal, flags and date", "a APPEND INBOX (\\Seen $X) \" 1-Jan-2025 10:00:00 +0100\" "
	  "{5}\r\nHello\r\nb NOOP\r\n",
	  "AP:INBOX:2:5:s:date | CMD a APPEND INBOX (\\Seen $X) \" 1-Jan-2025 10:00:00 +0100\" {5} "
	  "A:2: 1-Jan-2025 10:00:00 +0100 D:Hello | CMD b NOOP" },
	{ "LITERAL+ with CRLF inside", "a APPEND Sent {6+}\r\nx\r\ny\r\n\r\n",
	  "AP:Sent:0:6:p | CMD a APPEND Sent {6} A:0:- D:x\r\ny\r\n" },
	{ "empty message", "a APPEND Sent {0}\r\n\r\n", "AP:Sent:0:0:s | CMD a APPEND Sent {0} A:0:- D:" },
	{ "refused sync: the client sends nothing more", "a APPEND NO {5}\r\nb NOOP\r\n",
	  "AP:NO:0:5:s | CMD b NOOP" },
	{ "refused LITERAL+: bytes and line skipped silently", "a APPEND NO {5+}\r\n{9}\r\n x\r\nb NOOP\r\n",
	  "AP:NO:0:5:p | CMD b NOOP" },
	{ "bad flags before the literal", "a APPEND INBOX (\"x\") {3}\r\nb NOOP\r\n",
	  "a BAD Error in IMAP command APPEND: Invalid flag. | CMD b NOOP" },
	{ "junk after the message", "a APPEND INBOX {1+}\r\nx y\r\nb NOOP\r\n",
	  "AP:INBOX:0:1:p | a BAD Error in IMAP command APPEND: Invalid arguments. | CMD b NOOP" },
	{ "bigger than literal_max", "a APPEND INBOX {101}\r\nb NOOP\r\n",
	  "a NO [TOOBIG] Literal too big | CMD b NOOP" },
	{ NULL, NULL, NULL },
};

static const struct imap_parser_limits small = {
	.line_max = 200, .literal_max = 100, .depth_max = 4, .list_max = 12, .bad_max = 2,
};

static void
test_imap_parser_stream(void)
{
	struct buf got;

	for (const struct icase *c = scases; c->name != NULL; c++) {
		for (int mode = 0; mode < 8; mode++) {
			run(c->in, strlen(c->in), mode, &small, 2, &got);
			if (strcmp(got.s, c->want) != 0) {
				fprintf(stderr, "\nimap_parser stream case '%s' mode %d:\n  got  %s\n"
				    "  want %s\n", c->name, mode, got.s, c->want);
				CU_FAIL(c->name);
				break;
			}
			CU_PASS(c->name);
		}
	}
}

static void
test_imap_parser_table(void)
{
	struct buf got;

	for (const struct icase *c = icases; c->name != NULL; c++) {
		/* the inputs hold NUL bytes: the length is that of the literal up to its end */
		size_t len = strlen(c->in);

		if (strstr(c->name, "NUL") != NULL)
			len += strlen(c->in + len + 1) + 1;
		for (int mode = 0; mode < 8; mode++) {
			run(c->in, len, mode, &small, 0, &got);
			if (strcmp(got.s, c->want) != 0) {
				fprintf(stderr, "\nimap_parser case '%s' mode %d:\n  got  %s\n  want %s\n",
				    c->name, mode, got.s, c->want);
				CU_FAIL(c->name);
				break;
			}
			CU_PASS(c->name);
		}
	}
}

/* the line cap counts bytes outside literals; resync after it */
static void
test_imap_parser_line_limit(void)
{
	struct buf got;
	char in[1024];
	int n;

	n = snprintf(in, sizeof(in), "a LOGIN %0300d x\r\nb NOOP\r\n", 7);
	for (int mode = 0; mode < 4; mode++) {
		run(in, (size_t)n, mode, &small, 0, &got);
		CU_ASSERT_STRING_EQUAL(got.s, "a BAD [TOOBIG] Line too long | CMD b NOOP");
	}
	/* a literal as long as the line cap is fine */
	{
		struct imap_parser_limits l = small;
		char *big = xmalloc(400);

		l.literal_max = 300;
		n = snprintf(in, sizeof(in), "a LOGIN x {300+}\r\n");
		memcpy(in + n, memset(big, 'z', 300), 300);
		memcpy(in + n + 300, "\r\n", 2);
		run(in, (size_t)n + 302, 1, &l, 0, &got);
		CU_ASSERT(strncmp(got.s, "CMD a LOGIN x {300}zzz", 22) == 0);
		free(big);
	}
	/* a big literal (its buffer is dropped at the line's end), then more commands */
	{
		struct imap_parser_limits wide;
		struct imap_parser *p;
		struct imap_event ev;
		const char *h = "a APPEND INBOX {100000+}\r\n";
		char *big = xmalloc(100000);
		size_t used;

		imap_parser_limits_default(&wide, 1);
		p = imap_parser_new(&wide);
		memset(big, 'x', 100000);
		used = imap_parser_feed(p, h, strlen(h), &ev);
		CU_ASSERT_EQUAL(used, strlen(h));
		CU_ASSERT_EQUAL(imap_parser_feed(p, big, 100000, &ev), 100000);
		CU_ASSERT_EQUAL(imap_parser_feed(p, "\r\n", 2, &ev), 2);
		CU_ASSERT_EQUAL_FATAL(ev.type, IMAP_EV_COMMAND);
		CU_ASSERT_EQUAL(ev.cmd->append_msg->len, 100000);
		CU_ASSERT_EQUAL(imap_parser_feed(p, "b NOOP\r\n", 8, &ev), 8);
		CU_ASSERT_EQUAL(ev.type, IMAP_EV_COMMAND);
		CU_ASSERT_STRING_EQUAL(ev.cmd->name, "NOOP");
		imap_parser_free(&p);
		free(big);
	}
	/* tighter before login, wider after: the change applies from the next line */
	{
		struct imap_parser *p = imap_parser_new(&small);
		struct imap_parser_limits wide;
		struct imap_event ev;
		const char *l1 = "a LOGIN x {150}\r\n";
		size_t used;

		used = imap_parser_feed(p, l1, strlen(l1), &ev);
		CU_ASSERT_EQUAL(ev.type, IMAP_EV_REPLY);
		CU_ASSERT_EQUAL(used, strlen(l1));
		imap_parser_limits_default(&wide, 1);
		imap_parser_set_limits(p, &wide);
		used = imap_parser_feed(p, l1, strlen(l1), &ev);
		CU_ASSERT_EQUAL(ev.type, IMAP_EV_CONTINUE);
		imap_parser_free(&p);
	}
}

/* with a NULL limits pointer the prelogin defaults hold */
static void
test_imap_parser_defaults(void)
{
	struct imap_parser *p = imap_parser_new(NULL);
	struct imap_event ev;
	char line[64];
	int n = snprintf(line, sizeof(line), "a LOGIN {%u}\r\n", IMAP_LITERAL_MAX_PRELOGIN + 1);

	(void)imap_parser_feed(p, line, (size_t)n, &ev);
	CU_ASSERT_EQUAL(ev.type, IMAP_EV_REPLY);
	CU_ASSERT_STRING_EQUAL(ev.reply, "a NO [TOOBIG] Literal too big\r\n");
	imap_parser_free(&p);
}

static void
test_imap_seqset_contains(void)
{
	struct imap_parser *p = imap_parser_new(NULL);
	struct imap_seqset s;
	const char *err;

	CU_ASSERT_EQUAL(imap_seqset_parse(p, "2,5:3,9:*", &s, &err), 0);
	CU_ASSERT(!imap_seqset_contains(&s, 1, 20));
	CU_ASSERT(imap_seqset_contains(&s, 2, 20));
	CU_ASSERT(imap_seqset_contains(&s, 4, 20));
	CU_ASSERT(!imap_seqset_contains(&s, 6, 20));
	CU_ASSERT(imap_seqset_contains(&s, 20, 20));
	CU_ASSERT(imap_seqset_contains(&s, 7, 7));	/* 9:* with * = 7 is 7:9 */
	CU_ASSERT_EQUAL(imap_seqset_parse(p, "1:", &s, &err), -1);
	imap_parser_free(&p);
}

static CU_TestInfo tests[] = {
	{ "every construct and every BAD, whole/bytewise/random", test_imap_parser_table },
	{ "line and literal limits, pre and post login", test_imap_parser_line_limit },
	{ "prelogin defaults", test_imap_parser_defaults },
	{ "APPEND streaming: events, refusals, errors", test_imap_parser_stream },
	{ "sequence set membership", test_imap_seqset_contains },
	{ NULL, NULL },
};

void
test_imap_parser_register(void)
{
	unit_suite("imap_parser", tests);
}
