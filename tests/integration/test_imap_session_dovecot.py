#!/usr/bin/python3
"""The IMAP session (pop-imap-proxy/imap_proto.c) against a private Dovecot:
one scripted session of every supported command, run on two identical
copies of one Maildir++ store, the replies compared command by command.

The store is written as the gateway writes it (new/, names with ,S= and
,W=) with a plain, a multipart and a bare-LF message, and the special-use
folders; Dovecot opens it first (so both copies share dovecot-uidlist,
UIDVALIDITY and UIDs), then the store is copied: Dovecot runs the script on
one copy over IMAP, build/.../imap-session-tool (the session without the
door) on the other. Normalised before comparing: Dovecot's timing suffix
"(0.001 + 0.000 secs)", CAPABILITY lists, the special-use attributes our
LIST and LSUB add (this Dovecot has no special_use config) and Dovecot-only
untagged extras listed in IGNORE, the order of LIST/LSUB lines and \\Recent
(Dovecot's index gives it to the next session that opens a folder, our
Maildir to the one that moves new/ to cur/). Everything else must be
byte-identical.

Run: PORTCULLIS_BIN=build/asan/bin python3 tests/integration/test_imap_session_dovecot.py
"""
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import dovecot, runner  # noqa: E402
from harness.daemon import exe  # noqa: E402

TOOL = exe("imap-session-tool")
USER = "alice@example.com"

MSGS = [
    b"From: Ann <ann@example.org>\nTo: alice@example.com\nSubject: one\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\nMessage-ID: <1@example.org>\n\nline one\nline two\n",
    b"From: bob@example.org\r\nTo: alice@example.com, carol@example.net\r\nSubject: =?UTF-8?Q?caf=C3=A9?=\r\n"
    b"Date: Tue, 2 Jan 2024 11:00:00 +0100\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nhello there\r\n--b1\r\n"
    b"Content-Type: application/octet-stream; name=\"a.bin\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nAAECAwQF\r\n--b1--\r\n",
    b"From: dave@example.org\nSubject: three\n\nno newline at the end",
]
FOLDERS = ["Drafts", "Junk", "Sent", "Trash", "Archive", "Archive.2024"]

APPEND_MSG = b"From: me@example.com\r\nSubject: draft\r\n\r\nunfinished\r\n"

