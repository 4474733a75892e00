/*
 * imap_proto: golden dialogues of the session skeleton against a real mail
 * store in a temp dir ({V:name} stands for that folder's UIDVALIDITY), fed
 * whole, one byte at a time and in random pieces, with a small door that
 * runs the actions (SASL checks, STARTTLS, opening and closing folders,
 * listing them).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "common/sasl.h"
#include "common/xmalloc.h"
#include "pop-imap-proxy/imap_proto.h"
#include "storage-adapter/mailstore.h"
#include "tests/unit/fixture.h"
#include "tests/unit/unit.h"

#define USER FIXTURE_USER


struct env {
	char *root;
	struct mailstore *ms;
	struct mailstore_box *box;
	unsigned uv_inbox, uv_sent;
};

static void
store_make(struct env *e)
{
	const char *msgs[] = { "Subject: one\n\nbody\n", "Subject: two\n\nbody\n" }, *err;
	struct mailstore *ms;

	memset(e, 0, sizeof(*e));
	e->root = unit_tmpdir();
	CU_ASSERT_EQUAL_FATAL(fixture_deliver(e->root, USER, msgs, 2, &err), 0);
	CU_ASSERT_EQUAL_FATAL(mailstore_open(e->root, USER, &ms, &err), 0);
	CU_ASSERT_EQUAL(mailstore_folder_create(ms, "Sent", &err), 0);
	CU_ASSERT_EQUAL(mailstore_folder_create(ms, "Archive", &err), 0);
	CU_ASSERT_EQUAL(mailstore_folder_create(ms, "Archive.2024", &err), 0);
	mailstore_free(&ms);
}

static void
store_free(struct env *e)
{
	mailstore_box_close(&e->box);
	mailstore_free(&e->ms);
	if (fixture_rm_rf(e->root) != 0)
		CU_FAIL("rm");
	free(e->root);
}

/* the door's writer: bytes as they are, file ranges read and LF->CRLF'd */
static void
drain(struct imap_proto *p, struct fixture_buf *out)
{
	struct imap_segment g;

	while (imap_proto_output_segment(p, &g)) {
		if (g.fd < 0) {
			fixture_put(out, g.data, g.len);
		} else {
			size_t sent = 0;
			off_t off = g.offset;
			int prev_cr = 0;

			while (sent < g.len) {
				char c;

				if (pread(g.fd, &c, 1, off++) != 1) {
					CU_FAIL("short file range");
					break;
				}
				if (g.crlf && c == '\n' && !prev_cr) {
					fixture_put(out, "\r", 1);
					if (++sent == g.len)
						break;
				}
				fixture_put(out, &c, 1);
				sent++;
				prev_cr = c == '\r';
			}
		}
		imap_proto_output_done(p, g.len);
	}
}

/* the door's side of an action; 1 when STARTTLS was done */
static int
act(struct imap_proto *p, struct env *e)
{
	(void)e;
	switch (imap_proto_action(p)) {
	case IMAP_ACT_NONE:
		return 0;
	case IMAP_ACT_AUTH: {
		struct imap_auth_req *r = imap_proto_auth_req(p);
		int ok = r->ok;

		if (r->check) {
			const char *o;

			sasl_server_check(r->sasl);
			ok = sasl_server_checked(r->sasl, &o) == SASL_OK;
		}
		imap_proto_auth_done(p, ok);
		return 0;
	}
	case IMAP_ACT_STARTTLS:
		imap_proto_set_tls(p, 1);
		return 1;
	case IMAP_ACT_EXEC:
		imap_proto_exec(p);
		imap_proto_exec_done(p);
		return 0;
	}
	return 0;
}

struct icase {
	const char *name;
	struct imap_params prm;
	const char *in;
	const char *after_tls;
	const char *want;
};

#define CAPS "IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE"
#define CAPS_IN CAPS " NAMESPACE UNSELECT CHILDREN SPECIAL-USE UIDPLUS MOVE ESEARCH"
#define P_TLS { .myhostname = "mx.example.com", .tls_available = 1, .login = 1, \
	.auth_mechs = AUTH_MECH_PLAIN | AUTH_MECH_CRAM, .sasl_cb = &fixture_alice }
#define P_OPEN { .myhostname = "mx.example.com", .login = 1, .auth_mechs = AUTH_MECH_PLAIN, \
	.auth_allow_plaintext = 1, .sasl_cb = &fixture_alice, .banner = "IMAP ready" }
/* created at login, as Dovecot's default config does */
#define SPECIAL_LIST "* LIST (\\HasNoChildren \\Drafts) \".\" Drafts\r\n" \
	"* LIST (\\HasNoChildren \\Junk) \".\" Junk\r\n" \
	"* LIST (\\HasNoChildren \\Sent) \".\" Sent\r\n" \
	"* LIST (\\HasNoChildren \\Trash) \".\" Trash\r\n"
#define FLAGS "\\Answered \\Flagged \\Deleted \\Seen \\Draft"

