#!/usr/bin/python3
"""The mail store and a real Dovecot serve one Maildir++ store in turn.

A private Dovecot (dovecot-imapd; its own config dir, base_dir and log, a
passwd-file passdb, a static userdb, IMAP on a free loopback port, nothing
else) reads the same store as storage-adapter/mailstore.h, driven here through
build/.../mailstore-tool. Python's imaplib is Dovecot's client. Asserted:
  1. mail delivered the way the gateway delivers (a file in new/) and mail
     appended through mailstore get UIDs when mailstore opens the folder, and
     Dovecot shows the same UIDs, UIDVALIDITY, sizes and bytes;
  2. flags and keywords set through Dovecot (UID STORE +FLAGS (\\Seen $Label))
     and a message APPENDed through Dovecot are read by mailstore with
     Dovecot's UIDs;
  3. flags and keywords set, and a message expunged, by mailstore are what
     Dovecot shows next;
  4. folders created, renamed and deleted by mailstore are what Dovecot lists,
     and a folder Dovecot creates is listed by mailstore;
  5. a dovecot-uidlist.lock held by a live process makes mailstore wait (it
     never assigns UIDs beside Dovecot's lock);
  6. mail sent with smtplib through a real portcullisd gateway (delivery =
     maildir:, which goes through mailstore_deliver_*) lands in new/ named
     with ,S= and ,W=, one message for two users; mailstore then Dovecot
     show it with the same UIDs, RFC822.SIZE and bytes;
  7. a dovecot-uidlist damaged while Dovecot has an index of the folder is
     rebuilt by mailstore with a larger UIDVALIDITY (and a log line), and
     Dovecot follows: same new UIDVALIDITY, same UIDs;
  8. at the same time, 4 mailstore processes and 2 Dovecot IMAP sessions
     APPEND to one folder (each side taking the uidlist lock its own way):
     every message gets one UID, no UID twice, both sides agree.

Run as root (CI): Dovecot refuses mail uid 0, so the store belongs to
"nobody" and mailstore-tool runs as nobody too. As another user, both run as
that user. Skipped when dovecot is not installed.

Run: PORTCULLIS_BIN=build/asan/bin python3 tests/integration/test_mailstore_dovecot.py
"""
import imaplib
import json
import os
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import dovecot, runner  # noqa: E402
from harness.daemon import SANITIZER_RE, Daemon, exe  # noqa: E402

TOOL = exe("mailstore-tool")
DOVECOT = dovecot.DOVECOT
PASSWORD = "secret-pw"
USERS = ["u%d@example.com" % i for i in range(1, 10)]


class Dovecot(dovecot.Dovecot):
    """the harness' private Dovecot (tests/harness/dovecot.py) in `base` itself,
    its store in base/store, for USERS with PASSWORD (PLAIN only); IMAP, or
    POP3 (test_pop3_dovecot), on self.port"""

    def __init__(self, base, protocols=("imap",)):
        super().__init__(os.path.dirname(base), name=os.path.basename(base),
                         protocols=protocols, mechanisms="plain",
                         users={u: "{PLAIN}" + PASSWORD for u in USERS})
        self.port = self.imap_port or self.pop3_port

    def imap(self, user, password=PASSWORD, tls=False):
        return super().imap(user, password, tls)


def imap_select(c, folder):
    typ, data = c.select('"%s"' % folder)
    assert typ == "OK", (typ, data)
    uv = int(c.response("UIDVALIDITY")[1][0])
    return int(data[0]), uv


def imap_messages(c):
    """{uid: (flags set, size)} of the selected folder"""
    typ, data = c.uid("FETCH", "1:*", "(FLAGS RFC822.SIZE)")
    assert typ == "OK", data
    out = {}
    for item in data:
        if item is None:
            continue
        line = item.decode() if isinstance(item, bytes) else item[0].decode()
        m = re.search(r"UID (\d+)", line)
        f = re.search(r"FLAGS \(([^)]*)\)", line)
        s = re.search(r"RFC822\.SIZE (\d+)", line)
        if m and f and s:
            out[int(m.group(1))] = (set(f.group(1).split()) - {"\\Recent"}, int(s.group(1)))
    return out


