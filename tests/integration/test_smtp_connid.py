#!/usr/bin/python3
"""Every connection has an id that every log line of it carries ("conn=ID"):
the door's own lines (connect, disconnect, timeouts), the engine's verdicts,
the pass-through session's lines and the delivery's, so one session's lines
can be picked out of a busy log.

  PassThrough  delivery = relay: to a scripted downstream: connect, the
               downstream session, the engine's "pass", "passed on
               downstream", disconnect: one id; a second session another
  Local        delivery = maildir: the "delivered:" line has the session's id
  Refused      a relay refusal (NOQUEUE reject) and the door's own refusal
               (unknown user) have the session's id

Run:  PORTCULLIS_BIN=build/asan/bin python3 tests/integration/test_smtp_connid.py
Last line printed: "N passed, N failed"; exit status 1 on any failure.
"""

import os
import re
import smtplib
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_smtp_service import Daemon                            # noqa: E402  (a harness Daemon)
from test_smtp_downstream_cache import Downstream               # noqa: E402  (a harness FakeSMTP)
from harness import runner                                      # noqa: E402  (tests/ on the path now)
from harness.util import wait_until                             # noqa: E402

ID = re.compile(r"\bconn=([0-9A-F]{12}) ")
BODY = b"From: a@example.org\r\nSubject: connid\r\n\r\nhello\r\n"


def session_ids(text):
    """connection ids in the order their "connect from" lines appear"""
    return re.findall(r"conn=([0-9A-F]{12}) connect from \[127\.0\.0\.1\]", text)


def lines_of(text, cid):
    return [l for l in text.splitlines() if "conn=%s " % cid in l]


def send(port, rcpt="user@example.com", sender="a@example.org"):
    s = smtplib.SMTP("127.0.0.1", port, timeout=10)
    try:
        s.ehlo("client.test")
        s.mail(sender)
        code, text = s.rcpt(rcpt)
        if code == 250:
            code, text = s.data(BODY)
        s.quit()
        return code, text
    finally:
        s.close()


class Base(unittest.TestCase):
    overrides = {}

    def setUp(self):
        # connect and disconnect lines are debug ones
        self.d = Daemon(**dict(self.overrides, log_level="debug")).start()

    def tearDown(self):
        self.d.cleanup(self)

    def session_lines(self, nth, want):
        """the lines of the nth session (counted from 0; the readiness
        probe, connect and disconnect only, excluded), once they include
        every pattern of want"""
        def ready():
            text = self.d.log_text()
            ids = [i for i in session_ids(text) if len(lines_of(text, i)) > 2]
            if len(ids) <= nth:
                return False
            got = lines_of(text, ids[nth])
            return all(any(re.search(w, l) for l in got) for w in want)
        wait_until(ready, 10, what="the session's log lines")
        text = self.d.log_text()
        ids = [i for i in session_ids(text) if len(lines_of(text, i)) > 2]
        return ids[nth], lines_of(text, ids[nth]), text

    def assert_untagged_none(self, text, patterns):
        """no line of these kinds is without an id"""
        for l in text.splitlines():
            if any(re.search(p, l) for p in patterns):
                self.assertRegex(l, ID, "a session's line without its id")


class PassThrough(Base):
    @classmethod
    def setUpClass(cls):
        cls.down = Downstream()
        cls.overrides = {"delivery": "relay:[127.0.0.1]:%d" % cls.down.port,
                         "relay_networks": "127.0.0.1", "relay_require_headers": "",
                         "relay_connection_cache_time": "0"}

    @classmethod
    def tearDownClass(cls):
        cls.down.stop()

    def test_one_id_per_session(self):
        for _ in range(2):
            code, _ = send(self.d.port)
            self.assertEqual(code, 250)
        want = [r"connect from", r"downstream \[127\.0\.0\.1\]:\d+: new session",
                r": pass: \S+ from", r"passed on downstream .*250",
                r"disconnect from"]
        first, lines1, _ = self.session_lines(0, want)
        second, lines2, text = self.session_lines(1, want)
        self.assertNotEqual(first, second)
        for lines in (lines1, lines2):
            for w in want:
                self.assertTrue(any(re.search(w, l) for l in lines),
                                "no %r line with the session's id in:\n%s" % (w, "\n".join(lines)))
        self.assert_untagged_none(text, [r"passed on downstream", r"downstream \[",
                                         r": pass: ", r"connect from", r"disconnect from"])


class Local(Base):
    overrides = {"relay_networks": "127.0.0.1", "users": ""}

    def test_delivery_line(self):
        code, _ = send(self.d.port)
        self.assertEqual(code, 250)
        cid, lines, text = self.session_lines(0, [r"delivered: from=<a@example\.org>",
                                                  r"disconnect from"])
        self.assertTrue(any(re.search(r": pass: ", l) for l in lines), "\n".join(lines))
        self.assert_untagged_none(text, [r"delivered: from=", r": pass: "])


class Refused(Base):
    overrides = {"relay_networks": "192.0.2.1"}

    def test_reject_line(self):
        code, _ = send(self.d.port, rcpt="someone@elsewhere.example")
        self.assertEqual(code, 554 if code == 554 else 550)
        cid, lines, text = self.session_lines(0, [r"NOQUEUE: reject: RCPT from .*reason=relay",
                                                  r"disconnect from"])
        self.assert_untagged_none(text, [r"NOQUEUE: reject"])

    def test_unknown_user_line(self):
        code, _ = send(self.d.port, rcpt="nobody@example.com")
        self.assertEqual(code, 550)
        cid, lines, text = self.session_lines(0, [r"reject: RCPT from .*reason=unknown-user",
                                                  r"disconnect from"])
        self.assert_untagged_none(text, [r"reason=unknown-user"])


if __name__ == "__main__":
    sys.exit(runner.main())