static const struct icase icases[] = {
	{ "LOGINDISABLED before STARTTLS; input sent with STARTTLS is dropped", P_TLS,
	  "a LOGIN alice secret\r\nb SELECT INBOX\r\nc STARTTLS\r\nd NOOP\r\n",
	  "e CAPABILITY\r\nf LOGIN alice wrong\r\ng LOGIN {5}\r\nalice \"secret\"\r\nh LOGOUT\r\n",
	  "* OK [CAPABILITY " CAPS " STARTTLS LOGINDISABLED AUTH=CRAM-MD5] mx.example.com ready.\r\n"
	  "a NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) "
	  "connections.\r\nb BAD Please log in first.\r\nc OK Begin TLS negotiation now.\r\n"
	  "* CAPABILITY " CAPS " AUTH=PLAIN AUTH=CRAM-MD5\r\ne OK Capability completed.\r\n"
	  "f NO [AUTHENTICATIONFAILED] Authentication failed.\r\n+ OK\r\n"
	  "g OK [CAPABILITY " CAPS_IN "] Logged in\r\n"
	  "* BYE Logging out\r\nh OK Logout completed.\r\n" },
	{ "SASL-IR, SELECT, EXAMINE, LIST, the simple commands", P_OPEN,
	  "a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\nb SELECT inbox\r\nc FETCH 1 FLAGS\r\n"
	  "c2 UNSELECT\r\nc3 UNSELECT\r\nd EXAMINE Sent\r\ne SELECT Nope\r\nf FETCH 1 FLAGS\r\n"
	  "g LIST \"\" *\r\nh LIST \"\" %\r\ni LIST \"\" \"\"\r\nj LIST Archive. %\r\n"
	  "j2 LSUB \"\" Inbox\r\nk NAMESPACE\r\nl ID NIL\r\nm ENABLE CONDSTORE\r\nn IDLE\r\n"
	  "DONE\r\nn2 IDLE\r\nnope\r\np LOGIN x y\r\nq FOO\r\nr LOGOUT\r\n", NULL,
	  "* OK [CAPABILITY " CAPS " AUTH=PLAIN] IMAP ready\r\n"
	  "a OK [CAPABILITY " CAPS_IN "] Logged in\r\n"
	  "* FLAGS (" FLAGS ")\r\n* OK [PERMANENTFLAGS (" FLAGS " \\*)] Flags permitted.\r\n"
	  "* 2 EXISTS\r\n* 2 RECENT\r\n* OK [UNSEEN 1] First unseen.\r\n"
	  "* OK [UIDVALIDITY {V:INBOX}] UIDs valid\r\n* OK [UIDNEXT 3] Predicted next UID\r\n"
	  "b OK [READ-WRITE] Select completed.\r\n"
	  "* 1 FETCH (FLAGS (\\Recent))\r\nc OK Fetch completed.\r\nc2 OK Unselect completed.\r\n"
	  "c3 BAD No mailbox selected.\r\n"
	  "* FLAGS (" FLAGS ")\r\n* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n"
	  "* 0 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY {V:Sent}] UIDs valid\r\n"
	  "* OK [UIDNEXT 1] Predicted next UID\r\nd OK [READ-ONLY] Examine completed.\r\n"
	  "* OK [CLOSED] Previous mailbox closed.\r\ne NO Mailbox doesn't exist: Nope.\r\nf BAD No mailbox selected.\r\n"
	  "* LIST (\\HasNoChildren) \".\" INBOX\r\n* LIST (\\HasChildren) \".\" Archive\r\n"
	  "* LIST (\\HasNoChildren) \".\" Archive.2024\r\n" SPECIAL_LIST
	  "g OK List completed.\r\n"
	  "* LIST (\\HasNoChildren) \".\" INBOX\r\n* LIST (\\HasChildren) \".\" Archive\r\n"
	  SPECIAL_LIST "h OK List completed.\r\n"
	  "* LIST (\\Noselect) \".\" \"\"\r\ni OK List completed.\r\n"
	  "* LIST (\\HasNoChildren) \".\" Archive.2024\r\nj OK List completed.\r\n"
	  "j2 OK Lsub completed.\r\n"
	  "* NAMESPACE ((\"\" \".\")) NIL NIL\r\nk OK Namespace completed.\r\n"
	  "* ID NIL\r\nl OK ID completed.\r\nm OK Enabled.\r\n"
	  "+ idling\r\nn OK Idle completed.\r\n+ idling\r\nn2 BAD Expected DONE.\r\n"
	  "p BAD Command not permitted in this state.\r\nq BAD Error in IMAP command FOO: Unknown command.\r\n"
	  "* BYE Logging out\r\nr OK Logout completed.\r\n" },
	{ "AUTHENTICATE: continuation, cancel, then a good exchange", P_OPEN,
	  "a AUTHENTICATE PLAIN\r\n*\r\nb AUTHENTICATE PLAIN\r\n!!\r\nc AUTHENTICATE FOO\r\n"
	  "d AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\ne AUTHENTICATE PLAIN =\r\n"
	  "f LOGOUT\r\n", NULL,
	  "* OK [CAPABILITY " CAPS " AUTH=PLAIN] IMAP ready\r\n"
	  "+ \r\na BAD Authentication aborted by client.\r\n+ \r\nb BAD Invalid base64 data.\r\n"
	  "c NO Unsupported authentication mechanism.\r\n+ \r\n"
	  "d OK [CAPABILITY " CAPS_IN "] Logged in\r\n"
	  "e BAD Command not permitted in this state.\r\n"
	  "* BYE Logging out\r\nf OK Logout completed.\r\n" },
	{ "FETCH, STORE, EXPUNGE, CLOSE", P_OPEN,
	  "a LOGIN alice secret\r\nb SELECT INBOX\r\nc FETCH 1:* (UID RFC822.SIZE FLAGS)\r\n"
	  "d FETCH 1 BODY.PEEK[HEADER]\r\ne UID FETCH 2 (BODY[TEXT])\r\n"
	  "f FETCH 1 BODY.PEEK[]<9.5>\r\nf2 FETCH 2 (RFC822.HEADER BODY.PEEK[]<20.10>)\r\n"
	  "g STORE 1 +FLAGS (\\Deleted $Junk)\r\nh STORE 2 -FLAGS.SILENT (\\Seen)\r\n"
	  "i FETCH 1:2 FLAGS\r\nj FETCH 3 FLAGS\r\nj2 STORE 1 FLAGS (\\Bogus)\r\n"
	  "j3 STORE 1 +FLAGS (\\Recent)\r\nk EXPUNGE\r\n"
	  "l UID FETCH 1:* UID\r\nl2 UID FETCH 7:* (FLAGS)\r\nm STORE 1 +FLAGS.SILENT \\Deleted\r\n"
	  "n CLOSE\r\no SELECT INBOX\r\no2 SELECT\r\no3 CHECK\r\np LOGOUT\r\n", NULL,
	  "* OK [CAPABILITY " CAPS " AUTH=PLAIN] IMAP ready\r\n"
	  "a OK [CAPABILITY " CAPS_IN "] Logged in\r\n"
	  "* FLAGS (" FLAGS ")\r\n* OK [PERMANENTFLAGS (" FLAGS " \\*)] Flags permitted.\r\n"
	  "* 2 EXISTS\r\n* 2 RECENT\r\n* OK [UNSEEN 1] First unseen.\r\n"
	  "* OK [UIDVALIDITY {V:INBOX}] UIDs valid\r\n* OK [UIDNEXT 3] Predicted next UID\r\n"
	  "b OK [READ-WRITE] Select completed.\r\n"
	  "* 1 FETCH (UID 1 RFC822.SIZE 22 FLAGS (\\Recent))\r\n"
	  "* 2 FETCH (UID 2 RFC822.SIZE 22 FLAGS (\\Recent))\r\nc OK Fetch completed.\r\n"
	  "* 1 FETCH (BODY[HEADER] {16}\r\nSubject: one\r\n\r\n)\r\nd OK Fetch completed.\r\n"
	  "* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent) BODY[TEXT] {6}\r\nbody\r\n)\r\n"
	  "e OK Fetch completed.\r\n"
	  "* 1 FETCH (BODY[]<9> {5}\r\none\r\n)\r\nf OK Fetch completed.\r\n"
	  "* 2 FETCH (RFC822.HEADER {16}\r\nSubject: two\r\n\r\n BODY[]<20> {2}\r\n\r\n)\r\n"
	  "f2 OK Fetch completed.\r\n"
	  "* FLAGS (" FLAGS " $Junk)\r\n"
	  "* OK [PERMANENTFLAGS (" FLAGS " $Junk \\*)] Flags permitted.\r\n"
	  "* 1 FETCH (FLAGS (\\Deleted \\Recent $Junk))\r\ng OK Store completed.\r\n"
	  "h OK Store completed.\r\n"
	  "* 1 FETCH (FLAGS (\\Deleted \\Recent $Junk))\r\n* 2 FETCH (FLAGS (\\Recent))\r\n"
	  "i OK Fetch completed.\r\n"
	  "j BAD Error in IMAP command FETCH: Invalid messageset.\r\n"
	  "j2 BAD Invalid system flag \\Bogus\r\n"
	  "j3 BAD Invalid system flag \\Recent\r\n"	/* the server's flag, as Dovecot */
	  "* 1 EXPUNGE\r\n* 1 RECENT\r\nk OK Expunge completed.\r\n"
	  "* 1 FETCH (UID 2)\r\nl OK Fetch completed.\r\n"
	  "* 1 FETCH (UID 2 FLAGS (\\Recent))\r\nl2 OK Fetch completed.\r\n"
	  "m OK Store completed.\r\nn OK Close completed.\r\n"
	  "* FLAGS (" FLAGS " $Junk)\r\n* OK [PERMANENTFLAGS (" FLAGS " $Junk \\*)] Flags permitted.\r\n"
	  "* 0 EXISTS\r\n* 0 RECENT\r\n"
	  "* OK [UIDVALIDITY {V:INBOX}] UIDs valid\r\n* OK [UIDNEXT 3] Predicted next UID\r\n"
	  "o OK [READ-WRITE] Select completed.\r\n"
	  /* a SELECT with bad arguments closes the folder first, as Dovecot's */
	  "* OK [CLOSED] Previous mailbox closed.\r\n"
	  "o2 BAD Error in IMAP command SELECT: Invalid arguments.\r\no3 BAD No mailbox selected.\r\n"
	  "* BYE Logging out\r\np OK Logout completed.\r\n" },
	{ "COPY, MOVE with COPYUID; TRYCREATE", P_OPEN,
	  "a LOGIN alice secret\r\nb SELECT INBOX\r\nc COPY 1:2 Archive\r\n"
	  "d UID MOVE 2 Sent\r\ne COPY 1 Nope\r\nf COPY 1 inbox\r\ng UID COPY 9 Sent\r\n"
	  "h FETCH 1:* (UID FLAGS)\r\ni EXAMINE Archive\r\nj MOVE 1 Sent\r\nk LOGOUT\r\n", NULL,
	  "* OK [CAPABILITY " CAPS " AUTH=PLAIN] IMAP ready\r\n"
	  "a OK [CAPABILITY " CAPS_IN "] Logged in\r\n"
	  "* FLAGS (" FLAGS ")\r\n* OK [PERMANENTFLAGS (" FLAGS " \\*)] Flags permitted.\r\n"
	  "* 2 EXISTS\r\n* 2 RECENT\r\n* OK [UNSEEN 1] First unseen.\r\n"
	  "* OK [UIDVALIDITY {V:INBOX}] UIDs valid\r\n* OK [UIDNEXT 3] Predicted next UID\r\n"
	  "b OK [READ-WRITE] Select completed.\r\n"
	  "c OK [COPYUID {V:Archive} 1:2 1:2] Copy completed.\r\n"
	  "* OK [COPYUID {V:Sent} 2 1] Moved UIDs.\r\n* 2 EXPUNGE\r\n* 1 RECENT\r\nd OK Move completed.\r\n"
	  "e NO [TRYCREATE] Mailbox doesn't exist: Nope.\r\n"
	  "* 2 EXISTS\r\n* 2 RECENT\r\nf OK [COPYUID {V:INBOX} 1 3] Copy completed.\r\n"
	  "g OK No messages found.\r\n"
	  "* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n* 2 FETCH (UID 3 FLAGS (\\Recent))\r\n"
	  "h OK Fetch completed.\r\n* OK [CLOSED] Previous mailbox closed.\r\n"
	  "* FLAGS (" FLAGS ")\r\n* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n"
	  "* 2 EXISTS\r\n* 2 RECENT\r\n* OK [UNSEEN 1] First unseen.\r\n"
	  "* OK [UIDVALIDITY {V:Archive}] UIDs valid\r\n* OK [UIDNEXT 3] Predicted next UID\r\n"
	  "i OK [READ-ONLY] Examine completed.\r\n"
	  "j NO [READ-ONLY] Mailbox is read-only.\r\n"
	  "* BYE Logging out\r\nk OK Logout completed.\r\n" },
	/* subscriptions stay on RENAME and DELETE, as Dovecot's */
	{ "CREATE, DELETE, RENAME (INBOX too), SUBSCRIBE, LSUB, STATUS", P_OPEN,
	  "a LOGIN alice secret\r\nb CREATE Work.\r\nc CREATE Work\r\nd CREATE inbox\r\n"
	  "e CREATE Work.Projects\r\nf SUBSCRIBE Work.Projects\r\ng SUBSCRIBE Nope\r\n"
	  "h LSUB \"\" *\r\ni LSUB \"\" %\r\nj RENAME Work Job\r\nk LIST \"\" Job*\r\n"
	  "l LSUB \"\" *\r\nm STATUS INBOX (MESSAGES UIDNEXT UNSEEN RECENT)\r\n"
	  "n STATUS Nope (MESSAGES)\r\nn2 STATUS INBOX (BOGUS)\r\no DELETE Job.Projects\r\n"
	  "p DELETE INBOX\r\nq DELETE Nope\r\nr RENAME INBOX Old\r\ns STATUS Old (MESSAGES)\r\n"
	  "t STATUS INBOX (MESSAGES UIDNEXT)\r\nu UNSUBSCRIBE Drafts\r\nv LSUB \"\" *\r\n"
	  "w RENAME Job Job.x\r\nx CREATE \"a b\"\r\ny LIST \"\" a*\r\n"
	  "y2 CREATE P.A.B\r\ny3 RENAME P.A P.G\r\ny4 LIST \"\" P*\r\ny5 RENAME P.A P.H\r\n"
	  "z LOGOUT\r\n", NULL,
	  "* OK [CAPABILITY " CAPS " AUTH=PLAIN] IMAP ready\r\n"
	  "a OK [CAPABILITY " CAPS_IN "] Logged in\r\n"
	  "b OK Create completed.\r\nc NO [ALREADYEXISTS] Mailbox already exists.\r\n"
	  "d NO [ALREADYEXISTS] Mailbox already exists.\r\ne OK Create completed.\r\n"
	  "f OK Subscribe completed.\r\ng NO Mailbox doesn't exist: Nope.\r\n"
	  "* LSUB (\\Drafts) \".\" Drafts\r\n* LSUB (\\Junk) \".\" Junk\r\n* LSUB (\\Trash) \".\" Trash\r\n"
	  "* LSUB () \".\" Work.Projects\r\nh OK Lsub completed.\r\n"
	  "* LSUB (\\Drafts) \".\" Drafts\r\n* LSUB (\\Junk) \".\" Junk\r\n* LSUB (\\Trash) \".\" Trash\r\n"
	  "* LSUB (\\Noselect) \".\" Work\r\ni OK Lsub completed.\r\n"
	  "j OK Rename completed.\r\n"
	  "* LIST (\\HasChildren) \".\" Job\r\n* LIST (\\HasNoChildren) \".\" Job.Projects\r\n"
	  "k OK List completed.\r\n"
	  "* LSUB (\\Drafts) \".\" Drafts\r\n* LSUB (\\Junk) \".\" Junk\r\n* LSUB (\\Trash) \".\" Trash\r\n"
	  "* LSUB () \".\" Work.Projects\r\nl OK Lsub completed.\r\n"
	  "* STATUS INBOX (MESSAGES 2 RECENT 2 UIDNEXT 3 UNSEEN 2)\r\nm OK Status completed.\r\n"
	  "n NO Mailbox doesn't exist: Nope.\r\nn2 BAD Invalid status item\r\n"
	  "o OK Delete completed.\r\np NO INBOX can't be deleted.\r\n"
	  "q NO [NONEXISTENT] Mailbox doesn't exist: Nope.\r\nr OK Rename completed.\r\n"
	  "* STATUS Old (MESSAGES 2)\r\ns OK Status completed.\r\n"
	  "* STATUS INBOX (MESSAGES 0 UIDNEXT 3)\r\nt OK Status completed.\r\n"
	  "u OK Unsubscribe completed.\r\n"
	  "* LSUB (\\Junk) \".\" Junk\r\n* LSUB (\\Trash) \".\" Trash\r\n* LSUB () \".\" Work.Projects\r\n"
	  "v OK Lsub completed.\r\n"
	  "w NO Can't rename mailbox under its own child.\r\nx OK Create completed.\r\n"
	  "* LIST (\\HasNoChildren) \".\" \"a b\"\r\ny OK List completed.\r\n"
	  /* a \Noselect parent is renamed with its children, as Dovecot does */
	  "y2 OK Create completed.\r\ny3 OK Rename completed.\r\n"
	  "* LIST (\\HasNoChildren) \".\" P.G.B\r\n* LIST (\\Noselect \\HasChildren) \".\" P.G\r\n"
	  "* LIST (\\Noselect \\HasChildren) \".\" P\r\ny4 OK List completed.\r\n"
	  "y5 NO [NONEXISTENT] Mailbox doesn't exist: P.A.\r\n"
	  "* BYE Logging out\r\nz OK Logout completed.\r\n" },
	{ "APPEND streamed: flags, date, TRYCREATE, LITERAL+, errors, APPENDUID", P_OPEN,
	  "a LOGIN alice secret\r\nb APPEND Sent (\\Seen $Work) \" 5-Mar-2024 10:00:00 +0100\" {21}\r\n"
	  "Subject: hi\r\n\r\nbody\r\n\r\nc APPEND Nope {3}\r\nd APPEND Nope {3+}\r\nabc\r\ne APPEND INBOX {0}\r\n"
	  "f SELECT Sent\r\ng FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE BODY[])\r\n"
	  "h APPEND Sent {5+}\r\nhello x\r\ni APPEND INBOX (\\Bogus) {3}\r\n"
	  "j APPEND Sent {4+}\r\nabcd\r\nk LOGOUT\r\n", NULL,
	  "* OK [CAPABILITY " CAPS " AUTH=PLAIN] IMAP ready\r\n"
	  "a OK [CAPABILITY " CAPS_IN "] Logged in\r\n"
	  "+ OK\r\nb OK [APPENDUID {V:Sent} 1] Append completed.\r\n"
	  "c NO [TRYCREATE] Mailbox doesn't exist: Nope.\r\n"
	  "d NO [TRYCREATE] Mailbox doesn't exist: Nope.\r\n"
	  "e NO Can't save a zero byte message.\r\n"
	  "* FLAGS (" FLAGS " $Work)\r\n* OK [PERMANENTFLAGS (" FLAGS " $Work \\*)] Flags permitted.\r\n"
	  "* 1 EXISTS\r\n* 1 RECENT\r\n"
	  "* OK [UIDVALIDITY {V:Sent}] UIDs valid\r\n* OK [UIDNEXT 2] Predicted next UID\r\n"
	  "f OK [READ-WRITE] Select completed.\r\n"
	  "* 1 FETCH (FLAGS (\\Seen \\Recent $Work) INTERNALDATE \"05-Mar-2024 09:00:00 +0000\" "
	  "RFC822.SIZE 21 BODY[] {21}\r\nSubject: hi\r\n\r\nbody\r\n)\r\ng OK Fetch completed.\r\n"
	  "h BAD Error in IMAP command APPEND: Invalid arguments.\r\n"
	  "i BAD Invalid system flag \\Bogus\r\n"
	  "* 2 EXISTS\r\n* 2 RECENT\r\nj OK [APPENDUID {V:Sent} 2] Append completed.\r\n"
	  "* BYE Logging out\r\nk OK Logout completed.\r\n" },
	{ "SEARCH, ESEARCH, MIME FETCH items", P_OPEN,
	  "a LOGIN alice secret\r\nb SELECT INBOX\r\nc SEARCH SUBJECT two\r\nd UID SEARCH ALL\r\n"
	  "e SEARCH RETURN (MIN MAX COUNT) ALL\r\nf UID SEARCH RETURN () BODY body\r\n"
	  "g SEARCH CHARSET KOI8-R ALL\r\nh SEARCH UNSEEN NOT SUBJECT one\r\n"
	  "i FETCH 1 (ENVELOPE BODY BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (SUBJECT)] "
	  "BODY.PEEK[1] BODY.PEEK[2])\r\nj SEARCH RETURN (COUNT) DELETED\r\nk SEARCH 2:* UID 1\r\n"
	  "l LOGOUT\r\n", NULL,
	  "* OK [CAPABILITY " CAPS " AUTH=PLAIN] IMAP ready\r\n"
	  "a OK [CAPABILITY " CAPS_IN "] Logged in\r\n"
	  "* FLAGS (" FLAGS ")\r\n* OK [PERMANENTFLAGS (" FLAGS " \\*)] Flags permitted.\r\n"
	  "* 2 EXISTS\r\n* 2 RECENT\r\n* OK [UNSEEN 1] First unseen.\r\n"
	  "* OK [UIDVALIDITY {V:INBOX}] UIDs valid\r\n* OK [UIDNEXT 3] Predicted next UID\r\n"
	  "b OK [READ-WRITE] Select completed.\r\n"
	  "* SEARCH 2\r\nc OK Search completed.\r\n* SEARCH 1 2\r\nd OK Search completed.\r\n"
	  "* ESEARCH (TAG \"e\") MIN 1 MAX 2 COUNT 2\r\ne OK Search completed.\r\n"
	  "* ESEARCH (TAG \"f\") UID ALL 1:2\r\nf OK Search completed.\r\n"
	  "g NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n"
	  "* SEARCH 2\r\nh OK Search completed.\r\n"
	  "* 1 FETCH (ENVELOPE (NIL \"one\" NIL NIL NIL NIL NIL NIL NIL NIL) "
	  "BODY (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 6 1) "
	  "BODYSTRUCTURE (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 6 1 NIL NIL NIL NIL) "
	  "BODY[HEADER.FIELDS (SUBJECT)] {16}\r\nSubject: one\r\n\r\n BODY[1] {6}\r\nbody\r\n BODY[2] {0}\r\n)\r\n"
	  "i OK Fetch completed.\r\n"
	  "* ESEARCH (TAG \"j\") COUNT 0\r\nj OK Search completed.\r\n* SEARCH\r\nk OK Search completed.\r\n"
	  "* BYE Logging out\r\nl OK Logout completed.\r\n" },
	{ "BYE after too many BADs in a row, ours and the parser's", P_OPEN,
	  "a FETCH 1 FLAGS\r\nb (\r\nc SELECT INBOX\r\nd FOO\r\ne )\r\nf LIST \"\" *\r\n"
	  "g NOOP\r\nh SELECT INBOX\r\ni (\r\nj (\r\nk (\r\nl (\r\nm (\r\nn (\r\no (\r\np (\r\n"
	  "q (\r\nr (\r\ns NOOP\r\n", NULL,
	  "* OK [CAPABILITY " CAPS " AUTH=PLAIN] IMAP ready\r\n"
	  "a BAD Please log in first.\r\nb BAD Invalid command name\r\nc BAD Please log in first.\r\n"
	  "d BAD Error in IMAP command FOO: Unknown command.\r\ne BAD Invalid character\r\nf BAD Please log in first.\r\n"
	  "g OK NOOP completed.\r\nh BAD Please log in first.\r\ni BAD Invalid command name\r\n"
	  "j BAD Invalid command name\r\nk BAD Invalid command name\r\nl BAD Invalid command name\r\n"
	  "m BAD Invalid command name\r\nn BAD Invalid command name\r\no BAD Invalid command name\r\n"
	  "p BAD Invalid command name\r\nq BAD Invalid command name\r\n"
	  "r BAD Invalid command name\r\n* BYE Too many invalid IMAP commands.\r\n" },
	{ "tighter limits before login than after", P_OPEN,
	  "a LOGIN {2000}\r\nb LOGIN alice secret\r\nc APPEND INBOX {2000+}\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"
	  "d STATUS INBOX (MESSAGES)\r\ne LOGOUT\r\n", NULL,
	  "* OK [CAPABILITY " CAPS " AUTH=PLAIN] IMAP ready\r\n"
	  "a NO [TOOBIG] Literal too big\r\nb OK [CAPABILITY " CAPS_IN "] Logged in\r\n"
	  "c OK [APPENDUID {V:INBOX} 3] Append completed.\r\n"
	  "* STATUS INBOX (MESSAGES 3)\r\nd OK Status completed.\r\n"
	  "* BYE Logging out\r\ne OK Logout completed.\r\n" },
	{ "LIST-EXTENDED forms for SPECIAL-USE (RFC 6154)", P_OPEN,
	  "a LOGIN alice secret\r\nb LIST (SPECIAL-USE) \"\" *\r\n"
	  "c LIST \"\" (INBOX S*) RETURN (SPECIAL-USE CHILDREN)\r\nd LIST (BOGUS) \"\" *\r\n"
	  "e LIST \"\" % RETURN (STATUS (MESSAGES))\r\nf LOGOUT\r\n", NULL,
	  "* OK [CAPABILITY " CAPS " AUTH=PLAIN] IMAP ready\r\n"
	  "a OK [CAPABILITY " CAPS_IN "] Logged in\r\n"
	  "* LIST (\\Drafts) \".\" Drafts\r\n* LIST (\\Junk) \".\" Junk\r\n"
	  "* LIST (\\Sent) \".\" Sent\r\n* LIST (\\Trash) \".\" Trash\r\nb OK List completed.\r\n"
	  "* LIST (\\HasNoChildren) \".\" INBOX\r\n* LIST (\\HasNoChildren \\Sent) \".\" Sent\r\n"
	  "c OK List completed.\r\n"
	  "d BAD Error in IMAP command LIST: Unknown select options.\r\n"
	  "e BAD Error in IMAP command LIST: Unknown return options.\r\n"
	  "* BYE Logging out\r\nf OK Logout completed.\r\n" },
	{ "the state is checked before the arguments, as Dovecot", P_OPEN,
	  "a FETCH 1 BODY[1\r\nb LOGIN alice secret\r\nc UID SEARCH FOO\r\nd SEARCH FOO\r\n"
	  "e SELECT INBOX\r\nf SEARCH FOO\r\ng LOGOUT\r\n", NULL,
	  "* OK [CAPABILITY " CAPS " AUTH=PLAIN] IMAP ready\r\n"
	  "a BAD Please log in first.\r\nb OK [CAPABILITY " CAPS_IN "] Logged in\r\n"
	  "c BAD No mailbox selected.\r\nd BAD No mailbox selected.\r\n"
	  "* FLAGS (" FLAGS ")\r\n* OK [PERMANENTFLAGS (" FLAGS " \\*)] Flags permitted.\r\n"
	  "* 2 EXISTS\r\n* 2 RECENT\r\n* OK [UNSEEN 1] First unseen.\r\n"
	  "* OK [UIDVALIDITY {V:INBOX}] UIDs valid\r\n* OK [UIDNEXT 3] Predicted next UID\r\n"
	  "e OK [READ-WRITE] Select completed.\r\n"
	  "f BAD Error in IMAP command SEARCH: Unknown argument FOO.\r\n"
	  "* BYE Logging out\r\ng OK Logout completed.\r\n" },
	{ NULL, { 0 }, NULL, NULL, NULL },
};

