#!/usr/bin/python3
"""Sieve server and domain scripts through the milter, behind a real Postfix:
what the SMTP client is told, what reaches the sink (smtp-sink), what lands in
Postfix's hold queue.

Run:  PORTCULLIS_BIN=$PWD/build/asan/bin python3 tests/integration/test_sieve_milter.py
Last line printed: "N passed, N failed"; exit status 1 on any failure.
"""

import os
import re
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import runner                               # noqa: E402
from harness.client import make_message, new_marker      # noqa: E402
from harness.postfix import Lab                          # noqa: E402

LAB = None
START_MARK = None
OUTSIDE = "127.0.0.5"
SENDER = "sender@outside.test"

SERVER = r'''require ["reject", "fileinto", "editheader", "copy", "body", "envelope", "environment"];
if header :contains "subject" "REJECTME" {
    reject "Sieve says no to this";
    stop;
}
if header :contains "subject" "DISCARDME" { discard; stop; }
if header :contains "subject" "QUARANTINEME" { fileinto "Quarantine"; stop; }
if header :contains "subject" "EDITME" {
    addheader "X-Sieve-Added" "server was here";
    addheader :last "X-Sieve-Last" "at the bottom";
    deleteheader "X-Remove-Me";
}
if header :contains "subject" "REDIRECTME" { redirect :copy "audit@example.com"; }
if body :contains "BODYMATCH" { reject "the body matched"; stop; }
if allof (header :contains "subject" "IPCHECK", environment "remote-ip" "127.0.0.5") {
    reject "from 127.0.0.5";
}
'''

DOMAIN = r'''require ["reject"];
if header :contains "subject" "DOMAINREJECT" { reject "sub.example.com refuses it"; }
'''


def sieve_dir():
    return LAB.path("state", "sieve")


