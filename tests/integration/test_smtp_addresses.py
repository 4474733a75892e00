#!/usr/bin/python3
"""Envelope addresses end to end (issue 8 items 1, 3, 4, 9, 10, 22): what a
hostile client is told, and what a REAL Postfix received.

One lab (harness.postfix.Lab): a private Postfix whose smtpd uses portcullisd as its milter
and relays everything to an smtp-sink.  The same portcullisd also runs the
SMTP gateway (services = milter smtp) on its own port, so one daemon is
tested through both doors:

    client -> gateway (delivery = relay:) -> Postfix (+ milter) -> smtp-sink
    client -> Postfix (+ milter) -> smtp-sink
    client -> gateway (delivery = maildir, users file) [-> relayhost Postfix]

Each class runs the daemon with its own settings (ensure_daemon restarts it).
Client addresses: 127.0.0.5 is outside, 127.0.0.2 is in relay_networks.

Run:  python3 tests/integration/test_smtp_addresses.py [-v] [Class[.test] ...]
Env:  PORTCULLIS_BIN (default <repo>/bin), KEEP_LAB=1, LAB_VERBOSE=1
Last line printed: "N passed, N failed"; exit status 1 on any failure.
"""

import glob
import os
import re
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import daemon as hdaemon, runner                    # noqa: E402
from harness.client import SmtpClient, make_message, new_marker  # noqa: E402
from harness.ports import free_port                              # noqa: E402
from harness.postfix import Lab, LabError                        # noqa: E402
from harness.util import read, tail, wait_until                  # noqa: E402

LAB = None
GW = None               # the gateway's port
OUTSIDE = "127.0.0.5"
RELAYNET = "127.0.0.2"
USERS = ("alice@example.com", "bob@example.com", "postmaster@example.com")


def setUpModule():
    global LAB, GW
    for exe in ("portcullisd", "portcullis"):
        p = os.path.join(hdaemon.BIN, exe)
        if not os.access(p, os.X_OK):
            raise RuntimeError("%s is missing: build with `make` first" % p)
    LAB = Lab(milter=True, name="portcullis-addr")
    GW = free_port()        # never one of the lab's: free_port does not repeat itself
    LAB.write_daemon_config()
    for u in USERS:
        p = hdaemon.run_bin("portcullis", "-c", LAB.conf, "user", "add", u,
                            "--password-stdin", input="secret-%s\n" % u)
        if p.returncode != 0:
            raise RuntimeError("user add %s: %s %s" % (u, p.stdout, p.stderr))
    LAB.kill_add("@evil.org", reason="address tests")


def tearDownModule():
    global LAB
    if LAB is None:
        return
    try:
        LAB.stop_daemon()
        bad = LAB.sanitizer_reports()
        if bad:
            raise AssertionError("sanitizer reports in %s:\n%s" % (LAB.daemon_log,
                                                                   "\n".join(bad[:40])))
    finally:
        LAB.close()
        LAB = None


def gateway(**more):
    """Daemon settings: the milter for the lab's Postfix plus the gateway."""
    o = {"services": "milter smtp", "smtp_listen": "127.0.0.1:%d" % GW,
         "myhostname": "gw.portcullis.test"}
    o.update(more)
    return o


def mailbox(user, domain="example.com"):
    return LAB.path("state", "mail", domain, user, "Maildir")


def stored(marker, user="alice"):
    """Files of user's Maildir/new/ holding marker."""
    out = []
    for p in glob.glob(os.path.join(mailbox(user), "new", "*")):
        with open(p, "rb") as f:
            if marker.encode() in f.read():
                out.append(p)
    return out


def wait_stored(marker, user="alice", timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = stored(marker, user)
        if got:
            return got
        time.sleep(0.05)
    return []


class Raw:
    """A raw SMTP client for bytes smtplib refuses to send (CR, 8-bit)."""

    def __init__(self, port, source=OUTSIDE):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10,
                                          source_address=(source, 0))
        self.f = self.s.makefile("rb")
        self.log = []
        self.greeting = self.reply()

    def reply(self):
        lines = []
        while True:
            l = self.f.readline()
            if not l:
                lines.append(b"-1 disconnected")
                break
            lines.append(l.rstrip(b"\r\n"))
            if len(l) < 4 or l[3:4] != b"-":
                break
        self.log.append(lines)
        return lines

    def cmd(self, line):
        self.log.append([b">> " + line])
        self.s.sendall(line + b"\r\n")
        r = self.reply()
        return int(r[-1][:3]), r[-1]

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def transcript(self):
        return "\n".join("  " + repr(b" | ".join(x)) for x in self.log)