/* {V:name}: that folder's UIDVALIDITY, read from the store after the dialogue */
static char *
expand(struct env *e, const char *want)
{
	struct fixture_buf b = { 0 };
	const char *k, *s = want, *err;
	struct mailstore *ms;

	CU_ASSERT_EQUAL_FATAL(mailstore_open(e->root, USER, &ms, &err), 0);
	fixture_put(&b, "", 0);
	while ((k = strstr(s, "{V:")) != NULL) {
		const char *end = strchr(k, '}');
		char name[100], v[16];
		struct mailstore_box *box;

		fixture_put(&b, s, (size_t)(k - s));
		snprintf(name, sizeof(name), "%.*s", (int)(end - k - 3), k + 3);
		if (mailstore_box_open(ms, name, &box, &err) == 0) {
			snprintf(v, sizeof(v), "%u", (unsigned)mailstore_box_uidvalidity(box));
			mailstore_box_close(&box);
		} else {
			snprintf(v, sizeof(v), "?");
		}
		fixture_put(&b, v, strlen(v));
		s = end + 1;
	}
	fixture_put(&b, s, strlen(s));
	mailstore_free(&ms);
	return b.s;
}

static void
dialogue(const struct icase *c, int mode, struct fixture_buf *out, struct env *e)
{
	struct imap_params prm = c->prm;
	struct imap_proto *p;

	prm.store_root = e->root;
	p = imap_proto_new(&prm);
	const char *in = c->in;
	size_t len = strlen(in), off = 0;
	unsigned seed = (unsigned)mode * 2654435761u;

	imap_proto_start(p);
	for (int guard = 0; guard < 1000000; guard++) {
		size_t piece;

		drain(p, out);
		if (imap_proto_action(p) != IMAP_ACT_NONE) {
			if (act(p, e)) {
				drain(p, out);
				in = c->after_tls ? c->after_tls : "";
				len = strlen(in);
				off = 0;
			}
			continue;
		}
		if (imap_proto_wants_close(p) || off >= len)
			break;
		piece = fixture_piece(mode, &seed, len - off, 9);
		off += imap_proto_input(p, in + off, piece);
	}
	drain(p, out);
	imap_proto_free(&p);
}

