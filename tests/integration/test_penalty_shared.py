#!/usr/bin/python3
"""The failed-login penalty is one per node, not one per worker process
(issue 9: "a guesser rotating between SMTP AUTH, POP3 and IMAP is one
guesser"), seen by a real client (raw SMTP AUTH CRAM-MD5 over loopback):

    T01Reload       two failed AUTHs, then SIGHUP: the new SMTP worker
                    answers the third failure after the doubled delay (4 s,
                    not the first delay again) and bans at the same count
                    (554 at connect, auth-ban on the kill list)
    T02TwoWorkers   one session kept open on the draining old worker, new
                    sessions on its successor: failures alternating between
                    the two live processes add up (1, 2, 4, 4 s) and the 4th
                    bans, whichever process saw it; `portcullis stats`
                    counts the 4 under auth_total{door="smtp",result="failure"}
                    (one series for the node, whichever worker failed them)
    T03CrossDoor    one client guessing on SMTP AUTH, POP3 USER/PASS and
                    IMAP LOGIN in turn (services = smtp pop3 imap, three
                    worker processes): the delays go 1, 2, 4, 4 s across the
                    doors and the 4th failure bans the address from all
                    three (554 / -ERR / * BYE at connect); auth_total counts
                    each door's own failures (smtp 2, pop3 1, imap 1)

auth_failure_delay = 1s doubling to 4s, auth_failure_ban = 4/10m.

Run:  python3 tests/integration/test_penalty_shared.py [Class[.test]]...
Environment: PORTCULLIS_BIN (default <repo>/bin), KEEP_LAB=1.  Last line
"N passed, N failed".
"""

import os
import re
import signal
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_smtp_tls_auth as tls  # noqa: E402  (work area, Daemon, Client, main)
from harness.util import read, wait_until  # noqa: E402  (tests/ on the path now)

USER = tls.USER
PASSWORD = tls.PASSWORD
W = None


def setUpModule():
    global W
    W = tls.Work()
    tls.W = W


class Pop3:
    """A raw POP3 client bound to a source address (poplib cannot bind)."""

    def __init__(self, port, source, timeout=30):
        self.s = socket.create_connection(("127.0.0.1", port), timeout,
                                          source_address=(source, 0))
        self.f = self.s.makefile("rb")
        self.greeting = self.f.readline().decode("latin-1").rstrip("\r\n")

    def cmd(self, line):
        self.s.sendall(line.encode() + b"\r\n")
        return self.f.readline().decode("latin-1").rstrip("\r\n")

    def close(self):
        try:
            self.cmd("QUIT")
        except OSError:
            pass
        self.f.close()
        self.s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Imap:
    """A raw IMAP client bound to a source address."""

    def __init__(self, port, source, timeout=30):
        self.s = socket.create_connection(("127.0.0.1", port), timeout,
                                          source_address=(source, 0))
        self.f = self.s.makefile("rb")
        self.greeting = self.f.readline().decode("latin-1").rstrip("\r\n")
        self.n = 0

    def cmd(self, line):
        """the tagged reply to line (untagged ones skipped)"""
        self.n += 1
        tag = "a%d" % self.n
        self.s.sendall(("%s %s\r\n" % (tag, line)).encode())
        while True:
            r = self.f.readline().decode("latin-1").rstrip("\r\n")
            if not r or r.startswith(tag + " "):
                return r[len(tag) + 1:]

    def close(self):
        try:
            self.cmd("LOGOUT")
        except OSError:
            pass
        self.f.close()
        self.s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Case(tls.Case):
    EXTRA = {}

    @classmethod
    def setUpClass(cls):
        cls.d = tls.Daemon(W, cls.__name__.lower(), smtp_listen="auto",
                           users="file:" + os.path.join(W.dir, "users-" + cls.__name__),
                           auth_failure_delay="1s", auth_failure_delay_max="4s",
                           auth_failure_ban="4/10m", auth_failure_ban_time="1h", **cls.EXTRA)
        W.add_user(cls.d.conf, USER, PASSWORD)
        cls.d.start()
        cls.gen = 0

    def reload(self):
        """SIGHUP to the master; wait for its verdict "ok" and a new worker."""
        before = set(self.d.workers())
        status = os.path.join(W.dir, self.d.name + "-state", "reload-status")
        type(self).gen += 1
        self.d.proc.send_signal(signal.SIGHUP)

        def done():
            m = re.match(r"generation (\d+)\nresult (\w+)", read(status) or "")
            return m and int(m.group(1)) >= self.gen and m.group(2)
        wait_until(done, 30, what="reload %d" % self.gen)
        self.assertEqual(done(), "ok", read(status))
        wait_until(lambda: set(self.d.workers()) - before, 10, what="a new worker")
        return before

    def timed_fail(self, c):
        t0 = time.monotonic()
        code, _ = c.auth_cram(USER, "wrong")
        return code, time.monotonic() - t0

    def assertDelay(self, got, want, what):
        code, t = got
        self.assertEqual(code, 535, what)
        self.assertGreaterEqual(t, want - 0.05, "%s: reply after %.2f s, want %.0f s" % (
            what, t, want))
        self.assertLess(t, want + 0.9, "%s: reply after %.2f s, want %.0f s" % (what, t, want))

    def assertBanned(self, src):
        def greeting():
            try:
                with socket.create_connection(("127.0.0.1", self.d.ports["smtp"]), 5,
                                              source_address=(src, 0)) as s:
                    return s.recv(200)
            except OSError:
                return b""
        got = b""
        for _ in range(40):
            got = greeting()
            if got.startswith(b"554"):
                break
            time.sleep(0.05)
        self.assertTrue(got.startswith(b"554 5.7.1"), "a new connection got %r" % got)
        p = tls.run([os.path.join(tls.BIN, "portcullis"), "-c", self.d.conf, "kill", "list"])
        line = [l for l in p.stdout.splitlines() if src in l]
        self.assertTrue(line and "auth-ban" in line[0], p.stdout + p.stderr)


