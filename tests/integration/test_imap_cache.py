#!/usr/bin/python3
"""The IMAP door's message string cache (storage-adapter/mailstore_cache.c):
ENVELOPE, BODY and BODYSTRUCTURE computed once per message, kept in memory
and in the folder's portcullis.cache, as a client sees it.

    T01Cache     FETCH answers the same from the cache as computed; the
                 file appears in the Maildir; a restarted daemon (a fresh
                 process) answers from the file (a marker value put in it
                 comes back); an expunged message leaves the file; a flag
                 change keeps its entry
    T02Damaged   a damaged file: the answers are computed again (right), a
                 log line says so, the file is written anew and valid

Run: PORTCULLIS_BIN=build/asan/bin python3 tests/integration/test_imap_cache.py
"""
import imaplib
import os
import re
import shutil
import smtplib
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import runner  # noqa: E402
from harness.daemon import Daemon  # noqa: E402
from harness.ports import free_port  # noqa: E402
from harness.util import wait_until  # noqa: E402

USER = "cache@example.com"
PASSWORD = "cache-password"
ITEMS = "(ENVELOPE BODY BODYSTRUCTURE)"


def parse_cache(data):
    """[(base, [v0, v1, v2])] of a portcullis.cache (the format of mailstore_cache.h)"""
    head = b"portcullis-cache 1\n"
    assert data.startswith(head), data[:40]
    p, out = len(head), []
    while not data.startswith(b"end ", p):
        nl = data.index(b"\n", p)
        nums = data[p:nl].split(b" ")
        p = nl + 1
        bl = int(nums[0])
        base = data[p:p + bl]
        p += bl
        vals = []
        for n in nums[1:]:
            if n == b"-":
                vals.append(None)
            else:
                vals.append(data[p:p + int(n)])
                p += int(n)
        assert data[p:p + 1] == b"\n"
        p += 1
        out.append((base, vals))
    assert data[p:] == b"end %d\n" % len(out), data[p:]
    return out


def format_cache(recs):
    out = [b"portcullis-cache 1\n"]
    for base, vals in recs:
        out.append(b"%d %s\n" % (len(base), b" ".join(b"-" if v is None else b"%d" % len(v)
                                                     for v in vals)))
        out.append(base + b"".join(v for v in vals if v is not None) + b"\n")
    out.append(b"end %d\n" % len(recs))
    return b"".join(out)


class Lab:
    def __init__(self, name):
        self.mail = tempfile.mkdtemp(prefix="pc-imapcache-")
        os.chmod(self.mail, 0o755)
        self.imap_port = free_port()
        self.d = Daemon(name, {
            "services": "smtp imap",
            "smtp_listen": "127.0.0.1:{port}",
            "myhostname": "mx.example.com",
            "mydomains": "example.com",
            "state_dir": "{dir}/state",
            "delivery": "maildir:%s" % self.mail,
            "imap_listen": "127.0.0.1:%d" % self.imap_port,
            "auth_allow_plaintext": "yes",
            "auth_failure_delay": "0",
        })
        self.d.cli("user", "add", USER, "--password-stdin", input=PASSWORD + "\n")
        self.start()
        self.md = os.path.join(self.mail, "example.com", "cache", "Maildir")

    def start(self):
        self.d.start()
        wait_until(lambda: self.accepts(), 10, what="the imap door")

    def accepts(self):
        try:
            imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=2).logout()
            return True
        except OSError:
            return False

    def send(self, i):
        msg = ("From: \"Sender %d\" <s%d@outside.test>\r\nTo: <%s>\r\nSubject: cached %d\r\n"
               "Message-ID: <c%d.%f@outside.test>\r\nMIME-Version: 1.0\r\n"
               "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
               "Content-Type: text/plain; charset=utf-8\r\n\r\npart %d\r\n--b--\r\n"
               % (i, i, USER, i, i, time.time(), i))
        with smtplib.SMTP("127.0.0.1", self.d.port, timeout=15) as s:
            s.sendmail("s@outside.test", [USER], msg.encode())

    def login(self):
        c = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=15)
        c.login(USER, PASSWORD)
        return c

    def fetch(self, c, items=ITEMS):
        typ, data = c.uid("FETCH", "1:*", items)
        assert typ == "OK", data
        return data

    def cache_file(self):
        return os.path.join(self.md, "portcullis.cache")

    def close(self):
        self.d.stop()
        self.d.assert_clean()
        self.d.close()
        shutil.rmtree(self.mail, ignore_errors=True)