/* feed one scripted line (or more) to P and return what it answered */
static char *
say(struct imap_proto *p, struct env *e, const char *in)
{
	struct fixture_buf out = { 0 };
	size_t off = 0, len = strlen(in);

	fixture_put(&out, "", 0);
	for (int guard = 0; guard < 100000; guard++) {
		drain(p, &out);
		if (imap_proto_action(p) != IMAP_ACT_NONE) {
			act(p, e);
			continue;
		}
		if (off >= len || imap_proto_wants_close(p))
			break;
		off += imap_proto_input(p, in + off, len - off);
	}
	drain(p, &out);
	return out.s;
}

static void
deliver(struct env *e, const char *msg)
{
	const char *err;

	CU_ASSERT_EQUAL_FATAL(fixture_deliver(e->root, USER, &msg, 1, &err), 0);
}

#define SAYS(p, in, want) do { \
	char *got_ = say((p), &e, (in)); \
	if (strcmp(got_, (want)) != 0) { \
		fprintf(stderr, "\n%s\n--- got\n%s--- want\n%s", (in), got_, (want)); \
		CU_FAIL(in); \
	} \
	free(got_); \
} while (0)

/* two sessions on one folder: flags, expunges and new mail reach the other at
 * the next command or in IDLE, expunges only where RFC 3501 allows them */