SCRIPT = [
    b"a1 SELECT INBOX",
    b"a2 FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)",
    b"a3 FETCH 1:* BODYSTRUCTURE",
    b"a4 UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)] BODY.PEEK[TEXT]<2.7>)",
    b"a5 FETCH 2 (BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[2] BODY)",
    b"a6 FETCH 3 BODY[]",
    b"a7 FETCH 1:3 FLAGS",
    b"a8 STORE 1 +FLAGS (\\Flagged $Label1)",
    b"a9 STORE 1:2 -FLAGS.SILENT (\\Seen)",
    b"b1 UID STORE 2 FLAGS (\\Answered)",
    b"b2 SEARCH UNSEEN",
    b"b3 SEARCH RETURN (MIN MAX COUNT) ALL",
    b"b4 UID SEARCH FROM bob",
    b"b5 SEARCH CHARSET UTF-8 SUBJECT \"caf\xc3\xa9\"",
    b"b6 SEARCH OR FLAGGED ANSWERED",
    b"b7 SEARCH BODY there",
    b"b8 SEARCH KEYWORD $Label1 LARGER 10",
    b"c1 COPY 1:2 Sent",
    b"c2 UID COPY 3 Nope",
    b"c3 UID MOVE 3 Trash",
    b"c4 STORE 1 +FLAGS.SILENT (\\Deleted)",
    b"c5 EXPUNGE",
    b"c6 FETCH 1:* (UID FLAGS)",
    b"d1 STATUS Sent (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)",
    b"d2 STATUS Trash (MESSAGES UIDNEXT)",
    b"d3 LIST \"\" *",
    b"d4 LIST \"\" %",
    b"d5 LIST Archive. %",
    b"d6 CREATE Work",
    b"d7 CREATE Work",
    b"d8 RENAME Work Job",
    b"d9 LIST \"\" J*",
    b"e1 DELETE Job",
    b"e2 DELETE Nope",
    b"e3 SUBSCRIBE Archive",
    b"e4 LSUB \"\" *",
    b"e5 UNSUBSCRIBE Archive",
    b"e6 APPEND Drafts (\\Draft) \" 5-Mar-2024 10:00:00 +0000\" {%d+}\r\n" % len(APPEND_MSG)
    + APPEND_MSG,
    b"e7 APPEND Nope {3+}\r\nabc",
    b"f1 EXAMINE Sent",
    b"f2 FETCH 1:* (UID FLAGS)",
    b"f3 STORE 1 +FLAGS (\\Deleted)",
    b"f4 FETCH 1 BODY[HEADER]",
    b"f5 FETCH 1 FLAGS",
    b"f6 SELECT Drafts",
    b"f7 FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])",
    b"f8 CLOSE",
    b"g1 NOOP",
    b"g2 FETCH 1 FLAGS",
    b"g3 NAMESPACE",
    b"g4 UNSELECT",
    b"h1 SELECT Nope",
    b"h2 SUBSCRIBE Nope",
    b"h3 STATUS Nope (MESSAGES)",
    b"h4 RENAME Nope Other",
    b"h5 CREATE Sent",
    b"h6 FETCH 1 FLAGS",
    b"h7 SELECT INBOX",
    b"h8 FETCH 1:* (FLAGS BODY[HEADER.FIELDS.NOT (To Date Message-ID MIME-Version Content-Type)])",
    b"h9 UID FETCH 1:* (RFC822.SIZE RFC822.HEADER)",
    b"i1 SELECT INBOX",
    b"i2 FETCH 1:* (RFC822.SIZE BODY.PEEK[]<0.10> BODY.PEEK[TEXT]<5.100>)",
    b"i3 FETCH 9 FLAGS",
    b"i4 FETCH 1 (BODY.PEEK[1.MIME] BODY.PEEK[1.TEXT] BODY.PEEK[3])",
    b"i5 UID FETCH 100:* UID",
    b"i6 SEARCH SINCE 1-Feb-1990 NOT BEFORE 1-Jan-2000 UID 1:*",
    b"i7 SEARCH HEADER Subject one",
    b"i8 SEARCH SENTBEFORE 2-Jan-2024",
    b"i9 UID SEARCH RETURN (ALL) 1:*",
    b"j1 SEARCH TEXT hello SMALLER 10000",
    b"j2 STORE 1 +FLAGS ($New1 $New2)",
    b"j3 STORE 9 +FLAGS (\\Seen)",
    b"j4 COPY 1 INBOX",
    b"j5 FETCH 1:* (UID FLAGS)",
    b"j6 STORE 2 +FLAGS.SILENT (\\Deleted)",
    b"j7 UID EXPUNGE 1",
    b"j8 UID EXPUNGE 1:*",
    b"j9 STATUS INBOX (MESSAGES UIDNEXT UNSEEN)",
    b"k1 LIST \"\" \"\"",
    b"k2 LIST \"\" Archive*",
    b"k3 LIST \"\" \"inbox\"",
    b"k4 CREATE \"a b\"",
    b"k5 LIST \"\" \"a*\"",
    b"k6 CREATE Archive.2025.Q1",
    b"k7 LIST \"\" Archive.%",
    b"k7b SUBSCRIBE Archive.2024",
    b"k7c SELECT Archive",
    b"k8 RENAME Archive Old",
    b"k8b LSUB \"\" *",
    b"k8c FETCH 1:* UID",
    b"k8d SELECT INBOX",
    b"k9 LIST \"\" *",
    b"l1 APPEND INBOX (\\Seen $Fresh) {5+}\r\nhello",
    b"l2 FETCH 1:* FLAGS",
    b"l3 MOVE 1 Trash",
    b"l4 EXPUNGE",
    b"l5 CHECK",
    b"l7 RFC822",
    b"l8 FETCH 1 RFC822",
    b"l9a FETCH 1 (FLAGS",
    b"l9b UID FROB 1",
    b"l9c STORE 1 FLAGS.BOGUS (\\Seen)",
    b"l9d FETCH 1 BODY[1",
    b"l9e SEARCH FOO",
    b"m1 SUBSCRIBE Old.2024",
    b"m2 LIST \"\" (Sent Trash Old*) RETURN (SUBSCRIBED CHILDREN)",
    b"m3 LIST (SUBSCRIBED) \"\" *",
    b"m4 DELETE Old.2024",
    b"m5 LIST (SUBSCRIBED RECURSIVEMATCH) \"\" *",
    b"m6 LIST \"\" * RETURN (SUBSCRIBED)",
    b"l9 FETCH 1 FLAGS",
    b"n1 EXAMINE Trash",
    b"n2 FETCH 1:* (UID RFC822.SIZE BODY.PEEK[]<0.30> BODY.PEEK[]<41.5> BODY.PEEK[TEXT]<3.9>)",
    b"n3 FETCH 1 (BODY.PEEK[HEADER]<10.20> BODY.PEEK[1] BODY.PEEK[1.MIME] BODY.PEEK[HEADER.FIELDS (FROM)])",
    b"n6 SEARCH NOT (FLAGGED OR DRAFT DELETED)",
    b"n7 SEARCH 1:* UNDELETED UNDRAFT UNFLAGGED UNANSWERED",
    b"n8 UID SEARCH RETURN (MIN MAX) UID 1:100",
    b"n9 SEARCH SENTSINCE 1-Jan-2024 SENTON 2-Jan-2024",
    b"o1 SEARCH ON 1-Jan-1990",
    b"o2 SEARCH CC carol TO alice BCC nobody",
    b"o3 FETCH 1:* (INTERNALDATE FLAGS)",
    b"o4 SEARCH RETURN (SAVE) ALL",
    b"o5 ID (\"name\" \"test\")",
    b"o6 UID FETCH * UID",
    b"o7 FETCH * (UID ENVELOPE)",
    b"o8 COPY * Junk",
    b"o9 STATUS Junk (MESSAGES UNSEEN)",
    b"p1 UNSELECT",
    b"p2 STORE 1 FLAGS.BOGUS (\\Seen)",
    b"p3 FETCH 1 BODY[1",
    b"p4 UID SEARCH FOO",
    b"p5 FETCH 1 FLAGS",
    b"p6 SELECT (",
    b"g5 LOGOUT",
]

