#!/usr/bin/python3
"""A downstream 421 ends the client's session once it is passed on.

RFC 5321 §3.8: 421 means the service is closing the channel. In pass-through
the gateway mirrors the downstream's replies; a 421 among them (to RCPT, to
DATA, as the final reply, or out of turn in the middle of the body) reaches
the client and then the gateway closes the client's connection too, as
Postfix's smtpd does after its before-queue filter says 421, instead of
leaving the client in a session whose downstream has gone. Other 4xx keep
the session. The gateway serves the next client normally afterwards.

The downstream is the scriptable one of tests/harness/fakesmtp.py.
Last line "N passed, N failed".
"""
import os
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_smtp_downstream_faults import DownstreamFaults, code, token  # noqa: E402
from harness import runner  # noqa: E402  (test_smtp_downstream_faults put tests/ on the path)

R421 = b"421 4.3.2 downstream shutting down\r\n"


class Downstream421(DownstreamFaults):
    # the fault tests of the base class are not run again here
    def assert_closed(self, c):
        """The gateway hung up: EOF (nothing more) within a few seconds."""
        c.s.settimeout(5)
        try:
            rest = c.f.readline()
        except (socket.timeout, OSError) as e:
            self.fail("the gateway kept the session open after 421: %r" % e)
        self.assertEqual(rest, b"", "after the 421 the gateway said %r" % rest)

    def assert_serves_fresh(self):
        """The next client is served, on a downstream session other than the
        one that said 421 (which is never reused: it is closing)."""
        n = len(self.down.sessions)
        self.assert_serves()
        self.assertGreater(len(self.down.sessions), n, "the 421 session was reused")

    def assert_open(self, c):
        self.assertEqual(code(c.cmd(b"NOOP")), 250)

    def test_421_to_rcpt(self):
        self.down.mode = {"rcpt": R421}
        c = self.client()
        r = self.begin(c)
        self.assertEqual(r, R421)
        self.assert_closed(c)
        self.assert_serves_fresh()

    def test_421_to_mail_mirrored_at_rcpt(self):
        self.down.mode = {"mail": R421}
        c = self.client()
        r = self.begin(c)
        self.assertEqual(code(r), 421, r)
        self.assert_closed(c)
        self.assert_serves_fresh()

    def test_421_to_data(self):
        self.down.mode = {"data": R421}
        c = self.client()
        self.assertEqual(code(self.begin(c)), 250)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        c.s.sendall(self.message(token()) + b".\r\n")
        self.assertEqual(c.reply(), R421)
        self.assert_closed(c)
        self.assert_serves_fresh()

    def test_421_final_reply(self):
        self.down.mode = {"final": R421}
        c = self.client()
        self.assertEqual(code(self.begin(c)), 250)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        c.s.sendall(self.message(token()) + b".\r\n")
        self.assertEqual(c.reply(), R421)
        self.assert_closed(c)
        self.assert_serves_fresh()

    def test_421_in_the_middle_of_the_body(self):
        self.down.mode = {"abort_after": 200000}
        c = self.client()
        self.assertEqual(code(self.begin(c)), 250)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        r = self.send_big(c, token())
        self.assertEqual(code(r), 421, r)
        self.assert_closed(c)
        self.assert_serves_fresh()

    def test_450_keeps_the_session(self):
        self.down.mode = {"rcpt": b"450 4.2.0 mailbox busy\r\n"}
        c = self.client()
        self.assertEqual(code(self.begin(c)), 450)
        self.assert_open(c)
        c.close()
        self.down.drop_all()    # the cached session keeps the mode it was opened with
        self.assert_serves()


def own_tests(names):
    """The tests of this class only (the fault tests of the base class are
    not run again here), or those named."""
    loader = unittest.TestLoader()
    return [Downstream421(n) for n in (names or [
        n for n in loader.getTestCaseNames(Downstream421)
        if n not in loader.getTestCaseNames(DownstreamFaults)])]


if __name__ == "__main__":
    sys.exit(runner.main(suite=own_tests, require=("portcullisd",)))