static void
test_imap_two_sessions(void)
{
	struct imap_params prm = P_OPEN;
	struct imap_proto *a, *b;
	struct env e;
	char *junk;

	store_make(&e);
	prm.store_root = e.root;
	a = imap_proto_new(&prm);
	b = imap_proto_new(&prm);
	imap_proto_start(a);
	imap_proto_start(b);
	junk = say(a, &e, "1 LOGIN alice secret\r\n2 SELECT INBOX\r\n");
	free(junk);
	junk = say(b, &e, "1 LOGIN alice secret\r\n2 SELECT INBOX\r\n");
	free(junk);
	SAYS(b, "3 STORE 1 +FLAGS (\\Seen)\r\n",
	    "* 1 FETCH (FLAGS (\\Seen))\r\n3 OK Store completed.\r\n");
	SAYS(a, "3 NOOP\r\n", "* 1 FETCH (FLAGS (\\Seen \\Recent))\r\n3 OK NOOP completed.\r\n");
	SAYS(b, "4 STORE 2 +FLAGS.SILENT (\\Deleted)\r\n5 EXPUNGE\r\n",
	    "4 OK Store completed.\r\n* 2 EXPUNGE\r\n5 OK Expunge completed.\r\n");
	/* COPY of what the other session expunged: EXPUNGEISSUED, not SERVERBUG
	 * (test_imap_stress found it) */
	SAYS(a, "3b COPY 2 Archive\r\n3c STORE 2 +FLAGS (\\Flagged)\r\n",
	    "3b NO [EXPUNGEISSUED] Some of the requested messages no longer exist.\r\n"
	    "3c NO [EXPUNGEISSUED] Some of the requested messages no longer exist.\r\n");
	/* by sequence number: no EXPUNGE now, the gone message is reported */
	SAYS(a, "4 FETCH 1:2 UID\r\n5 STORE 1 -FLAGS.SILENT (\\Seen)\r\n6 SEARCH ALL\r\n",
	    "* 1 FETCH (UID 1)\r\n"
	    "4 NO [EXPUNGEISSUED] Some of the requested messages no longer exist.\r\n"
	    "5 OK Store completed.\r\n* SEARCH 1\r\n6 OK Search completed.\r\n");
	SAYS(a, "7 CHECK\r\n", "* 2 EXPUNGE\r\n* 1 RECENT\r\n7 OK Check completed.\r\n");
	SAYS(b, "6 NOOP\r\n", "* 1 FETCH (FLAGS ())\r\n6 OK NOOP completed.\r\n");
	/* new mail in IDLE: the door watches the folder and calls notify */
	SAYS(a, "8 IDLE\r\n", "+ idling\r\n");
	CU_ASSERT_PTR_NOT_NULL(imap_proto_watch_dir(a));
	CU_ASSERT(imap_proto_idling(a));
	deliver(&e, "Subject: three\n\nx\n");
	imap_proto_notify(a);
	CU_ASSERT_EQUAL(imap_proto_action(a), IMAP_ACT_EXEC);
	SAYS(a, "", "* 2 EXISTS\r\n* 2 RECENT\r\n");
	imap_proto_keepalive(a);
	SAYS(a, "DONE\r\n", "* OK Still here\r\n8 OK Idle completed.\r\n");
	CU_ASSERT_PTR_NULL(imap_proto_watch_dir(a));
	/* new mail is told after the command's own answers, as Dovecot */
	SAYS(b, "7 UID FETCH 1:* FLAGS\r\n8 FETCH 2 (UID BODY.PEEK[TEXT])\r\n",
	    "* 1 FETCH (UID 1 FLAGS ())\r\n* 2 EXISTS\r\n7 OK Fetch completed.\r\n"
	    "* 2 FETCH (UID 3 BODY[TEXT] {3}\r\nx\r\n)\r\n8 OK Fetch completed.\r\n");
	imap_proto_bye(a, "Server shutting down.");
	SAYS(a, "", "* BYE Server shutting down.\r\n");
	CU_ASSERT(imap_proto_wants_close(a));
	/* BYE while an exec runs: after its output */
	(void)imap_proto_input(b, "9 NOOP\r\n", 8);
	CU_ASSERT_EQUAL(imap_proto_action(b), IMAP_ACT_EXEC);
	imap_proto_bye(b, "Going away.");
	SAYS(b, "", "9 OK NOOP completed.\r\n* BYE Going away.\r\n");
	CU_ASSERT(imap_proto_wants_close(b));
	imap_proto_free(&a);
	imap_proto_free(&b);
	store_free(&e);
}

