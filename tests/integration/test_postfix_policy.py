#!/usr/bin/python3
"""The Postfix policy door behind a real Postfix: Postfix asks portcullisd
(check_policy_service) inside its own relay decision, with exactly the
main.cf lines the README gives:

    mynetworks = 127.0.0.1/32
    smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated,
        check_policy_service inet:127.0.0.1:PORT, reject_unauth_destination

so a client on 127.0.0.5 is outside.  No milter: the policy door alone.
Asserts what the SMTP client was told and what reached the smtp-sink.

Run:  python3 tests/integration/test_postfix_policy.py [-v] [Class[.test_name] ...]
Env:  PORTCULLIS_BIN (default <repo>/bin), KEEP_LAB=1, LAB_VERBOSE=1
Last line printed: "N passed, N failed"; exit status 1 on any failure.
"""

import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import daemon as hdaemon, runner            # noqa: E402
from harness.client import make_message, new_marker      # noqa: E402
from harness.ports import free_port                      # noqa: E402
from harness.postfix import Lab                          # noqa: E402
from harness.util import wait_until                      # noqa: E402

LAB = None
OUTSIDE = "127.0.0.5"
KILLED = "127.0.0.6"
SENDER = "sender@outside.test"
FOREIGN = "user@other.org"
LOCAL = "user@example.com"
LIST_DELAY = 1.0      # a list change is enforced within this (README)


class PolicyLab(Lab):
    """The lab's Postfix with the README's policy door lines; the policy
    door listens on the port the lab picked for the milter (on a port of
    its own when the milter is there too)."""

    def main_cf(self):
        if not hasattr(self, "policy_port"):
            self.policy_port = self.milter_port
            while self.milter and self.policy_port in (self.milter_port, self.smtp_port,
                                                      self.sink_port):
                self.policy_port = free_port()
        self.main_cf_extra.update({
            "mynetworks": "127.0.0.1/32",
            "smtpd_relay_restrictions":
                "permit_mynetworks, permit_sasl_authenticated, "
                "check_policy_service inet:127.0.0.1:%d, reject_unauth_destination"
                % self.policy_port,
            "smtpd_policy_service_timeout": "10s",
            "smtpd_policy_service_max_idle": "300s",
            "smtpd_policy_service_max_ttl": "1000s",
            "smtpd_policy_service_try_limit": "2",
            "smtpd_policy_service_retry_delay": "1s",
            "smtpd_policy_service_default_action": "451 4.3.5 Server configuration problem",
        })
        return super().main_cf()


# policy_timeout short, so a stalled peer is seen to be dropped within the test
DAEMON = {"services": "policy", "milter_listen": None, "policy_timeout": "2"}


def start_daemon():
    LAB.start_daemon(policy_listen="inet:127.0.0.1:%d" % LAB.milter_port, **DAEMON)


def setUpModule():
    global LAB
    for exe in ("portcullisd", "portcullis"):
        p = os.path.join(hdaemon.BIN, exe)
        if not os.access(p, os.X_OK):
            raise RuntimeError("%s is missing: build with `make` first" % p)
    LAB = PolicyLab(milter=False, ipv6=False, name="portcullis-policy")
    start_daemon()


def tearDownModule():
    global LAB
    if LAB is None:
        return
    try:
        stop = LAB.stop_daemon()
        bad = LAB.sanitizer_reports()
        if bad:
            raise AssertionError("sanitizer reports in %s:\n%s" % (LAB.daemon_log,
                                                                  "\n".join(bad[:40])))
        if stop and stop[0] is not None and stop[0] != 0:
            raise AssertionError("portcullisd exited %s on SIGTERM" % stop[0])
    finally:
        LAB.close()
        LAB = None


def policy_request(**kw):
    a = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
         "protocol_name": "ESMTP", "client_address": OUTSIDE, "client_name": "unknown",
         "helo_name": "client.test", "sender": SENDER, "recipient": FOREIGN}
    a.update(kw)
    return ("".join("%s=%s\n" % kv for kv in a.items() if kv[1] is not None) + "\n").encode()


