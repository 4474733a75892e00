#!/usr/bin/python3
"""Pass-through session cache (relay_connection_cache_time): a downstream
session whose message is done carries the next message; a cached session
the downstream drops -- while it waits, or just as it is reused (a 421 or
a hang-up in answer to the new MAIL) -- costs the client nothing: the
message goes over a fresh connection and the client gets the downstream's
250. With relay_connection_cache_time = 0 every message has its session.
An unused cached session is closed with QUIT once its time is up.

The downstream is the harness's scriptable SMTP server (harness.fakesmtp,
threads on 127.0.0.1) that records each session's commands; the client is smtplib.
Last line: "N passed, N failed".
"""
import os
import smtplib
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import runner  # noqa: E402
from harness.daemon import SMTP_GATEWAY, Daemon  # noqa: E402
from harness.fakesmtp import FakeSMTP, verbs  # noqa: E402
CLIENT = "127.0.0.2"     # in relay_networks
BODY = b"From: a@example.org\r\nSubject: cache\r\n\r\nhello\r\n"


def Downstream():
    """Each session: cmds (verbs(s): ["EHLO", "MAIL", ...]), msgs (one per
    message taken), closed.  .on_mail(session, nth MAIL in it) may return
    "421" (reply 421 and close) or "drop" (close without a word) to play a
    downstream that ends a session just as it is reused."""
    return FakeSMTP({"pipelining": True, "final": lambda rec, txn:
                     b"250 2.0.0 queued as D%d\r\n" % len(rec["msgs"])}, backlog=64)


class Gateway:
    def __init__(self, down_port, cache_time):
        self.d = Daemon("dcache", SMTP_GATEWAY, relay_networks=CLIENT, relay_require_headers="",
                        delivery="relay:[127.0.0.1]:%d" % down_port,
                        relay_connection_cache_time=cache_time, log_level="info")
        self.d.start()
        self.port = self.d.port

    def send(self, rcpt="user@example.com"):
        """One message, one client session; returns (code, text) of the final dot."""
        s = smtplib.SMTP("127.0.0.1", self.port, source_address=(CLIENT, 0), timeout=10)
        try:
            s.ehlo("client.test")
            s.mail("a@example.org")
            code, text = s.rcpt(rcpt)
            if code != 250:
                return code, text
            code, text = s.data(BODY)
            s.quit()
            return code, text
        finally:
            s.close()

    def log_text(self):
        return self.d.log_text()

    def stop(self):
        rc = self.d.stop(10)[0]
        bad = self.d.sanitizer_lines()
        self.d.close()
        assert rc == 0 and not bad, "gateway exit %s; %s" % (rc, bad[:5])


def wait_for(cond, within):
    deadline = time.time() + within
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