class AddrCase(unittest.TestCase):
    OVERRIDES = {}
    maxDiff = None

    @classmethod
    def settings(cls):
        """The daemon's overrides for this class (ports are known only now)."""
        return {}

    @classmethod
    def setUpClass(cls):
        cls.OVERRIDES = cls.settings()
        LAB.ensure_daemon(**cls.OVERRIDES)

    def setUp(self):
        self.mark = LAB.log_mark()

    def tearDown(self):
        if not LAB.daemon_alive():
            log = LAB.daemon_log_since(self.mark)
            LAB.stop_daemon()
            LAB.start_daemon(**self.OVERRIDES)
            self.fail("portcullisd died during this test; its log:\n%s" % log[-4000:])

    def ctx(self, *clients):
        parts = [c.transcript() for c in clients]
        parts.append("portcullisd.log (this test):\n  " + "\n  ".join(
            LAB.daemon_log_since(self.mark).splitlines()[-25:]))
        parts.append("maillog (this test):\n  " + "\n  ".join(
            LAB.maillog_since(self.mark).splitlines()[-20:]))
        return "\n".join(parts)

    def gw_client(self, source=OUTSIDE):
        c = SmtpClient("127.0.0.1", GW, source)
        c.connect()
        c.ehlo()
        return c

    def transaction(self, c, sender, rcpts, marker):
        """MAIL, RCPTs, and DATA when some RCPT was accepted (as on main)."""
        c.mail(sender)
        ok = 0
        for r in rcpts:
            code, _ = c.rcpt(r)
            ok += code // 100 == 2
        if ok:
            c.data(make_message(marker, to="user@example.com"))
        c.quit()

    def assertReply(self, c, prefix, code, enh, *ctx):
        st = c.step(prefix)
        self.assertIsNotNone(st, self.ctx(c, *ctx))
        self.assertTrue(st.code == code and st.text.startswith(enh),
                        "expected %s %s at %s, got %s %s\n%s" % (
                            code, enh, prefix, st.code, st.text, self.ctx(c, *ctx)))


# --------------------------------------------------------------------------
class T01PassThrough(AddrCase):
    """Gateway in pass-through in front of the real Postfix (items 1 and 9)."""

    @classmethod
    def settings(cls):
        return gateway(delivery="relay:[127.0.0.1]:%d" % LAB.smtp_port)

    def test_comment_trick_gets_501_and_nothing_reaches_postfix(self):
        m = new_marker()
        c = self.gw_client()
        self.transaction(c, "s@outside.test", ["victim@other.org(.example.com"], m)
        self.assertReply(c, "RCPT", 501, "5.1.3")
        try:
            LAB.assert_never_delivered(m)
        except AssertionError as e:
            self.fail("%s\n%s" % (e, self.ctx(c)))
        self.assertNotIn("victim", LAB.maillog_since(self.mark), self.ctx(c))

    def test_comment_in_sender_gets_501(self):
        m = new_marker()
        c = self.gw_client()
        self.transaction(c, "x@evil.org(c)", ["user@example.com"], m)
        self.assertReply(c, "MAIL", 501, "5.1.7")
        LAB.assert_never_delivered(m)

    def test_quoted_local_part_reaches_postfix_requoted(self):
        """RCPT TO:<"root> NOTIFY=NEVER"@example.com> must not become an
        ESMTP parameter downstream: Postfix gets the quoted address."""
        m = new_marker()
        c = self.gw_client()
        self.transaction(c, '"s x"@outside.test', ['"root> NOTIFY=NEVER"@example.com'], m)
        self.assertReply(c, "RCPT", 250, "2.1.5")
        self.assertReply(c, "<message>", 250, "2.0.0")
        try:
            got = LAB.wait_for_message(m)
        except LabError as e:
            self.fail("%s\n%s" % (e, self.ctx(c)))
        rcpt_args = [a for d in got for a in re.findall(r"^X-Rcpt-Args: (.*)$", d.text, re.M)]
        mail_args = [a for d in got for a in d.mail_args]
        # the sink writes "<addr> ORCPT=..." (what Postfix relayed)
        self.assertEqual(len(rcpt_args), 1, "%s\n%s" % (rcpt_args, self.ctx(c)))
        self.assertRegex(rcpt_args[0], r'^(?:TO:)?<"root> NOTIFY=NEVER"@example\.com>(?: |$)',
                         self.ctx(c))
        self.assertNotRegex(rcpt_args[0], r"(?i)NOTIFY=NEVER@", self.ctx(c))
        self.assertTrue(mail_args and re.match(r'^(?:FROM:)?<"s x"@outside\.test>', mail_args[0]),
                        "%s\n%s" % (mail_args, self.ctx(c)))
        self.assertIn('to=<"root> NOTIFY=NEVER"@example.com>', LAB.maillog_since(self.mark),
                      self.ctx(c))