def read_answer(s, timeout=5.0):
    """Bytes up to the empty line that ends an answer; b'' on close."""
    s.settimeout(timeout)
    buf = b""
    while b"\n\n" not in buf:
        try:
            d = s.recv(4096)
        except ConnectionResetError:
            return buf
        if not d:
            return buf
        buf += d
    return buf


class PolicyCase(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        if not LAB.daemon_alive():
            start_daemon()
        self.mark = LAB.log_mark()

    def tearDown(self):
        if not LAB.daemon_alive():
            log = LAB.daemon_log_since(self.mark)
            LAB.stop_daemon()
            start_daemon()
            self.fail("portcullisd died during this test; its log:\n%s" % log[-4000:])

    def ctx(self, *clients):
        parts = ["client transcript:\n" + c.transcript() for c in clients]
        parts.append("portcullisd.log (this test):\n  " + "\n  ".join(
            LAB.daemon_log_since(self.mark).splitlines()[-20:]))
        parts.append("maillog (this test):\n  " + "\n  ".join(
            LAB.maillog_since(self.mark).splitlines()[-15:]))
        return "\n".join(parts)

    def assertRcpt(self, c, code, text=None, what=""):
        st = c.step("RCPT")
        self.assertIsNotNone(st, "%s: no RCPT step\n%s" % (what, self.ctx(c)))
        good = st.code == code if isinstance(code, int) else st.code // 100 == int(code[0])
        if text is not None:
            good = good and text in st.text
        self.assertTrue(good, "%s: expected %s %s at RCPT, got %s %s\n%s" % (
            what, code, text or "", st.code, st.text, self.ctx(c)))

    def assertNoPostfixWarnings(self):
        warn = [l for l in LAB.maillog_since(self.mark).splitlines() if "warning:" in l]
        self.assertEqual(warn, [], "Postfix warnings while the door ran")

    def send(self, source, rcpt, sender=SENDER):
        m = new_marker()
        c = LAB.send(source, sender, [rcpt], make_message(m, to=rcpt))
        return c, m

    def poll_rcpt(self, source, rcpt, ok, sender=SENDER):
        """RCPT from source until ok(step); the last try starts after LIST_DELAY."""
        t0 = time.monotonic()
        while True:
            c = LAB.client(source)
            c.connect()
            c.ehlo()
            c.mail(sender)
            c.rcpt(rcpt)
            c.quit()
            st = c.step("RCPT")
            if ok(st) or time.monotonic() - t0 >= LIST_DELAY:
                return c
            time.sleep(0.05)


class T01Relay(PolicyCase):
    def test_01_outside_client_may_not_relay(self):
        """(a) Outside client, foreign domain: Postfix's reject_unauth_destination
        answers 554 relay access denied after the door said DUNNO."""
        c, m = self.send(OUTSIDE, FOREIGN)
        self.assertRcpt(c, 554, "Relay access denied", "outside -> foreign")
        self.assertNotIn("reject", LAB.daemon_log_since(self.mark),
                         "the door refused instead of leaving relay to Postfix")
        LAB.assert_never_delivered(m)
        self.assertNoPostfixWarnings()

    def test_02_accept_listed_client_relays(self):
        """(b) After `portcullis accept add 127.0.0.5` the same client relays,
        inside Postfix's own relay decision; the message reaches the sink."""
        LAB.accept_add(OUTSIDE, reason="partner")
        self.addCleanup(lambda: LAB.accept_del(OUTSIDE, check=False))
        c = self.poll_rcpt(OUTSIDE, FOREIGN, lambda st: st is not None and st.code == 250)
        self.assertRcpt(c, 250, None, "accept-listed -> foreign")
        c, m = self.send(OUTSIDE, FOREIGN)
        self.assertRcpt(c, 250, None, "accept-listed -> foreign")
        self.assertEqual(c.step("<message>").code, 250, self.ctx(c))
        got = LAB.wait_for_message(m)
        self.assertEqual(sorted(r for d in got for r in d.rcpts), [FOREIGN])
        # and the entry's removal takes relay away again
        LAB.accept_del(OUTSIDE)
        c = self.poll_rcpt(OUTSIDE, FOREIGN, lambda st: st is not None and st.code == 554)
        self.assertRcpt(c, 554, "Relay access denied", "after accept del")
        self.assertNoPostfixWarnings()

    def test_03_accept_listed_sender_never_relays(self):
        """A sender on the accept list is forgeable: it never grants relay."""
        LAB.accept_add(SENDER)
        self.addCleanup(lambda: LAB.accept_del(SENDER, check=False))
        time.sleep(LIST_DELAY + 0.2)
        c, m = self.send(OUTSIDE, FOREIGN)
        self.assertRcpt(c, 554, "Relay access denied", "accept-listed sender")

    def test_04_local_recipients_unaffected(self):
        """(d) Outside client to a local (relay_domains) recipient: 250, delivered."""
        c, m = self.send(OUTSIDE, LOCAL)
        self.assertRcpt(c, 250, None, "outside -> local")
        self.assertEqual(c.step("<message>").code, 250, self.ctx(c))
        LAB.wait_for_message(m)
        self.assertNoPostfixWarnings()


class T02Kill(PolicyCase):
    def test_01_kill_listed_client_refused_at_rcpt(self):
        """(c) A kill-listed client gets Portcullis' text at RCPT, local
        recipient or not."""
        LAB.kill_add(KILLED, reason="spam run")
        self.addCleanup(lambda: LAB.kill_del(KILLED, check=False))
        c = self.poll_rcpt(KILLED, LOCAL, lambda st: st is not None and st.code == 550)
        self.assertRcpt(c, 550, "5.7.1", "kill-listed client -> local")
        self.assertRcpt(c, 550, "Client host [127.0.0.6] is on the kill list")
        c, m = self.send(KILLED, FOREIGN)
        self.assertRcpt(c, 550, "Client host [127.0.0.6] is on the kill list")
        self.assertIn("reason=kill-ip", LAB.daemon_log_since(self.mark))
        # counted: the verdict under door="policy", and the door's answers
        stats = LAB.cli("stats").stdout
        self.assertRegex(stats, r'verdicts_total\{door="policy",stage="RCPT",action="reject",'
                                r'reason="kill-ip"\} [1-9]', stats)
        self.assertRegex(stats, r'policy_answers_total\{action="reject"\} [1-9]', stats)
        self.assertRegex(stats, r'policy_answers_total\{action="DUNNO"\} [1-9]', stats)
        LAB.assert_never_delivered(m)
        self.assertNoPostfixWarnings()

    def test_02_kill_listed_sender_refused_at_rcpt(self):
        """(c) A kill-listed sender domain is refused for everyone outside."""
        LAB.kill_add("@spam.test")
        self.addCleanup(lambda: LAB.kill_del("@spam.test", check=False))
        c = self.poll_rcpt(OUTSIDE, LOCAL, lambda st: st is not None and st.code == 550,
                           sender="x@spam.test")
        self.assertRcpt(c, 550, "Sender domain spam.test is on the kill list")
        # an unlisted sender from the same client still gets through
        c, m = self.send(OUTSIDE, LOCAL)
        self.assertRcpt(c, 250, None, "clean sender")
        LAB.wait_for_message(m)

    def test_03_inside_client_never_asks(self):
        """permit_mynetworks comes first: a kill-listed 127.0.0.1 is Postfix's
        own network and the door is not asked (the milter would refuse it)."""
        LAB.kill_add("127.0.0.1")
        self.addCleanup(lambda: LAB.kill_del("127.0.0.1", check=False))
        time.sleep(LIST_DELAY + 0.2)
        c, m = self.send("127.0.0.1", FOREIGN)
        self.assertRcpt(c, 250, None, "mynetworks client")
        LAB.wait_for_message(m)


class T03BadPeer(PolicyCase):
    def test_01_garbage_answered_and_door_keeps_serving(self):
        """(e) Garbage, an unknown request type and over-long lines get a
        DEFER_IF_PERMIT answer on the same connection; a request too long
        to resynchronise is answered and closed; Postfix is served all along."""
        port = LAB.milter_port
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        self.assertTrue(read_answer(s).startswith(b"action=DEFER_IF_PERMIT "), "garbage")
        s.sendall(policy_request(request="junk"))
        a = read_answer(s)
        self.assertIn(b"unknown request type", a)
        s.sendall(b"sender=" + b"x" * 5000 + b"\n" + policy_request())
        self.assertIn(b"line too long", read_answer(s))
        s.sendall(b"\x00\xff\x01=\n\n")
        self.assertTrue(read_answer(s).startswith(b"action=DEFER_IF_PERMIT"), "binary")
        s.sendall(policy_request(protocol_state=None))
        self.assertIn(b"no protocol_state", read_answer(s))
        # still in sync: a clean request gets the engine's answer
        s.sendall(policy_request())
        self.assertEqual(read_answer(s), b"action=DUNNO\n\n")
        # several requests in one write, answered in order
        s.sendall(policy_request() + policy_request(request="x") + policy_request())
        got = b""
        while got.count(b"\n\n") < 3:
            d = read_answer(s)
            self.assertTrue(d, "connection closed mid-pipeline")
            got += d
        self.assertEqual(got.split(b"\n\n")[:3], [b"action=DUNNO",
                         b"action=DEFER_IF_PERMIT Policy request not understood "
                         b"(unknown request type)", b"action=DUNNO"])
        # a request with no end: answered, then closed
        try:
            s.sendall(b"x=" + b"y" * 40000)
        except OSError:
            pass
        a = read_answer(s)
        self.assertIn(b"request too long", a)
        self.assertEqual(read_answer(s), b"", "the connection stays open")
        s.close()
        # a peer that vanishes mid-request and one that says nothing
        s2 = socket.create_connection(("127.0.0.1", port), timeout=5)
        s2.sendall(b"request=smtpd_access_policy\nprotocol_st")
        s2.close()
        s3 = socket.create_connection(("127.0.0.1", port), timeout=5)
        # Postfix is still served, with the right answers
        c, m = self.send(OUTSIDE, FOREIGN)
        self.assertRcpt(c, 554, "Relay access denied", "after garbage")
        c, m = self.send(OUTSIDE, LOCAL)
        self.assertRcpt(c, 250, None, "after garbage")
        LAB.wait_for_message(m)
        s3.close()
        self.assertTrue(LAB.daemon_alive())
        self.assertIn("malformed request", LAB.daemon_log_since(self.mark))

    def test_02_peer_that_never_reads(self):
        """A peer that pipelines requests and never reads the answers: the
        door stops reading (memory stays bounded), drops it after
        policy_timeout, and serves Postfix meanwhile."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # a small window, so that the kernel's buffers fill with answers soon
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", LAB.milter_port))
        s.settimeout(0.5)
        sent = 0
        try:
            while sent < 1000000:
                s.sendall(policy_request() * 100)
                sent += 100
        except socket.timeout:
            pass
        sys.stderr.write("(%d requests sent before the door stopped reading) " % sent)
        self.assertLess(sent, 1000000, "the door kept reading without anyone reading answers")
        c, m = self.send(OUTSIDE, LOCAL)
        self.assertRcpt(c, 250, None, "while a peer is stuck")
        wait_until(lambda: "does not read its answers" in LAB.daemon_log_since(self.mark),
                          10, what="the stuck peer to be dropped")
        s.close()

    def test_03_unix_socket(self):
        """policy_listen also takes unix:/path; both listeners serve."""
        path = LAB.path("state", "policy.sock")
        LAB.stop_daemon()
        LAB.start_daemon(policy_listen="inet:127.0.0.1:%d unix:%s" % (LAB.milter_port, path),
                         **DAEMON)
        self.addCleanup(lambda: (LAB.stop_daemon(), start_daemon()))
        u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        u.connect(path)
        u.sendall(policy_request())
        self.assertEqual(read_answer(u), b"action=DUNNO\n\n")
        u.close()

    def test_04_door_down_fails_closed(self):
        """With the door down Postfix answers its default action (451), never
        relays; once the door is back, Postfix is served again."""
        LAB.stop_daemon()
        try:
            c, m = self.send(OUTSIDE, FOREIGN)
            self.assertRcpt(c, 451, "4.3.5", "door down")
        finally:
            start_daemon()
        c, m = self.send(OUTSIDE, LOCAL)
        self.assertRcpt(c, 250, None, "door back")


class T04WithMilter(PolicyCase):
    """The README's recommended pair: `services = milter policy`, Postfix
    asking both. The door grants relay, the milter keeps refusing at MAIL,
    and neither contradicts the other."""
    LAB2 = None

    @classmethod
    def setUpClass(cls):
        cls.LAB2 = PolicyLab(milter=True, ipv6=False, name="portcullis-policy-milter")
        cls.LAB2.start_daemon(services="milter policy", relay_networks="127.0.0.1",
                              policy_listen="inet:127.0.0.1:%d" % cls.LAB2.policy_port)

    @classmethod
    def tearDownClass(cls):
        lab2, cls.LAB2 = cls.LAB2, None
        try:
            lab2.stop_daemon()
            bad = lab2.sanitizer_reports()
            if bad:
                raise AssertionError("sanitizer reports:\n" + "\n".join(bad[:40]))
        finally:
            lab2.close()

    def setUp(self):
        self.mark = self.LAB2.log_mark()

    def tearDown(self):
        self.assertTrue(self.LAB2.daemon_alive(), "portcullisd died")

    def ctx(self, *clients):
        return "\n".join(["client transcript:\n" + c.transcript() for c in clients] + [
            "portcullisd.log:\n  " + "\n  ".join(
                self.LAB2.daemon_log_since(self.mark).splitlines()[-20:]),
            "maillog:\n  " + "\n  ".join(self.LAB2.maillog_since(self.mark).splitlines()[-15:])])

    def send2(self, source, rcpt):
        m = new_marker()
        return self.LAB2.send(source, SENDER, [rcpt], make_message(m, to=rcpt)), m

    def test_01_both_doors(self):
        lab2 = self.LAB2
        c, m = self.send2(OUTSIDE, FOREIGN)
        self.assertRcpt(c, 554, "Relay access denied", "not listed")
        c, m = self.send2(OUTSIDE, LOCAL)
        self.assertRcpt(c, 250, None, "outside -> local")
        lab2.wait_for_message(m)
        lab2.accept_add(OUTSIDE)
        lab2.kill_add(KILLED)
        time.sleep(LIST_DELAY + 0.2)
        c, m = self.send2(OUTSIDE, FOREIGN)
        self.assertRcpt(c, 250, None, "accept-listed, both doors")
        self.assertEqual(c.step("<message>").code, 250, self.ctx(c))
        got = lab2.wait_for_message(m)
        self.assertEqual(sorted(r for d in got for r in d.rcpts), [FOREIGN])
        c, m = self.send2(KILLED, LOCAL)
        st = c.step("MAIL")
        self.assertTrue(st.code == 550 and "Client host [127.0.0.6] is on the kill list" in st.text,
                        "the milter refuses a kill-listed client at MAIL\n" + self.ctx(c))
        warn = [l for l in lab2.maillog_since(self.mark).splitlines() if "warning:" in l]
        self.assertEqual(warn, [], "Postfix warnings")


if __name__ == "__main__":
    sys.exit(runner.main(cases=[T01Relay, T02Kill, T03BadPeer, T04WithMilter]))