/* another session expunges the last messages of this one's view and mail
 * arrives: the sync in the answer to STORE/COPY tells the EXPUNGEs, then the
 * EXISTS of the new mail, and FETCH 1:* names nothing the client was not told
 * of (the told count once went wrong after two expunges, test_imap_stress.py
 * S1-S3) */
static void
test_imap_view_sync(void)
{
	struct imap_params prm = P_OPEN;
	struct imap_proto *a, *b;
	struct env e;
	char *junk;

	store_make(&e);
	prm.store_root = e.root;
	a = imap_proto_new(&prm);
	b = imap_proto_new(&prm);
	imap_proto_start(a);
	imap_proto_start(b);
	junk = say(a, &e, "1 LOGIN alice secret\r\n2 SELECT INBOX\r\n");
	free(junk);
	junk = say(b, &e, "1 LOGIN alice secret\r\n2 SELECT INBOX\r\n");
	free(junk);
	SAYS(b, "3 STORE 1:2 +FLAGS.SILENT (\\Deleted)\r\n4 EXPUNGE\r\n",
	    "3 OK Store completed.\r\n* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n4 OK Expunge completed.\r\n");
	deliver(&e, "Subject: three\n\nx\n");
	SAYS(a, "3 UID STORE 3 +FLAGS (\\Flagged)\r\n",
	    "* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n* 1 EXISTS\r\n* 1 RECENT\r\n"
	    "3 OK Store completed.\r\n");
	SAYS(a, "4 UID STORE 3 +FLAGS (\\Flagged)\r\n5 FETCH 1:* UID\r\n",
	    "* 1 FETCH (UID 3 FLAGS (\\Flagged \\Recent))\r\n4 OK Store completed.\r\n"
	    "* 1 FETCH (UID 3)\r\n5 OK Fetch completed.\r\n");
	/* the same in the answer to a COPY */
	deliver(&e, "Subject: four\n\nx\n");
	deliver(&e, "Subject: five\n\nx\n");
	SAYS(a, "6 NOOP\r\n", "* 3 EXISTS\r\n* 3 RECENT\r\n6 OK NOOP completed.\r\n");
	junk = say(b, &e, "5 NOOP\r\n");
	free(junk);
	SAYS(b, "6 STORE 2:3 +FLAGS.SILENT (\\Deleted)\r\n7 EXPUNGE\r\n",
	    "6 OK Store completed.\r\n* 2 EXPUNGE\r\n* 2 EXPUNGE\r\n7 OK Expunge completed.\r\n");
	deliver(&e, "Subject: six\n\nx\n");
	junk = say(a, &e, "7 UID COPY 3 Archive\r\n");
	if (strncmp(junk, "* 2 EXPUNGE\r\n* 2 EXPUNGE\r\n* 2 EXISTS\r\n* 2 RECENT\r\n"
	    "7 OK [COPYUID ", 58) != 0) {
		fprintf(stderr, "\n7 UID COPY 3 Archive\n--- got\n%s", junk);
		CU_FAIL("UID COPY: EXPUNGE then EXISTS");
	}
	free(junk);
	SAYS(a, "8 FETCH 1:* UID\r\n9 FETCH 3 UID\r\n",
	    "* 1 FETCH (UID 3)\r\n* 2 FETCH (UID 6)\r\n8 OK Fetch completed.\r\n"
	    "9 BAD Error in IMAP command FETCH: Invalid messageset.\r\n");
	imap_proto_free(&a);
	imap_proto_free(&b);
	store_free(&e);
}