# Dovecot-only untagged lines that are no difference for a client
IGNORE = [re.compile(rb"^\* OK \[(HIGHESTMODSEQ|NOMODSEQ)\b"), re.compile(rb"^\* ID ")]


def write_store(root):
    md = os.path.join(root, "example.com", "alice", "Maildir")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(md, sub), exist_ok=True)
    for f in FOLDERS:
        d = os.path.join(md, "." + f)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        open(os.path.join(d, "maildirfolder"), "w").close()
    with open(os.path.join(md, "subscriptions"), "w") as f:
        f.write("V\t2\n\nDrafts\nJunk\nSent\nTrash\n")
    for i, m in enumerate(MSGS):
        vsize = len(m) + m.count(b"\n") - m.count(b"\r\n")
        name = "1700000%03d.M%dP1.test,S=%d,W=%d" % (i, i, len(m), vsize)
        p = os.path.join(md, "new", name)
        with open(p, "wb") as f:
            f.write(m)
        os.utime(p, (1700000000 + i, 1700000000 + i))


def read_reply(f, tag):
    """the bytes up to and with the tagged line of TAG (literals followed)"""
    out = b""
    while True:
        line = f.readline()
        if not line:
            return out
        out += line
        m = re.search(rb"\{(\d+)\}\r\n$", line)
        while m:
            out += f.read(int(m.group(1)))
            line = f.readline()
            out += line
            m = re.search(rb"\{(\d+)\}\r\n$", line)
        if line.startswith(tag + b" "):
            return out