# ============================================================ T01 reload
class T01Reload(Case):
    def test_failures_before_reload_still_count(self):
        src = "127.0.0.61"
        with tls.Client(self.d.ports["smtp"], source=src, timeout=30) as c:
            c.ehlo()
            self.assertDelay(self.timed_fail(c), 1, "1st failure")
            self.assertDelay(self.timed_fail(c), 2, "2nd failure")
        old = self.reload()
        # the old worker had no session left: it is gone, the new one serves
        wait_until(lambda: not (old & set(self.d.workers())), 20, what="the old worker to exit")
        self.mark(self.d)
        with tls.Client(self.d.ports["smtp"], source=src, timeout=30) as c:
            c.ehlo()
            third = self.timed_fail(c)
            fourth = self.timed_fail(c)
        sys.stderr.write("\n  after the reload: failures answered after %.2f s, %.2f s\n" % (
            third[1], fourth[1]))
        self.assertDelay(third, 4, "3rd failure, by the new worker (the first delay again "
                         "means the reload forgot the client)")
        self.assertDelay(fourth, 4, "4th failure")
        self.assertBanned(src)
        self.assertRegex(self.log_since(self.d), r"4 failed logins from \[127\.0\.0\.61\]"
                         r".*reason=auth-ban")


# ======================================================= T02 two workers
class T02TwoWorkers(Case):
    def test_failures_on_two_live_workers_add_up(self):
        src = "127.0.0.62"
        with tls.Client(self.d.ports["smtp"], source=src, timeout=30) as old_conn:
            old_conn.ehlo()
            self.assertDelay(self.timed_fail(old_conn), 1, "1st failure (old worker)")
            old = self.reload()
            # the old worker drains: it still serves old_conn, beside the new one
            self.assertTrue(old & set(self.d.workers()), "the old worker should still serve "
                            "its session")
            self.mark(self.d)
            with tls.Client(self.d.ports["smtp"], source=src, timeout=30) as new_conn:
                new_conn.ehlo()
                self.assertDelay(self.timed_fail(new_conn), 2, "2nd failure (new worker)")
                self.assertDelay(self.timed_fail(old_conn), 4, "3rd failure (old worker)")
                self.assertTrue(old & set(self.d.workers()), "old worker gone too early")
                self.assertDelay(self.timed_fail(new_conn), 4, "4th failure (new worker)")
        self.assertBanned(src)
        self.assertRegex(self.log_since(self.d), r"4 failed logins from \[127\.0\.0\.62\]"
                         r".*reason=auth-ban")
        p = tls.run([os.path.join(tls.BIN, "portcullis"), "-c", self.d.conf, "stats"])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn('auth_total{door="smtp",result="failure"} 4\n', p.stdout)


