#!/usr/bin/python3
"""Pass-through streams: the downstream gets the message while the client is
still sending it, and a message refused at the end is abandoned mid-DATA
(the downstream never sees its final dot, so it discards it).

The downstream is the harness's recording SMTP server (harness.fakesmtp: the
test sees each transaction's bytes arrive and whether the final dot came); the client is
python smtplib over raw sends. Last line: "N passed, N failed".
"""
import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import runner  # noqa: E402
from harness.daemon import SMTP_GATEWAY, Daemon  # noqa: E402
from harness.fakesmtp import FakeSMTP  # noqa: E402


class Stream(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # transactions: {"raw" (grows as the body arrives), "dot", "closed", ...}
        cls.down = FakeSMTP({"ehlo": b"250 down\r\n"}, backlog=16)
        cls.d = Daemon("stream", SMTP_GATEWAY, relay_networks="127.0.0.2",
                       message_size_limit=20000000,
                       delivery="relay:[127.0.0.1]:%d" % cls.down.port)
        cls.d.start()
        cls.port = cls.d.port

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop(10)[0]
        cls.down.stop()
        bad = cls.d.sanitizer_lines()
        cls.d.close()
        assert rc == 0 and not bad, "daemon exit %s; %s" % (rc, bad[:5])

    def session(self):
        s = socket.create_connection(("127.0.0.1", self.port), 10,
                                     source_address=("127.0.0.2", 0))
        f = s.makefile("rb")

        def reply():
            while True:
                line = f.readline()
                if not line or line[3:4] != b"-":
                    return line
        self.assertTrue(reply().startswith(b"220"))
        for cmd, want in ((b"EHLO c.test", b"250"), (b"MAIL FROM:<a@example.com>", b"250"),
                          (b"RCPT TO:<b@other.org>", b"250"), (b"DATA", b"354")):
            s.sendall(cmd + b"\r\n")
            r = reply()
            self.assertTrue(r.startswith(want), (cmd, r))
        return s, reply

    def test_downstream_gets_bytes_before_the_client_is_done(self):
        before = len(self.down.transactions)
        s, reply = self.session()
        head = b"From: a@example.com\r\nSubject: stream\r\n\r\n"
        s.sendall(head + (b"y" * 78 + b"\r\n") * 13000)  # ~1 MB, no final dot yet
        rec = None
        deadline = time.time() + 5
        while time.time() < deadline:
            recs = self.down.transactions[before:]
            if recs and len(recs[-1]["raw"]) > 500000:
                rec = recs[-1]
                break
            time.sleep(0.02)
        self.assertIsNotNone(rec, "the downstream got no body while the client was still sending: "
                             "%r" % self.down.transactions[before:])
        self.assertFalse(rec["dot"])
        s.sendall((b"z" * 78 + b"\r\n") * 13000 + b".\r\n")
        r = reply()
        self.assertTrue(r.startswith(b"250 2.0.0 queued downstream"), r)
        self.assertTrue(rec["dot"])
        self.assertGreater(len(rec["raw"]), 2000000)
        s.close()

    def test_refused_at_the_end_is_abandoned_downstream(self):
        before = len(self.down.transactions)
        s, reply = self.session()
        # relayed without From:/Reply-To: refused at the final dot, after ~1 MB streamed
        s.sendall(b"Subject: no from\r\n\r\n" + (b"q" * 78 + b"\r\n") * 13000 + b".\r\n")
        r = reply()
        self.assertTrue(r.startswith(b"550 5.7.1"), r)
        deadline = time.time() + 5
        while time.time() < deadline and not all(x["closed"] for x in self.down.transactions[before:]):
            time.sleep(0.02)
        recs = self.down.transactions[before:]
        self.assertTrue(recs, "no downstream session")
        self.assertTrue(all(not x["dot"] for x in recs), "the downstream got a final dot: %r" % recs)
        self.assertTrue(all(x["closed"] for x in recs), recs)
        # the client's session goes on
        s.sendall(b"NOOP\r\n")
        self.assertTrue(reply().startswith(b"250"))
        s.close()

    def test_bare_lf_refused_and_abandoned(self):
        before = len(self.down.transactions)
        s, reply = self.session()
        s.sendall(b"From: a@example.com\r\n\r\n" + (b"w" * 78 + b"\r\n") * 13000 +
                  b"smuggle\n.\nMAIL FROM:<x@evil.example>\r\n.\r\n")
        r = reply()
        self.assertTrue(r.startswith(b"550 5.5.2"), r)
        time.sleep(0.3)
        self.assertTrue(all(not x["dot"] for x in self.down.transactions[before:]))
        s.close()


if __name__ == "__main__":
    sys.exit(runner.main(require=("portcullisd",)))