/* big work in pieces: a 1 MB APPEND goes to the store in 64 KiB execs (the
 * session never holds it whole), a FETCH of 40 messages comes in batches,
 * each batch's output complete; the bytes are exactly the message's */
static void
test_imap_batches(void)
{
	struct imap_params prm = P_OPEN;
	struct imap_proto *p;
	struct env e;
	struct fixture_buf out = { 0 };
	char *junk, *msg, *cmd;
	size_t big = 1u << 20, off = 0, len, execs = 0, batches = 0;

	store_make(&e);
	prm.store_root = e.root;
	p = imap_proto_new(&prm);
	imap_proto_start(p);
	junk = say(p, &e, "1 LOGIN alice secret\r\n");
	free(junk);
	msg = xmalloc(big + 1);
	for (size_t i = 0; i < big; i++)
		msg[i] = (i % 64) == 63 ? '\n' : (char)('a' + i % 26);
	memcpy(msg, "Subject: big\n\n", 14);
	msg[big] = '\0';
	cmd = xasprintf("2 APPEND Sent {%zu+}\r\n%s\r\n", big, msg);
	len = strlen(cmd);
	fixture_put(&out, "", 0);
	/* fed in 16 KiB reads, as a door would */
	while (off < len) {
		size_t n = len - off < 16384 ? len - off : 16384;

		off += imap_proto_input(p, cmd + off, n);
		while (imap_proto_action(p) == IMAP_ACT_EXEC) {
			execs++;
			act(p, &e);
		}
		drain(p, &out);
	}
	CU_ASSERT(execs >= big / (64u << 10));
	CU_ASSERT_PTR_NOT_NULL(strstr(out.s, "2 OK [APPENDUID "));
	free(out.s);
	/* the message comes back byte for byte, LF as CRLF */
	{
		struct fixture_buf want = { 0 };
		size_t bare = 0;
		char *hdr;

		for (size_t i = 0; i < big; i++)
			bare += msg[i] == '\n';
		hdr = xasprintf("* 1 FETCH (BODY[] {%zu}\r\n", big + bare);
		fixture_put(&want, hdr, strlen(hdr));
		for (size_t i = 0; i < big; i++) {
			if (msg[i] == '\n')
				fixture_put(&want, "\r", 1);
			fixture_put(&want, msg + i, 1);
		}
		fixture_put(&want, ")\r\n3 OK Fetch completed.\r\n", 26);
		junk = say(p, &e, "3 EXAMINE Sent\r\n");
		free(junk);
		junk = say(p, &e, "3 FETCH 1 BODY.PEEK[]\r\n");
		CU_ASSERT_EQUAL(strlen(junk), want.n);
		CU_ASSERT(strcmp(junk, want.s) == 0);
		free(junk);
		free(want.s);
		free(hdr);
	}
	/* 40 more messages: FETCH 1:* BODY[] in batches of at most 32 messages */
	for (int i = 0; i < 40; i++)
		deliver(&e, "Subject: many\n\nx\n");
	junk = say(p, &e, "4 SELECT INBOX\r\n");
	free(junk);
	out.s = NULL;
	out.n = out.cap = 0;
	fixture_put(&out, "", 0);
	(void)imap_proto_input(p, "5 FETCH 1:* (UID BODY.PEEK[TEXT])\r\n", 36);
	while (imap_proto_action(p) == IMAP_ACT_EXEC) {
		batches++;
		imap_proto_exec(p);
		imap_proto_exec_done(p);
		CU_ASSERT(imap_proto_output_pending(p) > 0);
		drain(p, &out);
	}
	CU_ASSERT(batches >= 2);
	CU_ASSERT_PTR_NOT_NULL(strstr(out.s, "* 42 FETCH (UID 42 BODY[TEXT] {3}\r\nx\r\n)\r\n"
	    "5 OK Fetch completed.\r\n"));
	free(out.s);
	free(cmd);
	free(msg);
	imap_proto_free(&p);
	store_free(&e);
}