def cur_base(md, subject_no):
    for name in os.listdir(os.path.join(md, "cur")):
        with open(os.path.join(md, "cur", name), "rb") as f:
            if b"Subject: cached %d\r\n" % subject_no in f.read():
                return name.split(":")[0].encode()
    raise AssertionError("message %d not in cur/" % subject_no)


class T01Cache(unittest.TestCase):
    def setUp(self):
        self.lab = Lab("imapcache1")
        for i in range(3):
            self.lab.send(i)

    def tearDown(self):
        self.lab.close()

    def test_cache_file_fresh_process_expunge(self):
        lab = self.lab
        c = lab.login()
        c.select("INBOX")
        first = lab.fetch(c)
        again = lab.fetch(c)
        self.assertEqual(first, again)
        self.assertIn(b"ENVELOPE", first[0][0] if isinstance(first[0], tuple) else first[0])
        c.logout()
        self.assertTrue(os.path.exists(lab.cache_file()))
        with open(lab.cache_file(), "rb") as f:
            recs = parse_cache(f.read())
        self.assertEqual(len(recs), 3)
        self.assertTrue(all(v[0] and v[1] and v[2] for _b, v in recs))
        # a fresh process answers from the file: a marker put in it comes back
        lab.d.stop()
        b0 = cur_base(lab.md, 0)
        marker = b'("marker" NIL NIL NIL NIL NIL NIL NIL NIL NIL)'
        recs = [(b, [marker, v[1], v[2]] if b == b0 else v) for b, v in recs]
        with open(lab.cache_file(), "wb") as f:
            f.write(format_cache(recs))
        lab.start()
        c = lab.login()
        c.select("INBOX")
        data = lab.fetch(c, "(ENVELOPE)")
        text = b"".join(d[0] + d[1] if isinstance(d, tuple) else d for d in data)
        self.assertEqual(text.count(b"marker"), 1, text[:300])
        # a flag change keeps the entry (the base name stays)
        typ, _ = c.store("1:*", "+FLAGS", "(\\Flagged)")
        self.assertEqual(typ, "OK")
        data = lab.fetch(c, "(ENVELOPE)")
        text = b"".join(d[0] + d[1] if isinstance(d, tuple) else d for d in data)
        self.assertEqual(text.count(b"marker"), 1)
        # an expunged message leaves the file at the next write
        b1 = cur_base(lab.md, 1)
        typ, _ = c.uid("STORE", "2", "+FLAGS", "(\\Deleted)")
        self.assertEqual(typ, "OK")
        c.expunge()
        lab.send(3)
        c.noop()
        lab.fetch(c)
        c.logout()
        with open(lab.cache_file(), "rb") as f:
            bases = [b for b, _v in parse_cache(f.read())]
        self.assertNotIn(b1, bases)
        self.assertIn(cur_base(lab.md, 3), bases)
        self.assertEqual(len(bases), 3)


class T02Damaged(unittest.TestCase):
    def setUp(self):
        self.lab = Lab("imapcache2")
        for i in range(2):
            self.lab.send(i)

    def tearDown(self):
        self.lab.close()

    def test_damaged_file_rebuilt(self):
        lab = self.lab
        c = lab.login()
        c.select("INBOX")
        right = lab.fetch(c)
        c.logout()
        lab.d.stop()
        with open(lab.cache_file(), "wb") as f:
            f.write(b"portcullis-cache 1\n40 99999 - -\nnot what it says")
        mark = lab.d.log_mark()
        lab.start()
        c = lab.login()
        c.select("INBOX")
        self.assertEqual(lab.fetch(c), right)
        c.logout()
        self.assertRegex(lab.d.log_since(mark), r"portcullis\.cache is damaged \(.*\): rebuilt")
        with open(lab.cache_file(), "rb") as f:
            self.assertEqual(len(parse_cache(f.read())), 2)


if __name__ == "__main__":
    sys.exit(runner.main())