class Cache(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.down = Downstream()
        cls.gw = Gateway(cls.down.port, 2)

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.down.stop()

    def setUp(self):
        # start each case with no cached session
        self.down.drop_all()
        wait_for(lambda: all(s["closed"] for s in self.down.sessions), 2)
        time.sleep(0.1)
        self.down.reset()

    def test_next_message_reuses_the_session(self):
        for i in range(3):
            code, text = self.gw.send()
            self.assertEqual(code, 250, text)
            self.assertIn(b"queued as D%d" % (i + 1), text,
                          "message %d did not go over the first session: %r" % (
                              i + 1, self.down.sessions))
        self.assertEqual(len(self.down.sessions), 1, self.down.sessions)
        cmds = verbs(self.down.sessions[0])
        self.assertEqual(cmds.count("EHLO"), 1, cmds)
        self.assertEqual(cmds.count("MAIL"), 3, cmds)
        self.assertNotIn("QUIT", cmds)

    def test_unused_session_gets_quit_when_its_time_is_up(self):
        code, text = self.gw.send()
        self.assertEqual(code, 250, text)
        t0 = time.time()
        rec = self.down.sessions[0]
        self.assertTrue(wait_for(lambda: rec["closed"], 5), "cached session never closed")
        took = time.time() - t0
        self.assertEqual(verbs(rec)[-1], "QUIT", rec["cmds"])
        self.assertGreater(took, 1.5, "closed after %.2f s, cache time is 2 s" % took)
        self.assertLess(took, 4.0, "closed only after %.2f s, cache time is 2 s" % took)

    def test_session_dropped_while_cached(self):
        code, text = self.gw.send()
        self.assertEqual(code, 250, text)
        self.down.drop_all()       # the downstream's idle timeout, silently
        self.assertTrue(wait_for(lambda: self.down.sessions[0]["closed"], 2))
        time.sleep(0.1)
        code, text = self.gw.send()
        self.assertEqual(code, 250, text)
        self.assertEqual(len(self.down.sessions), 2, self.down.sessions)
        self.assertEqual(len(self.down.sessions[1]["msgs"]), 1)

    def test_421_at_reuse_goes_on_a_fresh_session(self):
        self.assertEqual(self.gw.send()[0], 250)
        self.down.on_mail = lambda rec, n: "421" if n == 2 else None
        code, text = self.gw.send()
        self.assertEqual(code, 250, "%s %r; sessions %r" % (code, text, self.down.sessions))
        self.assertEqual([len(s["msgs"]) for s in self.down.sessions], [1, 1],
                         self.down.sessions)
        self.assertIn("reconnecting", self.gw.log_text())

    def test_hangup_at_reuse_goes_on_a_fresh_session(self):
        self.assertEqual(self.gw.send()[0], 250)
        self.down.on_mail = lambda rec, n: "drop" if n == 2 else None
        code, text = self.gw.send()
        self.assertEqual(code, 250, "%s %r; sessions %r" % (code, text, self.down.sessions))
        self.assertEqual([len(s["msgs"]) for s in self.down.sessions], [1, 1],
                         self.down.sessions)

    def test_a_fresh_session_that_fails_is_not_retried(self):
        # only a reused session is retried: a new one refusing MAIL is an answer
        self.down.on_mail = lambda rec, n: "421"
        code, text = self.gw.send()
        self.assertEqual(code, 421, "%s %r" % (code, text))
        self.assertEqual(len(self.down.sessions), 1, self.down.sessions)

    def test_session_opened_at_mail_and_lost_before_rcpt(self):
        # the downstream session opens when MAIL is accepted; a downstream
        # that drops it before the client's first RCPT costs the client nothing
        s = smtplib.SMTP("127.0.0.1", self.gw.port, source_address=(CLIENT, 0), timeout=10)
        try:
            s.ehlo("client.test")
            self.assertEqual(s.mail("a@example.org")[0], 250)
            self.assertTrue(wait_for(lambda: len(self.down.sessions) == 1 and
                                     "MAIL" in verbs(self.down.sessions[0]), 3),
                            "no downstream session opened at MAIL: %r" % self.down.sessions)
            self.down.drop_all()
            self.assertTrue(wait_for(lambda: self.down.sessions[0]["closed"], 2))
            time.sleep(0.2)
            code, text = s.rcpt("user@example.com")
            self.assertEqual(code, 250, text)
            code, text = s.data(BODY)
            self.assertEqual(code, 250, text)
            s.quit()
        finally:
            s.close()
        self.assertEqual([len(x["msgs"]) for x in self.down.sessions], [0, 1], self.down.sessions)

    def test_rset_keeps_the_session(self):
        # MAIL opens the downstream session; the client's RSET resets the
        # downstream transaction too and keeps the session for the next MAIL
        s = smtplib.SMTP("127.0.0.1", self.gw.port, source_address=(CLIENT, 0), timeout=10)
        try:
            s.ehlo("client.test")
            for _ in range(3):
                self.assertEqual(s.mail("a@example.org")[0], 250)
                self.assertEqual(s.rset()[0], 250)
                time.sleep(0.2)     # the downstream's 250 to our RSET
            self.assertEqual(s.mail("a@example.org")[0], 250)
            self.assertEqual(s.rcpt("user@example.com")[0], 250)
            code, text = s.data(BODY)
            self.assertEqual(code, 250, text)
            s.quit()
        finally:
            s.close()
        self.assertEqual(len(self.down.sessions), 1, self.down.sessions)
        cmds = verbs(self.down.sessions[0])
        self.assertEqual(cmds.count("RSET"), 3, cmds)
        self.assertEqual(cmds.count("MAIL"), 4, cmds)
        self.assertEqual(len(self.down.sessions[0]["msgs"]), 1)

    def test_parallel_clients_each_get_their_own_session(self):
        results = []

        def one():
            results.append(self.gw.send())
        ts = [threading.Thread(target=one) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(20)
        self.assertEqual([r[0] for r in results], [250] * 8, results)
        self.assertEqual(sum(len(s["msgs"]) for s in self.down.sessions), 8, self.down.sessions)
        self.assertLessEqual(len(self.down.sessions), 8)


class Stop(unittest.TestCase):
    def test_cached_session_gets_quit_when_the_gateway_stops(self):
        down = Downstream()
        gw = Gateway(down.port, 30)
        try:
            code, text = gw.send()
            self.assertEqual(code, 250, text)
            time.sleep(0.2)
            self.assertFalse(down.sessions[0]["closed"], "not cached: %r" % down.sessions)
        finally:
            gw.stop()
        try:
            self.assertTrue(wait_for(lambda: down.sessions[0]["closed"], 3), down.sessions)
            self.assertEqual(verbs(down.sessions[0])[-1], "QUIT", down.sessions)
        finally:
            down.stop()


class NoCache(unittest.TestCase):
    def test_cache_time_0_one_session_per_message(self):
        down = Downstream()
        gw = Gateway(down.port, 0)
        try:
            for _ in range(3):
                code, text = gw.send()
                self.assertEqual(code, 250, text)
            self.assertTrue(wait_for(lambda: len(down.sessions) == 3 and
                                     all(s["closed"] for s in down.sessions), 3),
                            down.sessions)
            for s in down.sessions:
                self.assertEqual(len(s["msgs"]), 1, s)
                self.assertEqual(verbs(s)[-1], "QUIT", s)
        finally:
            gw.stop()
            down.stop()


if __name__ == "__main__":
    sys.exit(runner.main(require=("portcullisd",)))