def normalise(b, ours):
    out, lists = [], []
    for line in b.split(b"\r\n"):
        line = re.sub(rb" \(\d+\.\d+ \+ \d+\.\d+(?: \+ \d+\.\d+)? secs\)\.$", b".", line)
        line = re.sub(rb"\[CAPABILITY [^\]]*\] ?", b"", line)
        if ours:
            line = re.sub(rb" ?\\(Sent|Drafts|Junk|Trash)\)", b")", line)   # LIST and LSUB
        if any(r.match(line) for r in IGNORE):
            continue
        # \Recent: Dovecot keeps it in its index for the next session to open
        # a folder; our Maildir gives it to the session that moves new/ to cur/
        line = line.replace(b" \\Recent", b"").replace(b"(\\Recent ", b"(").replace(
            b"(\\Recent)", b"()")
        line = re.sub(rb" RECENT \d+", b" RECENT n", line)
        if re.match(rb"^\* \d+ RECENT$", line):
            continue
        # LIST/LSUB order is not Dovecot's directory order
        if line.startswith((b"* LIST ", b"* LSUB ")):
            lists.append(line)
            continue
        out.append(line)
    return b"\r\n".join(sorted(lists) + out)


class SessionVersusDovecot(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not dovecot.installed(("imap",)):
            raise unittest.SkipTest("dovecot-imapd not installed (make deps)")
        assert os.access(TOOL, os.X_OK), "%s is missing (make asan builds it)" % TOOL
        cls.tmp = tempfile.mkdtemp(prefix="pc-imap-session-")
        os.chmod(cls.tmp, 0o755)   # Dovecot's auth process reads its passwd file below
        store = os.path.join(cls.tmp, "store")
        write_store(store)
        cls.dc = dovecot.Dovecot(cls.tmp, store=store, users={USER: "{PLAIN}pw"})
        cls.dc.start()
        # Dovecot opens every folder first: new/ -> cur/, the uidlists written
        c = cls.dc.imap(USER, "pw")
        for f in ["INBOX"] + FOLDERS:
            c.select(f)
        c.logout()
        cls.ours = os.path.join(cls.tmp, "ours")
        shutil.copytree(store, cls.ours, ignore=shutil.ignore_patterns("dovecot.index*",
                                                                       "dovecot.list.index*"))

    @classmethod
    def tearDownClass(cls):
        cls.dc.close()
        if os.environ.get("KEEP_LAB") != "1":
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def dovecot_replies(self):
        s = socket.create_connection(("127.0.0.1", self.dc.imap_port), timeout=15)
        f = s.makefile("rwb")
        f.readline()
        res = {}
        f.write(b"L LOGIN " + USER.encode() + b" pw\r\n")
        f.flush()
        read_reply(f, b"L")
        for cmd in SCRIPT:
            tag = cmd.split(b" ", 1)[0]
            f.write(cmd + b"\r\n")
            f.flush()
            res[tag] = read_reply(f, tag)
        s.close()
        return res

    def our_replies(self):
        script = b"L LOGIN " + USER.encode() + b" pw\r\n" + b"".join(c + b"\r\n" for c in SCRIPT)
        env = dict(os.environ, TZ="UTC")
        r = subprocess.run([TOOL, self.ours, USER], input=script, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        self.assertNotIn(b"runtime error", r.stderr)
        self.assertNotIn(b"AddressSanitizer", r.stderr)
        f = io.BytesIO(r.stdout)
        f.readline()
        read_reply(f, b"L")
        return {c.split(b" ", 1)[0]: read_reply(f, c.split(b" ", 1)[0]) for c in SCRIPT}

    def test_script(self):
        theirs = self.dovecot_replies()
        ours = self.our_replies()
        diffs = []
        for cmd in SCRIPT:
            tag = cmd.split(b" ", 1)[0]
            a = normalise(theirs.get(tag, b"<none>"), False)
            b = normalise(ours.get(tag, b"<none>"), True)
            if a != b:
                diffs.append("%s\n  dovecot: %r\n  ours:    %r" % (
                    cmd[:60].decode(errors="replace"), a, b))
        self.assertEqual(diffs, [], "\n" + "\n".join(diffs))


if __name__ == "__main__":
    sys.exit(runner.main())
