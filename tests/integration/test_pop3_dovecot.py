#!/usr/bin/python3
"""The POP3 core and Dovecot's pop3 serve one Maildir++ store in turn.

A private Dovecot (dovecot-pop3d, set up as in test_mailstore_dovecot.py but
speaking POP3 on a free loopback port) and build/.../pop3-tool (the POP3 core
of pop-imap-proxy/pop3_proto.c on the mail store, on its own loopback port)
are read by Python's poplib with the same script. Asserted:
  1. mail delivered the way the gateway delivers (new/, names with ,S= and
     ,W=, and one without): when Portcullis opens the mailbox first, Dovecot
     answers STAT, LIST, UIDL, RETR and TOP exactly as Portcullis did
     (UIDL is Dovecot's default %08Xu%08Xv, sizes are CRLF octets);
  2. the other way round: Dovecot assigns the UIDs, Portcullis answers the same;
  3. DELE is applied only at QUIT: a session that drops without QUIT deletes
     nothing; after DELE+QUIT Dovecot lists the rest with unchanged UIDLs,
     and messages retrieved through Portcullis are \\Seen for Dovecot's IMAP
     view too (checked through the file names' flags).

Run: PORTCULLIS_BIN=build/asan/bin python3 tests/integration/test_pop3_dovecot.py
"""
import os
import poplib
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_mailstore_dovecot as tmd  # noqa: E402
from harness import runner  # noqa: E402  (test_mailstore_dovecot put tests/ on the path)
from harness.daemon import exe  # noqa: E402

TOOL = exe("pop3-tool")
POP3 = "/usr/lib/dovecot/pop3"

MSGS = [
    b"From: a@example.org\nSubject: one\n\nline one\n.dot line\n..two dots\n",
    b"From: b@example.org\r\nSubject: two\r\n\r\nbody\r\n",
    b"From: c@example.org\nSubject: three\n\nno newline at the end",
]


class Pop3Dovecot(tmd.Dovecot):
    """test_mailstore_dovecot's private Dovecot, POP3 only"""

    def __init__(self, base):
        super().__init__(base, protocols=("pop3",))


class Pop3VersusDovecot(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(tmd.DOVECOT) or not os.path.exists(POP3):
            raise unittest.SkipTest("dovecot-pop3d not installed (make deps)")
        assert os.access(TOOL, os.X_OK), "%s is missing (make asan builds it)" % TOOL
        cls.tmp = tempfile.mkdtemp(prefix="pc-pop3-dovecot-")
        cls.dc = Pop3Dovecot(cls.tmp)
        cls.dc.start()
        kw = {}
        if os.getuid() == 0:
            kw = {"user": cls.dc.uid, "group": cls.dc.gid}
        cls.err = open(os.path.join(cls.tmp, "pop3-tool.err"), "w")
        cls.tool = subprocess.Popen([TOOL, cls.dc.store], stdout=subprocess.PIPE,
                                    stderr=cls.err, **kw)
        cls.tool_port = int(cls.tool.stdout.readline())

    @classmethod
    def tearDownClass(cls):
        cls.tool.terminate()
        cls.tool.wait(10)
        cls.tool.stdout.close()
        cls.err.close()
        with open(os.path.join(cls.tmp, "pop3-tool.err")) as f:
            err = f.read()
        cls.dc.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        assert "ERROR: AddressSanitizer" not in err, err
        assert "runtime error" not in err, err

    def deliver(self, user):
        """files in new/ as the gateway writes them: ,S= and ,W= (and one bare name)"""
        local, domain = user.split("@")
        md = os.path.join(self.dc.store, domain, local, "Maildir")
        for d in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(md, d), exist_ok=True)
        for i, m in enumerate(MSGS):
            name = "%d.M%dP%dQ%d.gw" % (int(time.time()), i, os.getpid(), i)
            if i != 2:
                vsize = len(m) + m.count(b"\n") - m.count(b"\r\n")
                name += ",S=%d,W=%d" % (len(m), vsize)
            with open(os.path.join(md, "tmp", name), "wb") as f:
                f.write(m)
            os.rename(os.path.join(md, "tmp", name), os.path.join(md, "new", name))
        if os.getuid() == 0:
            for dirpath, dirs, files in os.walk(self.dc.store):
                os.chown(dirpath, self.dc.uid, self.dc.gid)
                for f in files:
                    os.chown(os.path.join(dirpath, f), self.dc.uid, self.dc.gid)
        return md

    def login(self, port, user):
        p = poplib.POP3("127.0.0.1", port, timeout=15)
        p.user(user)
        p.pass_(tmd.PASSWORD)
        return p

    def script(self, port, user):
        """what a reader sees: every answer of a full read-only session"""
        p = self.login(port, user)
        out = {"stat": p._shortcmd("STAT"), "list": p.list(), "uidl": p.uidl()}
        n = int(out["stat"].split()[1])
        out["list1"] = p.list(1)
        out["uidl2"] = p.uidl(2)
        for i in range(1, n + 1):
            out["retr%d" % i] = p.retr(i)
            out["top%d" % i] = p.top(i, 1)
        out["bad"] = self.error_of(lambda: p.retr(n + 1))
        p.quit()
        return out

    @staticmethod
    def error_of(f):
        try:
            f()
        except poplib.error_proto as e:
            return e.args[0]
        return None

    def compare(self, ours, theirs):
        self.assertEqual(sorted(ours), sorted(theirs))
        for k in ours:
            self.assertEqual(ours[k], theirs[k], k)

    def test_1_portcullis_first(self):
        user = tmd.USERS[0]
        self.deliver(user)
        ours = self.script(self.tool_port, user)
        self.assertEqual(ours["stat"], b"+OK 3 %d" % sum(
            len(m) + m.count(b"\n") - m.count(b"\r\n") for m in MSGS))
        self.assertEqual(ours["retr1"][1][4:6], [b".dot line", b"..two dots"])
        theirs = self.script(self.dc.port, user)
        self.compare(ours, theirs)

    def test_2_dovecot_first(self):
        user = tmd.USERS[1]
        self.deliver(user)
        theirs = self.script(self.dc.port, user)
        ours = self.script(self.tool_port, user)
        self.compare(ours, theirs)

    def test_3_dele_only_at_quit(self):
        user = tmd.USERS[2]
        md = self.deliver(user)
        before = self.login(self.tool_port, user)
        uidl = before.uidl()[1]
        self.assertEqual(len(uidl), 3)
        before.dele(1)
        before.close()  # dropped without QUIT: nothing deleted
        time.sleep(0.2)
        p = self.login(self.dc.port, user)
        self.assertEqual(p.stat()[0], 3)
        p.quit()
        p = self.login(self.tool_port, user)
        p.retr(3)
        self.assertEqual(p.dele(2), b"+OK Marked to be deleted.")
        self.assertEqual(p.quit(), b"+OK Logging out, messages deleted.")
        p = self.login(self.dc.port, user)
        self.assertEqual(p.stat()[0], 2)
        self.assertEqual(p.uidl()[1], [b"1 " + uidl[0].split()[1], b"2 " + uidl[2].split()[1]])
        p.quit()
        cur = os.listdir(os.path.join(md, "cur"))
        seen = [f for f in cur if f.split(":2,")[-1].find("S") >= 0]
        self.assertEqual(len(cur), 2)
        self.assertGreaterEqual(len(seen), 1)


if __name__ == "__main__":
    sys.exit(runner.main(require=("pop3-tool",)))
