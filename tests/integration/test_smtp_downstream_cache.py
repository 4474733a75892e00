#!/usr/bin/python3
"""Pass-through session cache (relay_connection_cache_time): a downstream
session whose message is done carries the next message; a cached session
the downstream drops -- while it waits, or just as it is reused (a 421 or
a hang-up in answer to the new MAIL) -- costs the client nothing: the
message goes over a fresh connection and the client gets the downstream's
250. With relay_connection_cache_time = 0 every message has its session.
An unused cached session is closed with QUIT once its time is up.

The downstream is a scriptable SMTP server in this file (threads, on
127.0.0.1) that records each session's commands; the client is smtplib.
Last line: "N passed, N failed".
"""
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("PORTCULLIS_BIN", os.path.join(REPO, "bin"))
CLIENT = "127.0.0.2"     # in relay_networks
BODY = b"From: a@example.org\r\nSubject: cache\r\n\r\nhello\r\n"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Downstream(threading.Thread):
    """Each session: {"cmds": [...], "messages": n, "closed": bool}.
    self.on_mail(session_record, nth_mail_in_session) may return "421" (reply
    421 and close) or "drop" (close without a word) to play a downstream
    that ends a session just as it is reused."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.sessions = []
        self.conns = []
        self.on_mail = None
        self.lock = threading.Lock()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def reset(self):
        with self.lock:
            self.sessions = []
            self.on_mail = None

    def drop_all(self):
        """Close every open session from our side (as an idle timeout would)."""
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def serve(self, c):
        rec = {"cmds": [], "messages": 0, "closed": False}
        with self.lock:
            self.sessions.append(rec)
            self.conns.append(c)
        f = c.makefile("rb")
        nmail = 0
        try:
            c.sendall(b"220 down ESMTP\r\n")
            while True:
                line = f.readline()
                if not line:
                    break
                cmd = line[:4].upper()
                rec["cmds"].append(cmd.decode("ascii", "replace"))
                if cmd == b"EHLO":
                    c.sendall(b"250-down\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif cmd == b"MAIL":
                    nmail += 1
                    act = self.on_mail(rec, nmail) if self.on_mail else None
                    if act == "421":
                        c.sendall(b"421 4.4.2 down: idle too long, closing\r\n")
                        break
                    if act == "drop":
                        break
                    c.sendall(b"250 2.1.0 ok\r\n")
                elif cmd in (b"RCPT", b"RSET", b"NOOP", b"HELO"):
                    c.sendall(b"250 2.0.0 ok\r\n")
                elif cmd == b"QUIT":
                    c.sendall(b"221 bye\r\n")
                    break
                elif cmd == b"DATA":
                    c.sendall(b"354 go\r\n")
                    while True:
                        d = f.readline()
                        if not d:
                            raise OSError("eof in DATA")
                        if d == b".\r\n":
                            break
                    rec["messages"] += 1
                    c.sendall(b"250 2.0.0 queued as D%d\r\n" % rec["messages"])
                else:
                    c.sendall(b"500 what\r\n")
        except OSError:
            pass
        rec["closed"] = True
        try:
            c.close()
        except OSError:
            pass

    def stop(self):
        self.sock.close()
        self.drop_all()


class Gateway:
    def __init__(self, down_port, cache_time):
        self.dir = tempfile.mkdtemp(prefix="portcullis-dcache-")
        self.port = free_port()
        conf = os.path.join(self.dir, "p.conf")
        with open(conf, "w") as f:
            f.write("state_dir = %s/state\nservices = smtp\nsmtp_listen = 127.0.0.1:%d\n"
                    "myhostname = mx.example.com\nmydomains = example.com\n"
                    "relay_networks = %s\nrelay_require_headers =\n"
                    "delivery = relay:[127.0.0.1]:%d\nrelay_connection_cache_time = %s\n"
                    "log_level = info\n" % (self.dir, self.port, CLIENT, down_port, cache_time))
        self.log = open(os.path.join(self.dir, "d.log"), "w+")
        self.proc = subprocess.Popen([os.path.join(BIN, "portcullisd"), "-c", conf, "-f"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("gateway did not listen")

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
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(10)
        text = self.log_text()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        bad = [l for l in text.splitlines() if "Sanitizer" in l or "runtime error:" in l]
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
        cls.down.start()
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
        cmds = self.down.sessions[0]["cmds"]
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
        self.assertEqual(rec["cmds"][-1], "QUIT", rec["cmds"])
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
        self.assertEqual(self.down.sessions[1]["messages"], 1)

    def test_421_at_reuse_goes_on_a_fresh_session(self):
        self.assertEqual(self.gw.send()[0], 250)
        self.down.on_mail = lambda rec, n: "421" if n == 2 else None
        code, text = self.gw.send()
        self.assertEqual(code, 250, "%s %r; sessions %r" % (code, text, self.down.sessions))
        self.assertEqual([s["messages"] for s in self.down.sessions], [1, 1],
                         self.down.sessions)
        self.assertIn("reconnecting", self.gw.log_text())

    def test_hangup_at_reuse_goes_on_a_fresh_session(self):
        self.assertEqual(self.gw.send()[0], 250)
        self.down.on_mail = lambda rec, n: "drop" if n == 2 else None
        code, text = self.gw.send()
        self.assertEqual(code, 250, "%s %r; sessions %r" % (code, text, self.down.sessions))
        self.assertEqual([s["messages"] for s in self.down.sessions], [1, 1],
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
                                     "MAIL" in self.down.sessions[0]["cmds"], 3),
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
        self.assertEqual([x["messages"] for x in self.down.sessions], [0, 1], self.down.sessions)

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
        cmds = self.down.sessions[0]["cmds"]
        self.assertEqual(cmds.count("RSET"), 3, cmds)
        self.assertEqual(cmds.count("MAIL"), 4, cmds)
        self.assertEqual(self.down.sessions[0]["messages"], 1)

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
        self.assertEqual(sum(s["messages"] for s in self.down.sessions), 8, self.down.sessions)
        self.assertLessEqual(len(self.down.sessions), 8)


class Stop(unittest.TestCase):
    def test_cached_session_gets_quit_when_the_gateway_stops(self):
        down = Downstream()
        down.start()
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
            self.assertEqual(down.sessions[0]["cmds"][-1], "QUIT", down.sessions)
        finally:
            down.stop()


class NoCache(unittest.TestCase):
    def test_cache_time_0_one_session_per_message(self):
        down = Downstream()
        down.start()
        gw = Gateway(down.port, 0)
        try:
            for _ in range(3):
                code, text = gw.send()
                self.assertEqual(code, 250, text)
            self.assertTrue(wait_for(lambda: len(down.sessions) == 3 and
                                     all(s["closed"] for s in down.sessions), 3),
                            down.sessions)
            for s in down.sessions:
                self.assertEqual(s["messages"], 1, s)
                self.assertEqual(s["cmds"][-1], "QUIT", s)
        finally:
            gw.stop()
            down.stop()


if __name__ == "__main__":
    res = unittest.main(exit=False, verbosity=2).result
    failed = len(res.failures) + len(res.errors)
    print("%d passed, %d failed" % (res.testsRun - failed - len(res.skipped), failed))
    sys.exit(1 if failed else 0)