def write_script(rel, text):
    """Install like `portcullis rules set` would: temp file, rename."""
    path = os.path.join(sieve_dir(), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def setUpModule():
    global LAB
    LAB = Lab(milter=True)
    write_script("server.sieve", SERVER)
    write_script("domains/sub.example.com.sieve", DOMAIN)
    LAB.start_daemon(mydomains="example.com sub.example.com")
    global START_MARK
    START_MARK = LAB.log_mark()


def tearDownModule():
    global LAB
    if LAB is None:
        return
    try:
        LAB.stop_daemon()
        bad = LAB.sanitizer_reports()
        if bad:
            raise AssertionError("sanitizer reports:\n" + "\n".join(bad[:40]))
        # protocol trouble (a modification Postfix did not grant, a bad
        # reply) shows up as Postfix warnings
        warn = [l for l in LAB.maillog_since(START_MARK).splitlines() if "warning:" in l]
        if warn:
            raise AssertionError("Postfix warnings:\n" + "\n".join(warn[:20]))
    finally:
        LAB.close()
        LAB = None


class SieveMilter(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        self.mark = LAB.log_mark()

    def ctx(self, c=None):
        parts = []
        if c is not None:
            parts.append("client transcript:\n" + c.transcript())
        parts.append("portcullisd.log:\n  " + "\n  ".join(
            LAB.daemon_log_since(self.mark).splitlines()[-25:]))
        parts.append("maillog:\n  " + "\n  ".join(
            LAB.maillog_since(self.mark).splitlines()[-15:]))
        return "\n".join(parts)

    def send(self, subject, rcpts=("user@example.com",), extra_headers=(), body=None,
             source=OUTSIDE):
        m = new_marker()
        msg = make_message(m, to=rcpts[0], subject="%s %s" % (subject, m),
                           extra_headers=extra_headers, body=body)
        c = LAB.send(source, SENDER, list(rcpts), msg)
        return c, m

    def reply(self, c, prefix):
        st = c.step(prefix)
        self.assertIsNotNone(st, "no %s step\n%s" % (prefix, self.ctx(c)))
        return st

    def test_01_reject_with_the_scripts_text(self):
        c, m = self.send("REJECTME")
        st = self.reply(c, "<message>")
        self.assertEqual(st.code, 550, self.ctx(c))
        self.assertIn("5.7.1", st.text)
        self.assertIn("Sieve says no to this", st.text, self.ctx(c))
        log = LAB.daemon_log_since(self.mark)
        self.assertIn("sieve-reject", log)
        LAB.assert_never_delivered(m)

    def test_02_discard(self):
        c, m = self.send("DISCARDME")
        self.assertEqual(self.reply(c, "<message>").code, 250, self.ctx(c))
        LAB.assert_never_delivered(m)
        self.assertIn("sieve-discard", LAB.daemon_log_since(self.mark))

    def test_03_quarantine_into_the_hold_queue(self):
        c, m = self.send("QUARANTINEME")
        self.assertEqual(self.reply(c, "<message>").code, 250, self.ctx(c))
        held = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10 and held is None:
            hold = LAB.path("queue", "hold")
            for qid in (os.listdir(hold) if os.path.isdir(hold) else []):
                out = subprocess.run(["postcat", "-c", LAB.pf_dir, "-q", qid],
                                     capture_output=True, text=True).stdout
                if m in out:
                    held = qid
            time.sleep(0.1)
        self.assertIsNotNone(held, "the message is not in Postfix's hold queue\n" + self.ctx(c))
        pq = subprocess.run(["postqueue", "-c", LAB.pf_dir, "-p"], capture_output=True,
                            text=True).stdout
        self.assertRegex(pq, r"(?m)^%s!" % re.escape(held), pq)
        self.assertFalse(LAB.find_delivered(m, complete=False))
        self.assertIn("sieve-quarantine", LAB.daemon_log_since(self.mark))

    def test_04_header_edits_seen_at_the_sink(self):
        c, m = self.send("EDITME", extra_headers=("X-Remove-Me: please",
                                                  "X-Remove-Me: and this one",
                                                  "X-Keep-Me: yes"))
        self.assertEqual(self.reply(c, "<message>").code, 250, self.ctx(c))
        got = LAB.wait_for_message(m)
        text = got[0].text
        self.assertRegex(text, r"(?m)^X-Sieve-Added: server was here", text)
        self.assertNotRegex(text, r"(?mi)^X-Remove-Me:", text)
        # the added field is on top: before the message's own From:
        self.assertLess(text.index("X-Sieve-Added"), text.index("\nFrom: Sender"), text)
        # :last appends: after the message's own fields
        self.assertRegex(text, r"(?m)^X-Sieve-Last: at the bottom", text)
        self.assertGreater(text.index("X-Sieve-Last"), text.index("\nDate: "), text)
        # of two X-Remove-Me fields, both go; the one after them stays
        self.assertRegex(text, r"(?m)^X-Keep-Me: yes", text)

    def test_05_redirect_seen_at_the_sink(self):
        c, m = self.send("REDIRECTME")
        self.assertEqual(self.reply(c, "<message>").code, 250, self.ctx(c))
        deadline = time.monotonic() + 10
        rcpts = []
        while time.monotonic() < deadline:
            got = LAB.find_delivered(m) or []
            rcpts = sorted(r for d in got for r in d.rcpts)
            if "audit@example.com" in rcpts and "user@example.com" in rcpts:
                break
            time.sleep(0.1)
        self.assertEqual(rcpts, ["audit@example.com", "user@example.com"], self.ctx(c))

    def test_06_body_and_environment(self):
        c, m = self.send("plain", body=["line one", "a BODYMATCH here"])
        st = self.reply(c, "<message>")
        self.assertEqual(st.code, 550, self.ctx(c))
        self.assertIn("the body matched", st.text)
        c, m = self.send("IPCHECK")
        st = self.reply(c, "<message>")
        self.assertEqual(st.code, 550, self.ctx(c))
        self.assertIn("from 127.0.0.5", st.text)

    def test_06b_large_body_spilled_still_seen(self):
        # 400 KB: past the 256 KB kept in memory, the rest from the spill file
        filler = ["x" * 76] * 5300
        c, m = self.send("plain", body=filler + ["the end: BODYMATCH"])
        st = self.reply(c, "<message>")
        self.assertEqual(st.code, 550, self.ctx(c))
        self.assertIn("the body matched", st.text)
        c, m = self.send("plain", body=filler)
        self.assertEqual(self.reply(c, "<message>").code, 250, self.ctx(c))
        LAB.wait_for_message(m)

    def test_07_domain_level_and_the_452_rule(self):
        c, m = self.send("DOMAINREJECT", rcpts=("a@sub.example.com",))
        st = self.reply(c, "<message>")
        self.assertEqual(st.code, 550, self.ctx(c))
        self.assertIn("sub.example.com refuses it", st.text)
        # the same subject to a domain without a script passes
        c, m = self.send("DOMAINREJECT", rcpts=("user@example.com",))
        self.assertEqual(self.reply(c, "<message>").code, 250, self.ctx(c))
        LAB.wait_for_message(m)
        # two domains under different scripts: the second gets 452 4.5.3
        c, m = self.send("hello", rcpts=("user@example.com", "a@sub.example.com"))
        rc = [s for s in c.steps if s.cmd.upper().startswith("RCPT")]
        self.assertEqual(rc[0].code, 250, self.ctx(c))
        self.assertEqual(rc[1].code, 452, self.ctx(c))
        self.assertIn("4.5.3", rc[1].text)
        got = LAB.wait_for_message(m)
        self.assertEqual(sorted(r for d in got for r in d.rcpts), ["user@example.com"])

    def test_08_broken_script_refused_previous_kept(self):
        write_script("server.sieve", SERVER + "\nif true {\n  keep;\n")
        pat = re.compile(r"server\.sieve:\d+:\d+: ")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5 and not pat.search(LAB.daemon_log_since(self.mark)):
            time.sleep(0.05)
        self.assertRegex(LAB.daemon_log_since(self.mark), pat, self.ctx())
        c, m = self.send("REJECTME")
        self.assertEqual(self.reply(c, "<message>").code, 550, self.ctx(c))
        write_script("server.sieve", SERVER)

    def test_09_changed_script_in_force_within_a_second(self):
        write_script("server.sieve", SERVER.replace("REJECTME", "NEWRULE"))
        t_changed = time.monotonic()
        while True:
            started = time.monotonic() - t_changed
            c, m = self.send("NEWRULE")
            if self.reply(c, "<message>").code == 550:
                break
            self.assertLess(started, 1.0, "not in force after 1 s\n" + self.ctx(c))
            time.sleep(0.05)
        write_script("server.sieve", SERVER)


if __name__ == "__main__":
    sys.exit(runner.main(verbosity=2 if "-v" in sys.argv else 1,
                         cleanup=lambda: LAB is not None and LAB.close()))