/* four sessions on one folder doing random STORE, COPY, MOVE, EXPUNGE,
 * APPEND and FETCH in turns: afterwards every session, after a NOOP, sees
 * the same UIDs and flags as a fresh one (the store is the model) */
static void
test_imap_stress(void)
{
	struct imap_params prm = P_OPEN;
	struct imap_proto *s[4];
	struct env e;
	char *want = NULL, *junk;
	unsigned seed = 12345;

	store_make(&e);
	prm.store_root = e.root;
	for (int i = 0; i < 4; i++) {
		s[i] = imap_proto_new(&prm);
		imap_proto_start(s[i]);
		junk = say(s[i], &e, "1 LOGIN alice secret\r\n2 SELECT INBOX\r\n");
		free(junk);
	}
	for (int step = 0; step < 300; step++) {
		static const char *const ops[] = {
			"x STORE 1:3 +FLAGS (\\Seen $A)\r\n", "x UID STORE 1:* -FLAGS.SILENT ($A)\r\n",
			"x STORE 2 +FLAGS.SILENT (\\Deleted)\r\n", "x EXPUNGE\r\n", "x COPY 1:2 INBOX\r\n",
			"x MOVE 1 Archive\r\n", "x APPEND INBOX (\\Flagged) {9+}\r\nSubject: \r\n",
			"x FETCH 1:* (UID FLAGS BODY.PEEK[HEADER])\r\n", "x SEARCH ALL\r\n", "x NOOP\r\n",
			"x UID EXPUNGE 1:5\r\n", "x CLOSE\r\nx SELECT INBOX\r\n",
		};
		unsigned who, op;

		seed = seed * 1103515245u + 12345u;
		who = (seed >> 16) % 4;
		seed = seed * 1103515245u + 12345u;
		op = (seed >> 16) % (sizeof(ops) / sizeof(ops[0]));
		if (step % 37 == 0)
			deliver(&e, "Subject: d\n\nx\n");
		junk = say(s[who], &e, ops[op]);
		if ((strstr(junk, " BAD ") != NULL && strstr(junk, "Invalid messageset") == NULL) ||
		    strstr(junk, "SERVERBUG") != NULL || strstr(junk, "LIMIT") != NULL) {
			fprintf(stderr, "\nstress step %d session %u: %s-> %s", step, who, ops[op], junk);
			CU_FAIL("BAD or SERVERBUG");
		}
		free(junk);
	}
	/* a fresh session is the model */
	{
		struct imap_proto *f = imap_proto_new(&prm);

		imap_proto_start(f);
		junk = say(f, &e, "1 LOGIN alice secret\r\n2 EXAMINE INBOX\r\n");
		free(junk);
		want = say(f, &e, "3 UID FETCH 1:* (FLAGS)\r\n");
		imap_proto_free(&f);
	}
	for (int i = 0; i < 4; i++) {
		char *got;

		junk = say(s[i], &e, "8 NOOP\r\n");
		free(junk);
		got = say(s[i], &e, "3 UID FETCH 1:* (FLAGS)\r\n");
		/* \Recent differs per session: compare without it */
		for (char *r; (r = strstr(got, "\\Recent")) != NULL;) {
			size_t k = 7 + (r[7] == ' ');

			if (r > got && r[-1] == ' ' && r[7] != ' ')
				r--, k++;
			memmove(r, r + k, strlen(r + k) + 1);
		}
		if (strcmp(got, want) != 0) {
			fprintf(stderr, "\nsession %d:\n--- got\n%s--- want\n%s", i, got, want);
			CU_FAIL("a session's view differs from the store");
		}
		free(got);
		imap_proto_free(&s[i]);
	}
	free(want);
	store_free(&e);
}

static void
test_imap_dialogues(void)
{
	const char *err;

	CU_ASSERT_EQUAL_FATAL(sasl_init(&err), 0);
	setenv("TZ", "UTC", 1);
	tzset();
	for (const struct icase *c = icases; c->name != NULL; c++) {
		for (int mode = 0; mode < 5; mode++) {
			struct env e;
			struct fixture_buf out = { 0 };
			char *w1, *w2;

			fixture_put(&out, "", 0);
			store_make(&e);
			dialogue(c, mode, &out, &e);
			w1 = xstrdup("");
			w2 = expand(&e, c->want);
			if (strcmp(out.s, w2) != 0) {
				fprintf(stderr, "\nimap case '%s' mode %d:\n--- got\n%s--- want\n%s",
				    c->name, mode, out.s, w2);
				CU_FAIL(c->name);
			} else {
				CU_PASS(c->name);
			}
			store_free(&e);
			free(w1);
			free(w2);
			free(out.s);
		}
	}
}

static void
test_imap_list_match(void)
{
	static const struct {
		const char *pat, *name;
		int match;
	} rows[] = {
		{ "*", "INBOX", 1 }, { "*", "a.b.c", 1 }, { "%", "a", 1 }, { "%", "a.b", 0 },
		{ "a.%", "a.b", 1 }, { "a.%", "a.b.c", 0 }, { "a.*", "a.b.c", 1 },
		{ "a*c", "abc", 1 }, { "a*c", "a.b.c", 1 }, { "a%c", "a.c", 0 }, { "INBOX", "INBOX", 1 },
		{ "Sent", "sent", 0 }, { "", "", 1 }, { "a", "", 0 }, { "%.%", "a.b", 1 },
	};

	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
		if (imap_list_match(rows[i].pat, rows[i].name) != rows[i].match) {
			fprintf(stderr, "\nimap_list_match(%s, %s)\n", rows[i].pat, rows[i].name);
			CU_FAIL("imap_list_match");
		}
}

static CU_TestInfo tests[] = {
	{ "golden dialogues on a real store, whole/bytewise/random", test_imap_dialogues },
	{ "LIST patterns", test_imap_list_match },
	{ "two sessions, one folder: FETCH FLAGS, EXPUNGE, IDLE", test_imap_two_sessions },
	{ "two sessions: EXPUNGEs, then EXISTS, then FETCH of new mail", test_imap_view_sync },
	{ "a 1 MB APPEND in 64 KiB writes, FETCH in batches", test_imap_batches },
	{ "four sessions, random commands: every view ends as the store", test_imap_stress },
	{ NULL, NULL },
};

void
test_imap_proto_register(void)
{
	unit_suite("imap_proto", tests);
}