class T02Milter(AddrCase):
    """A real Postfix in front, portcullisd as its milter (item 1)."""

    @classmethod
    def settings(cls):
        return {"null_sender": "reject"}

    def test_kill_listed_domain_behind_a_comment(self):
        m = new_marker()
        c = LAB.send(OUTSIDE, "x@evil.org(c)", ["user@example.com"], make_message(m))
        self.assertReply(c, "MAIL", 501, "5.1.7")
        LAB.assert_never_delivered(m)

    def test_null_sender_made_of_a_comment(self):
        m = new_marker()
        c = LAB.send(OUTSIDE, "(x)", ["user@example.com"], make_message(m))
        self.assertReply(c, "MAIL", 501, "5.1.7")
        LAB.assert_never_delivered(m)

    def test_comment_trick_recipient(self):
        m = new_marker()
        c = LAB.send(OUTSIDE, "s@outside.test", ["victim@other.org(.example.com"],
                     make_message(m))
        self.assertReply(c, "RCPT", 501, "5.1.3")
        LAB.assert_never_delivered(m)

    def test_plain_addresses_still_pass(self):
        m = new_marker()
        c = LAB.send(OUTSIDE, '"s x"@outside.test', ["user@example.com"], make_message(m))
        self.assertReply(c, "<message>", 250, "2.0.0")
        LAB.wait_for_message(m)