# ======================================================= T03 cross-door
class T03CrossDoor(Case):
    """SMTP AUTH, POP3 USER/PASS and IMAP LOGIN from one address: one guesser."""
    POP3_PORT = tls.free_port()
    IMAP_PORT = tls.free_port()
    EXTRA = {"services": "smtp pop3 imap", "pop3_listen": "127.0.0.1:%d" % POP3_PORT,
             "imap_listen": "127.0.0.1:%d" % IMAP_PORT, "auth_allow_plaintext": "yes"}

    def pop3_fail(self, c):
        self.assertTrue(c.cmd("USER " + USER).startswith("+OK"))
        t0 = time.monotonic()
        r = c.cmd("PASS wrong")
        return (535 if r.startswith("-ERR") else r), time.monotonic() - t0

    def imap_fail(self, c):
        t0 = time.monotonic()
        r = c.cmd('LOGIN "%s" "wrong"' % USER)
        return (535 if r.startswith("NO") else r), time.monotonic() - t0

    def test_failures_on_smtp_pop3_and_imap_add_up(self):
        src = "127.0.0.63"
        for port in (self.POP3_PORT, self.IMAP_PORT):
            wait_until(lambda: tls.port_accepts("127.0.0.1", port), 10, what="door on %d" % port)
        self.mark(self.d)
        with tls.Client(self.d.ports["smtp"], source=src, timeout=30) as smtp, \
                Pop3(self.POP3_PORT, src) as pop, Imap(self.IMAP_PORT, src) as imap:
            self.assertTrue(pop.greeting.startswith("+OK"), pop.greeting)
            self.assertTrue(imap.greeting.startswith("* OK"), imap.greeting)
            smtp.ehlo()
            self.assertDelay(self.timed_fail(smtp), 1, "1st failure (SMTP AUTH)")
            self.assertDelay(self.pop3_fail(pop), 2, "2nd failure (POP3 PASS)")
            self.assertDelay(self.imap_fail(imap), 4, "3rd failure (IMAP LOGIN)")
            self.assertDelay(self.timed_fail(smtp), 4, "4th failure (SMTP AUTH)")
        self.assertBanned(src)

        def refused(cls, port, prefix):
            with cls(port, src) as c:
                return c.greeting if c.greeting.startswith(prefix) else None
        got = wait_until(lambda: refused(Pop3, self.POP3_PORT, "-ERR"), 10,
                         what="the POP3 door to refuse the banned client")
        self.assertTrue(got)
        got = wait_until(lambda: refused(Imap, self.IMAP_PORT, "* BYE"), 10,
                         what="the IMAP door to refuse the banned client")
        self.assertTrue(got)
        self.assertRegex(self.log_since(self.d), r"4 failed logins from \[127\.0\.0\.63\]"
                         r".*reason=auth-ban")
        p = tls.run([os.path.join(tls.BIN, "portcullis"), "-c", self.d.conf, "stats"])
        self.assertIn('auth_total{door="smtp",result="failure"} 2\n', p.stdout)
        self.assertIn('auth_total{door="pop3",result="failure"} 1\n', p.stdout)
        self.assertIn('auth_total{door="imap",result="failure"} 1\n', p.stdout)


CASES = [T01Reload, T02TwoWorkers, T03CrossDoor]


if __name__ == "__main__":
    sys.exit(tls.main(cases=CASES))