class MailstoreDovecot(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(DOVECOT):
            raise unittest.SkipTest("dovecot not installed (apt-get install dovecot-imapd)")
        assert os.access(TOOL, os.X_OK), "%s is missing (make asan builds it)" % TOOL
        cls.tmp = tempfile.mkdtemp(prefix="pc-mailstore-dovecot-")
        cls.dc = Dovecot(cls.tmp)
        cls.dc.start()

    @classmethod
    def tearDownClass(cls):
        cls.dc.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def tool(self, user, *args, check=True, binary=False):
        kw = {}
        if os.getuid() == 0:
            kw = {"user": self.dc.uid, "group": self.dc.gid}
        r = subprocess.run([TOOL, self.dc.store, user] + list(args), capture_output=True,
                           timeout=60, **kw)
        stderr = r.stderr.decode(errors="replace")
        if check and r.returncode != 0:
            self.fail("mailstore-tool %s: %s" % (" ".join(args), stderr))
        self.assertNotIn("ERROR: AddressSanitizer", stderr)
        self.assertNotIn("runtime error", stderr)
        if not binary:
            r.stdout = r.stdout.decode()
        return r

    def listing(self, user, folder="INBOX"):
        return json.loads(self.tool(user, "list", folder).stdout)

    def deliver_like_gateway(self, user, text):
        """a file in new/ as storage-adapter/maildir.c writes it"""
        md = self.dc.maildir(user)
        for d in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(md, d), exist_ok=True)
        name = "%d.M%dP%dQ0.%s" % (int(time.time()), int(time.time() * 1e6) % 1000000,
                                   os.getpid(), "gw")
        tmp = os.path.join(md, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(text)
        os.rename(tmp, os.path.join(md, "new", name))
        self.chown_tree(os.path.join(self.dc.store))

    def chown_tree(self, top):
        if os.getuid() != 0:
            return
        for dirpath, dirs, files in os.walk(top):
            os.chown(dirpath, self.dc.uid, self.dc.gid)
            for f in files:
                os.chown(os.path.join(dirpath, f), self.dc.uid, self.dc.gid)

    def append(self, user, text, letters="-", *keywords, folder="INBOX"):
        path = os.path.join(self.tmp, "msg.eml")
        with open(path, "wb") as f:
            f.write(text)
        os.chmod(path, 0o644)
        return int(self.tool(user, "append", folder, path, letters, *keywords).stdout)

    def test_1_portcullis_uids_are_dovecots(self):
        user = USERS[0]
        m1 = b"From: a@example.org\nSubject: gateway\n\nline one\nline two\n"
        m2 = b"From: b@example.org\r\nSubject: appended\r\n\r\nbody\r\n"
        m3 = b"From: c@example.org\nSubject: seen draft\n\nthree\n"
        self.deliver_like_gateway(user, m1)
        first = self.listing(user)["messages"]
        # \Recent for the session that moved it out of new/, and for no other
        self.assertEqual([(m["uid"], m["recent"]) for m in first], [(1, True)])
        u2 = self.append(user, m2)
        u3 = self.append(user, m3, "SD")
        ls = self.listing(user)
        uids = [m["uid"] for m in ls["messages"]]
        self.assertEqual(uids, [1, 2, 3])
        self.assertEqual((u2, u3), (2, 3))
        self.assertEqual(ls["uidnext"], 4)
        # appended: \Recent for the next session that selects, as in Dovecot
        self.assertEqual([m["uid"] for m in ls["messages"] if m["recent"]], [2, 3])
        self.assertFalse(any(m["recent"] for m in self.listing(user)["messages"]))
        # new/ emptied into cur/ with ":2," as Dovecot does
        self.assertEqual(os.listdir(os.path.join(self.dc.maildir(user), "new")), [])

        c = self.dc.imap(user)
        try:
            exists, uv = imap_select(c, "INBOX")
            self.assertEqual(exists, 3)
            self.assertEqual(uv, ls["uidvalidity"])
            msgs = imap_messages(c)
            self.assertEqual(sorted(msgs), [1, 2, 3])
            self.assertEqual(msgs[3][0], {"\\Seen", "\\Draft"})
            self.assertEqual(msgs[2][0], set())
            # RFC822.SIZE counts CRLF: mailstore's vsize agrees with Dovecot's;
            # so does the internal date
            for m in ls["messages"]:
                self.assertEqual(msgs[m["uid"]][1], m["vsize"], m)
                typ, data = c.uid("FETCH", str(m["uid"]), "(INTERNALDATE)")
                self.assertEqual(int(time.mktime(imaplib.Internaldate2tuple(data[0]))),
                                 m["date"], (m, data))
            typ, data = c.uid("FETCH", "2", "(BODY.PEEK[])")
            self.assertEqual(data[0][1], m2)
            typ, data = c.uid("FETCH", "1", "(BODY.PEEK[])")
            self.assertEqual(data[0][1].replace(b"\r\n", b"\n"), m1)
        finally:
            c.logout()
        # and after Dovecot had the folder, mailstore sees the same again
        ls2 = self.listing(user)
        self.assertEqual(ls2["uidvalidity"], ls["uidvalidity"])
        self.assertEqual([m["uid"] for m in ls2["messages"]], [1, 2, 3])
        self.assertEqual(self.tool(user, "cat", "INBOX", "2", binary=True).stdout, m2)

    def test_2_dovecot_flags_read_by_mailstore(self):
        user = USERS[1]
        self.append(user, b"Subject: one\n\n1\n")
        self.append(user, b"Subject: two\n\n2\n")
        uv = self.listing(user)["uidvalidity"]
        c = self.dc.imap(user)
        try:
            imap_select(c, "INBOX")
            typ, _ = c.uid("STORE", "1", "+FLAGS", "(\\Seen $Label)")
            self.assertEqual(typ, "OK")
            typ, _ = c.uid("STORE", "2", "+FLAGS", "(\\Flagged \\Answered NonJunk)")
            self.assertEqual(typ, "OK")
            typ, data = c.append("INBOX", "(\\Seen Work)", None,
                                 b"Subject: from dovecot\r\n\r\nx\r\n")
            self.assertEqual(typ, "OK")
            m = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
            self.assertEqual(int(m.group(1)), uv)
            dc_uid = int(m.group(2))
        finally:
            c.logout()
        ls = self.listing(user)
        self.assertEqual(ls["uidvalidity"], uv)
        by = {m["uid"]: m for m in ls["messages"]}
        self.assertEqual(sorted(by), [1, 2, dc_uid])
        self.assertEqual(set(by[1]["flags"]), {"\\Seen"})
        self.assertEqual(by[1]["keywords"], ["$Label"])
        self.assertEqual(set(by[2]["flags"]), {"\\Flagged", "\\Answered"})
        self.assertEqual(by[2]["keywords"], ["NonJunk"])
        self.assertEqual(set(by[dc_uid]["flags"]), {"\\Seen"})
        self.assertEqual(by[dc_uid]["keywords"], ["Work"])
        # a message mailstore appends now comes after Dovecot's
        self.assertEqual(self.append(user, b"Subject: after\n\n"), dc_uid + 1)

    def test_3_mailstore_flags_and_expunge_seen_by_dovecot(self):
        user = USERS[2]
        for i in range(3):
            self.append(user, b"Subject: m%d\n\n%d\n" % (i, i))
        c = self.dc.imap(user)
        try:
            exists, uv = imap_select(c, "INBOX")   # Dovecot builds its index first
            self.assertEqual(exists, 3)
        finally:
            c.logout()
        self.tool(user, "store", "INBOX", "1", "+", "FS", "$Work", "Important")
        self.tool(user, "store", "INBOX", "3", "=", "R")
        self.tool(user, "expunge", "INBOX", "2")
        c = self.dc.imap(user)
        try:
            exists, uv2 = imap_select(c, "INBOX")
            self.assertEqual(uv2, uv)
            self.assertEqual(exists, 2)
            msgs = imap_messages(c)
            self.assertEqual(sorted(msgs), [1, 3])
            self.assertEqual(msgs[1][0], {"\\Flagged", "\\Seen", "$Work", "Important"})
            self.assertEqual(msgs[3][0], {"\\Answered"})
            # removing through mailstore while Dovecot's session is open
            self.tool(user, "store", "INBOX", "1", "-", "F", "$Work")
            c.noop()
            msgs = imap_messages(c)
            self.assertEqual(msgs[1][0], {"\\Seen", "Important"})
            typ, data = c.uid("SEARCH", "KEYWORD", "Important")
            self.assertEqual(data[0].split(), [b"1"])
        finally:
            c.logout()

    def test_4_folders_both_ways(self):
        user = USERS[3]
        self.tool(user, "list", "INBOX")
        self.tool(user, "create", "Projects")
        self.tool(user, "create", "Projects.Portcullis")
        self.append(user, b"Subject: in a folder\n\n", "S", folder="Projects.Portcullis")
        c = self.dc.imap(user)
        try:
            typ, data = c.list()
            names = {l.decode().rsplit(" ", 1)[1].strip('"') for l in data}
            self.assertTrue({"INBOX", "Projects", "Projects.Portcullis"} <= names, names)
            self.assertTrue(all(b'"."' in l for l in data), data)   # separator '.'
            exists, _ = imap_select(c, "Projects.Portcullis")
            self.assertEqual(exists, 1)
            self.assertEqual(c.create("FromDovecot")[0], "OK")
            self.assertEqual(c.create("FromDovecot.Child")[0], "OK")
        finally:
            c.logout()
        folders = self.tool(user, "folders").stdout.split()
        self.assertEqual(folders[0], "INBOX")
        self.assertTrue({"FromDovecot", "FromDovecot.Child", "Projects",
                         "Projects.Portcullis"} <= set(folders), folders)
        self.tool(user, "rename", "Projects", "Archive")
        self.tool(user, "delete", "FromDovecot.Child")
        c = self.dc.imap(user)
        try:
            typ, data = c.list()
            names = {l.decode().rsplit(" ", 1)[1].strip('"') for l in data}
            self.assertIn("Archive.Portcullis", names)
            self.assertNotIn("Projects.Portcullis", names)
            self.assertNotIn("FromDovecot.Child", names)
            exists, _ = imap_select(c, "Archive.Portcullis")
            self.assertEqual(exists, 1)
            self.assertEqual(set(imap_messages(c)[1][0]), {"\\Seen"})
            # one UIDVALIDITY counter (dovecot-uidvalidity) for both servers:
            # no two folders share a value
            uvs = {}
            for n in sorted(names - {"FromDovecot.Child", "Projects.Portcullis", "Projects"}):
                typ, data = c.status('"%s"' % n, "(UIDVALIDITY)")
                self.assertEqual(typ, "OK", (n, data))
                uvs[n] = int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))
            self.assertEqual(len(set(uvs.values())), len(uvs), uvs)
        finally:
            c.logout()

    def test_5_uidlist_lock_is_respected(self):
        user = USERS[4]
        self.append(user, b"Subject: one\n\n")
        md = self.dc.maildir(user)
        lock = os.path.join(md, "dovecot-uidlist.lock")
        # a live process holds the lock (as Dovecot would while assigning UIDs)
        holder = subprocess.Popen(["sleep", "30"])
        try:
            with open(lock, "w") as f:
                f.write("%d:%s" % (holder.pid, os.uname().nodename))
            self.chown_tree(md)
            self.deliver_like_gateway(user, b"Subject: two\n\n")
            t0 = time.monotonic()
            p = subprocess.Popen([TOOL, self.dc.store, user, "list", "INBOX"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 **({"user": self.dc.uid, "group": self.dc.gid}
                                    if os.getuid() == 0 else {}))
            time.sleep(1.5)
            self.assertIsNone(p.poll(), "mailstore did not wait for the lock")
            os.unlink(lock)
            out, err = p.communicate(timeout=30)
            self.assertEqual(p.returncode, 0, err)
            self.assertGreater(time.monotonic() - t0, 1.4)
            ls = json.loads(out)
            self.assertEqual([m["uid"] for m in ls["messages"]], [1, 2])
        finally:
            holder.kill()
            holder.wait()

    def test_6_gateway_delivery_reaches_dovecot(self):
        rcpts = [USERS[5], USERS[6]]
        d = os.path.join(self.tmp, "gw")
        os.makedirs(d)
        gw = Daemon("store-gw", (
            ("services", "smtp"), ("smtp_listen", "127.0.0.1:{port}"),
            ("myhostname", "mx.store.test"), ("mydomains", "example.com"),
            ("relay_networks", "127.0.0.1"), ("state_dir", "{dir}/state"),
            ("log_level", "info"), ("delivery", "maildir:%s" % self.dc.store),
            ("users", "file:{dir}/users")), dir=d)
        port = gw.port
        for u in rcpts:
            p = gw.cli("user", "add", u, "--password-stdin", input="pw-secret\n", check=False)
            self.assertEqual(p.returncode, 0, p.stderr)
        try:
            gw.start(timeout=15)
            bodies = [b"Subject: gw %d\r\nMessage-ID: <gw%d@store.test>\r\n\r\nline\r\n%s\r\n"
                      % (i, i, b"x" * (100 * i)) for i in range(2)]
            for b in bodies:
                with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
                    c.sendmail("s@outside.test", rcpts, b)
        finally:
            stopped = gw.stop(15)
        self.assertFalse(stopped and stopped[2], "the gateway did not stop on SIGTERM in 15 s")
        bad = [l for l in gw.log_text().splitlines() if SANITIZER_RE.search(l)]
        self.assertEqual(bad, [])
        new = os.path.join(self.dc.maildir(rcpts[0]), "new")
        names = sorted(os.listdir(new))
        self.assertEqual(len(names), 2)
        for n in names:
            self.assertRegex(n, r"^\d+\.M\d+P\d+Q\d+\.[^,]+,S=\d+,W=\d+$")
        # one file for both users: hard links
        other = sorted(os.listdir(os.path.join(self.dc.maildir(rcpts[1]), "new")))
        self.assertEqual(names, other)
        self.assertEqual(os.stat(os.path.join(new, names[0])).st_nlink, 2)
        files = {}
        for n in names:
            with open(os.path.join(new, n), "rb") as f:
                files[n] = f.read()
        self.chown_tree(self.dc.store)
        ls = self.listing(rcpts[0])
        self.assertEqual([m["uid"] for m in ls["messages"]], [1, 2])
        c = self.dc.imap(rcpts[0])
        try:
            exists, uv = imap_select(c, "INBOX")
            self.assertEqual((exists, uv), (2, ls["uidvalidity"]))
            msgs = imap_messages(c)
            for m in ls["messages"]:
                self.assertEqual(msgs[m["uid"]][1], m["vsize"])
            # UIDs in delivery order (Dovecot's: seconds, then microseconds);
            # the bytes are the file's, and what mailstore reads for that UID
            for uid in (1, 2):
                typ, data = c.uid("FETCH", str(uid), "(BODY.PEEK[])")
                self.assertIn(data[0][1], files.values())
                self.assertIn(b"<gw%d@store.test>" % (uid - 1), data[0][1])
                self.assertIn(b"Return-Path: <s@outside.test>", data[0][1])
                self.assertEqual(self.tool(rcpts[0], "cat", "INBOX", str(uid),
                                           binary=True).stdout, data[0][1])
        finally:
            c.logout()
        # the second user's copy: Dovecot first this time, mailstore agrees
        c = self.dc.imap(rcpts[1])
        try:
            exists, uv = imap_select(c, "INBOX")
            self.assertEqual(exists, 2)
            dmsgs = imap_messages(c)
        finally:
            c.logout()
        ls = self.listing(rcpts[1])
        self.assertEqual(ls["uidvalidity"], uv)
        self.assertEqual(sorted(dmsgs), [m["uid"] for m in ls["messages"]])

    def test_7_damaged_uidlist_rebuilt_and_dovecot_follows(self):
        user = USERS[7]
        for i in range(3):
            self.append(user, b"Subject: d%d\n\n%d\n" % (i, i))
        c = self.dc.imap(user)
        try:
            exists, uv = imap_select(c, "INBOX")
            self.assertEqual(exists, 3)
        finally:
            c.logout()
        ul = os.path.join(self.dc.maildir(user), "dovecot-uidlist")
        with open(ul, "wb") as f:
            f.write(b"3 V1 N1 Gnot-a-guid\n\x00\xff garbage\n2 :../../etc/passwd\n")
        r = self.tool(user, "list", "INBOX")
        self.assertIn("dovecot-uidlist is broken", r.stderr.decode())
        ls = json.loads(r.stdout)
        self.assertGreater(ls["uidvalidity"], uv)
        self.assertEqual([m["uid"] for m in ls["messages"]], [1, 2, 3])
        with open(ul) as f:
            self.assertTrue(f.readline().startswith("3 V%d N4 G" % ls["uidvalidity"]))
        c = self.dc.imap(user)
        try:
            exists, uv2 = imap_select(c, "INBOX")
            self.assertEqual((exists, uv2), (3, ls["uidvalidity"]))
            self.assertEqual(sorted(imap_messages(c)), [1, 2, 3])
        finally:
            c.logout()

    def test_8_concurrent_appends_share_the_lock(self):
        user = USERS[8]
        self.tool(user, "list", "INBOX")
        path = os.path.join(self.tmp, "c.eml")
        with open(path, "wb") as f:
            f.write(b"Subject: concurrent\n\nx\n")
        os.chmod(path, 0o644)
        script = "for i in 1 2 3 4 5 6 7 8 9 10; do %s %s %s append INBOX %s - || exit 1; done" % (
            TOOL, self.dc.store, user, path)
        kw = {"user": self.dc.uid, "group": self.dc.gid} if os.getuid() == 0 else {}
        procs = [subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, **kw) for _ in range(4)]
        dc_uids = []

        def dovecot_appends():
            c = self.dc.imap(user)
            try:
                for i in range(10):
                    typ, data = c.append("INBOX", None, None, b"Subject: dc\r\n\r\ny\r\n")
                    assert typ == "OK", data
                    dc_uids.append(int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1)))
            finally:
                c.logout()
        import threading
        ts = [threading.Thread(target=dovecot_appends) for _ in range(2)]
        for t in ts:
            t.start()
        ours = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            self.assertEqual(p.returncode, 0, err)
            ours += [int(x) for x in out.split()]
        for t in ts:
            t.join(120)
        self.assertEqual(len(ours), 40)
        self.assertEqual(len(dc_uids), 20)
        self.assertEqual(len(set(ours) | set(dc_uids)), 60, (sorted(ours), sorted(dc_uids)))
        ls = self.listing(user)
        self.assertEqual(sorted(m["uid"] for m in ls["messages"]), sorted(ours + dc_uids))
        c = self.dc.imap(user)
        try:
            exists, uv = imap_select(c, "INBOX")
            self.assertEqual((exists, uv), (60, ls["uidvalidity"]))
            self.assertEqual(sorted(imap_messages(c)), sorted(ours + dc_uids))
        finally:
            c.logout()


if __name__ == "__main__":
    sys.exit(runner.main(require=("portcullisd", "portcullis", "mailstore-tool")))