class T03Store(AddrCase):
    """Gateway delivering into the Maildir store, no relayhost (items 3, 4, 10, 22)."""

    @classmethod
    def settings(cls):
        return gateway()

    def test_case_and_quoting_reach_the_canonical_mailbox(self):
        for rcpt in ("ALICE@example.com", '"Alice"@Example.COM.', "alice@EXAMPLE.com"):
            m = new_marker()
            c = self.gw_client()
            self.transaction(c, "s@outside.test", [rcpt], m)
            self.assertReply(c, "<message>", 250, "2.0.0")
            self.assertTrue(wait_stored(m), "%s not in alice's Maildir\n%s" % (rcpt, self.ctx(c)))
        boxes = sorted(os.listdir(LAB.path("state", "mail", "example.com")))
        self.assertEqual([b for b in boxes if b.lower() == "alice"], ["alice"], boxes)

    def test_postmaster_is_delivered(self):
        """postmaster_address defaults to postmaster@ the first of mydomains."""
        m = new_marker()
        c = self.gw_client()
        self.transaction(c, "s@outside.test", ["PostMaster"], m)
        self.assertReply(c, "RCPT", 250, "2.1.5")
        self.assertTrue(wait_stored(m, "postmaster"), self.ctx(c))

    def test_other_unqualified_recipient_refused(self):
        m = new_marker()
        c = self.gw_client()
        self.transaction(c, "s@outside.test", ["root"], m)
        self.assertReply(c, "RCPT", 504, "5.5.2")

    def test_unqualified_from_relay_client_is_qualified_and_checked(self):
        m = new_marker()
        c = self.gw_client(RELAYNET)
        self.transaction(c, "s@example.com", ["alice", "root"], m)
        rc = [s for s in c.steps if s.cmd.startswith("RCPT")]
        self.assertEqual([s.code for s in rc], [250, 550], self.ctx(c))
        self.assertTrue(wait_stored(m), self.ctx(c))

    def test_ehlo_with_control_characters_refused(self):
        m = new_marker()
        r = Raw(GW)
        try:
            code, text = r.cmd(b"EHLO a\rX-Injected: yes")
            if code != 250:
                r.cmd(b"EHLO c.example")
            r.cmd(b"MAIL FROM:<s@outside.test>")
            r.cmd(b"RCPT TO:<alice@example.com>")
            r.cmd(b"DATA")
            r.s.sendall(make_message(m, to="alice@example.com").replace("\n", "\r\n")
                        .encode().replace(b"\r\r\n", b"\r\n") + b".\r\n")
            r.reply()
            r.cmd(b"QUIT")
        finally:
            r.close()
        self.assertEqual((code, text[4:9]), (501, b"5.5.4"), r.transcript())
        files = wait_stored(m)
        self.assertTrue(files, r.transcript())
        with open(files[0], "rb") as f:
            self.assertNotIn(b"X-Injected", f.read())

    def test_size_plus_is_a_syntax_error_and_replies_are_clean(self):
        r = Raw(GW)
        try:
            r.cmd(b"EHLO c.example")
            size = r.cmd(b"MAIL FROM:<s@outside.test> SIZE=+5")
            opt = r.cmd(b"MAIL FROM:<s@outside.test> X\xff\x01=\x1b[2J")
            r.cmd(b"QUIT")
        finally:
            r.close()
        self.assertEqual((size[0], size[1][4:9]), (501, b"5.5.4"), r.transcript())
        self.assertEqual(opt[0] // 100, 5, r.transcript())
        self.assertTrue(all(0x20 <= b < 0x7f for b in opt[1]), r.transcript())


class T04StoreWithRelayhost(AddrCase):
    """The same with a relayhost (the lab's Postfix): item 4."""

    @classmethod
    def settings(cls):
        return gateway(relayhost="[127.0.0.1]:%d" % LAB.smtp_port)

    def test_unqualified_recipient_not_relayed(self):
        m = new_marker()
        c = self.gw_client()
        self.transaction(c, "s@outside.test", ["root"], m)
        self.assertReply(c, "RCPT", 504, "5.5.2")
        LAB.assert_never_delivered(m)

    def test_postmaster_is_local_not_relayed(self):
        m = new_marker()
        c = self.gw_client()
        self.transaction(c, "s@outside.test", ["postmaster"], m)
        self.assertReply(c, "RCPT", 250, "2.1.5")
        self.assertTrue(wait_stored(m, "postmaster"), self.ctx(c))
        LAB.assert_never_delivered(m)


class T05PostmasterAddress(AddrCase):
    """postmaster_address set: <postmaster> goes there, checked like any recipient."""

    @classmethod
    def settings(cls):
        return gateway(postmaster_address="alice@example.com")

    def test_postmaster_goes_to_postmaster_address(self):
        m = new_marker()
        c = self.gw_client()
        self.transaction(c, "s@outside.test", ["PostMaster"], m)
        self.assertReply(c, "RCPT", 250, "2.1.5")
        self.assertTrue(wait_stored(m), self.ctx(c))
        self.assertFalse(stored(m, "postmaster"), self.ctx(c))


class T06PostmasterAddressUnknown(AddrCase):
    """A postmaster_address that is no user is refused like any unknown user."""

    @classmethod
    def settings(cls):
        return gateway(postmaster_address="nobody@example.com")

    def test_unknown_postmaster_address_refused(self):
        m = new_marker()
        c = self.gw_client()
        self.transaction(c, "s@outside.test", ["postmaster"], m)
        self.assertReply(c, "RCPT", 550, "5.1.1")
        self.assertIn("nobody@example.com", c.step("RCPT").text, self.ctx(c))


class T09NoUsersFile(AddrCase):
    """users = (empty): every recipient that can be a mailbox is one, by its
    lower-cased name; one that cannot is unknown at RCPT."""

    @classmethod
    def settings(cls):
        return gateway(users="")

    def test_mixed_case_lands_lower_case(self):
        m = new_marker()
        c = self.gw_client()
        self.transaction(c, "s@outside.test", ["Carol@Example.COM"], m)
        self.assertReply(c, "<message>", 250, "2.0.0")
        self.assertTrue(wait_stored(m, "carol"), self.ctx(c))
        self.assertFalse(os.path.exists(mailbox("Carol")), self.ctx(c))

    def test_name_that_is_no_mailbox_refused_at_rcpt(self):
        m = new_marker()
        c = self.gw_client()
        self.transaction(c, "s@outside.test", ["a/b@example.com", "dave@example.com"], m)
        rc = [s.code for s in c.steps if s.cmd.startswith("RCPT")]
        self.assertEqual(rc, [550, 250], self.ctx(c))
        self.assertReply(c, "<message>", 250, "2.0.0")
        self.assertTrue(wait_stored(m, "dave"), self.ctx(c))


class T08Explain(AddrCase):
    """`portcullis explain` gives the verdict the doors give."""

    def explain(self, *args):
        return LAB.cli("explain", "--client", OUTSIDE, *args, check=False)

    def test_comment_trick_refused(self):
        p = self.explain("--from", "s@outside.test", "--rcpt", "victim@other.org(.example.com")
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("501 5.1.3", p.stdout)

    def test_killed_domain_behind_a_comment(self):
        p = self.explain("--from", "x@evil.org(c)", "--rcpt", "user@example.com")
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("501 5.1.7", p.stdout)

    def test_postmaster_shows_where_it_goes(self):
        p = self.explain("--from", "s@outside.test", "--rcpt", "PostMaster")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("address: <postmaster@example.com>", p.stdout)


class T07SmtpUtf8(unittest.TestCase):
    """A Postfix with smtputf8_enable = yes in front of the milter (its own lab):
    UTF-8 addresses pass in an SMTPUTF8 transaction, and only there."""

    @classmethod
    def setUpClass(cls):
        cls.lab = Lab(milter=True, name="portcullis-utf8",
                      main_cf_extra={"smtputf8_enable": "yes"})
        cls.lab.start_daemon()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.lab.stop_daemon()
            bad = cls.lab.sanitizer_reports()
            if bad:
                raise AssertionError("sanitizer reports:\n%s" % "\n".join(bad[:40]))
        finally:
            cls.lab.close()

    def session(self, sender, rcpt, params, marker):
        c = self.lab.client(OUTSIDE)
        c.smtp.command_encoding = "utf-8"
        c.connect()
        c.ehlo()
        c.mail(sender, params)
        if c.rcpt(rcpt)[0] // 100 == 2:
            c.data(make_message(marker, to="user@example.com"))
        c.quit()
        return c

    def test_utf8_addresses_in_an_smtputf8_transaction(self):
        m = new_marker()
        c = self.session("j\u00f6rg@outside.test", "m\u00fcller@example.com", "SMTPUTF8", m)
        st = c.step("<message>")
        self.assertTrue(st is not None and st.code == 250, c.transcript() + "\n" +
                        tail(self.lab.daemon_log, 10))
        # the milter let every stage pass; the smtp-sink behind offers no
        # SMTPUTF8, so Postfix can only queue it (and bounce it later)
        wait_until(lambda: "to=<m\u00fcller@example.com>" in
                          read(self.lab.maillog), 10, what="Postfix queued it")

    def test_utf8_without_smtputf8_is_refused(self):
        m = new_marker()
        c = self.session("j\u00f6rg@outside.test", "user@example.com", "", m)
        st = c.step("MAIL")
        self.assertTrue(st.code == 501 and st.text.startswith("5.1.7"), c.transcript())
        self.lab.assert_never_delivered(m)


CASES = [T01PassThrough, T02Milter, T03Store, T04StoreWithRelayhost, T05PostmasterAddress,
         T06PostmasterAddressUnknown, T09NoUsersFile, T08Explain,
         T07SmtpUtf8]


if __name__ == "__main__":
    sys.exit(runner.main(cases=CASES, cleanup=lambda: LAB is not None and tearDownModule()))
