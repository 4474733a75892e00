#!/usr/bin/python3
"""Sieve server and domain scripts in the standalone SMTP gateway: what the
client is told (smtplib), what lands in the Maildir store and in the
quarantine Maildir, what reaches the relayhost and the pass-through
downstream (the harness's FakeSMTP).

Run:  PORTCULLIS_BIN=$PWD/build/asan/bin python3 tests/integration/test_sieve_gateway.py
Last line printed: "N passed, N failed"; exit status 1 on any failure.
"""

import os
import re
import smtplib
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import runner                                  # noqa: E402
from harness.client import make_message, new_marker         # noqa: E402
from harness.daemon import REPO, SMTP_GATEWAY, Daemon       # noqa: E402
from harness.fakesmtp import FakeSMTP, unstuff              # noqa: E402

SENDER = "sender@outside.test"
MMDB_SCRIPT = os.path.join(REPO, "scripts", "geoip-mmdb.pl")

SERVER = r'''require ["reject", "fileinto", "editheader", "copy", "body", "environment"];
if header :contains "subject" "REJECTME" {
    reject "Sieve says no to this";
    stop;
}
if header :contains "subject" "QUARANTINEME" { fileinto "Quarantine"; stop; }
if header :contains "subject" "EDITME" {
    addheader "X-Sieve-Added" "server was here";
    addheader :last "X-Sieve-Last" "at the bottom";
    deleteheader "X-Remove-Me";
}
if header :contains "subject" "REDIRECTME" { redirect :copy "audit@elsewhere.test"; }
if header :contains "subject" "MOVEME" { redirect "boss@example.com"; }
if header :contains "subject" "TWOREDIRECTS" {
    redirect :copy "r1@elsewhere.test";
    redirect :copy "r2@elsewhere.test";
}
if header :contains "subject" "ENVCHECK" {
    if allof (environment "vnd.portcullis.country" "XX",
              environment "remote-ip" "127.0.0.5") {
        reject "country XX from 127.0.0.5";
        stop;
    }
}
if body :contains "BODYMATCH" { reject "the body matched"; stop; }
'''

DOMAIN = r'''require ["reject"];
if header :contains "subject" "DISCARDME" { discard; }
'''


def write_script(d, rel, text):
    """Install like `portcullis rules set` would: temp file, rename."""
    path = os.path.join(d.path("state", "sieve"), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def write_mmdb(path, ranges):
    fd, txt = tempfile.mkstemp(prefix="ranges.", suffix=".txt", dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as f:
        for r in ranges:
            f.write("%s,%s,%s\n" % r)
    subprocess.run(["perl", MMDB_SCRIPT, path, txt], check=True, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE)
    os.unlink(txt)


def files_with(d, marker):
    """[(path, bytes)] of every file under d holding marker."""
    out = []
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if marker.encode() in data:
                out.append((p, data))
    return out


def send(port, rcpts, msg, source="127.0.0.2"):
    """One transaction: ([RCPT replies], DATA reply or None)."""
    s = smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        s.ehlo("client.test")
        code, text = s.mail(SENDER)
        assert code == 250, (code, text)
        rr = [s.rcpt(r) for r in rcpts]
        if not any(c == 250 for c, _ in rr):
            return rr, None
        code, text = s.docmd("DATA")
        assert code == 354, (code, text)
        data = msg.encode() if isinstance(msg, str) else msg
        q = smtplib.quotedata(data.decode("latin-1")).encode("latin-1")
        s.send(q + (b"" if q.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        final = s.getreply()
        s.quit()
        return rr, final
    finally:
        s.close()


def wait_for(pred, within=5.0):
    t0 = time.monotonic()
    while True:
        r = pred()
        if r or time.monotonic() - t0 > within:
            return r
        time.sleep(0.05)


class Common:
    def send(self, subject, rcpts=("user@example.com",), extra_headers=(), body=None,
             source="127.0.0.2"):
        m = new_marker()
        msg = make_message(m, to=rcpts[0], subject="%s %s" % (subject, m),
                           extra_headers=extra_headers, body=body)
        rr, final = send(self.d.port, rcpts, msg, source)
        return m, rr, final

    def ctx(self):
        return "portcullisd.log:\n  " + "\n  ".join(
            self.d.log_since(self.mark).splitlines()[-25:])

    def quarantined(self, m):
        return files_with(self.d.path("state", "quarantine", "new"), m)

    def down_msgs(self, fake, m):
        return [(t, unstuff(bytes(t["raw"]))) for t in list(fake.transactions)
                if t.get("dot") and m.encode() in bytes(t["raw"])]


class StoreGateway(Common, unittest.TestCase):
    """delivery = maildir: the store, a relayhost for everything else."""
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.relay = FakeSMTP({"ehlo": b"250 relay\r\n"})
        cls.d = Daemon("sievegw", SMTP_GATEWAY, mydomains="example.com sub.example.com",
                       delivery="maildir:{dir}/mail", users="", log_level="info",
                       relay_networks="127.0.0.0/8",
                       relayhost="[127.0.0.1]:%d" % cls.relay.port,
                       geoip_database="{dir}/geo.mmdb", sieve_max_redirects="1")
        write_mmdb(cls.d.path("geo.mmdb"), [("127.0.0.5", "127.0.0.5", "XX"),
                                            ("127.0.0.6", "127.0.0.6", "YY")])
        write_script(cls.d, "server.sieve", SERVER)
        write_script(cls.d, "domains/sub.example.com.sieve", DOMAIN)
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop(10)[0]
        cls.relay.stop()
        bad = cls.d.sanitizer_lines()
        cls.d.close()
        assert rc == 0 and not bad, "daemon exit %s; %s" % (rc, bad[:5])

    def setUp(self):
        self.mark = self.d.log_mark()

    def stored(self, m):
        return files_with(self.d.path("mail"), m)

    def tmp_left(self):
        out = []
        for root, _, names in os.walk(self.d.path("mail")):
            if os.path.basename(root) == "tmp":
                out += names
        out += os.listdir(self.d.path("state", "quarantine", "tmp"))
        return out

    def test_01_server_reject_550_with_text_nothing_stored(self):
        m, rr, final = self.send("REJECTME")
        self.assertEqual(final[0], 550, self.ctx())
        self.assertIn(b"5.7.1 Sieve says no to this", final[1])
        self.assertEqual(self.stored(m), [])
        self.assertEqual(self.tmp_left(), [])
        self.assertIn("sieve-reject", self.d.log_since(self.mark))

    def test_02_domain_discard(self):
        m, rr, final = self.send("DISCARDME", rcpts=("a@sub.example.com",))
        self.assertEqual(final[0], 250, self.ctx())
        self.assertEqual(self.stored(m), [], self.ctx())
        self.assertIn("sieve-discard", self.d.log_since(self.mark))
        # the same subject to a domain without that script is delivered
        m, rr, final = self.send("DISCARDME", rcpts=("user@example.com",))
        self.assertEqual(final[0], 250, self.ctx())
        self.assertEqual(len(self.stored(m)), 1, self.ctx())

    def test_03_quarantine_into_the_quarantine_maildir(self):
        m, rr, final = self.send("QUARANTINEME")
        self.assertEqual(final[0], 250, self.ctx())
        self.assertEqual(self.stored(m), [], self.ctx())
        q = self.quarantined(m)
        self.assertEqual(len(q), 1, self.ctx())
        self.assertIn(b"Subject: QUARANTINEME", q[0][1])
        self.assertIn("sieve-quarantine", self.d.log_since(self.mark))
        self.assertEqual(self.tmp_left(), [])

    def test_04_header_edits_in_the_stored_file(self):
        m, rr, final = self.send("EDITME", extra_headers=("X-Remove-Me: one",
                                                          "X-Keep: folded\r\n\tline"))
        self.assertEqual(final[0], 250, self.ctx())
        got = self.stored(m)
        self.assertEqual(len(got), 1, self.ctx())
        head, _, body = got[0][1].partition(b"\r\n\r\n")
        # our Return-Path: stays on top (the scripts do not see it)
        self.assertTrue(head.startswith(b"Return-Path: <sender@outside.test>\r\n"
                                        b"X-Sieve-Added: server was here\r\n"), head)
        self.assertTrue(head.endswith(b"X-Sieve-Last: at the bottom"), head)
        self.assertNotIn(b"X-Remove-Me", head)
        self.assertIn(b"X-Keep: folded\r\n\tline\r\n", head)    # byte for byte
        self.assertIn(b"Received: from client.test", head)
        self.assertTrue(body.endswith(("END-%s\r\n" % m).encode()), body)
        self.assertEqual(self.tmp_left(), [])

    def test_05_big_message_edited_without_loss(self):
        body = ["line %06d %s" % (i, "x" * 60) for i in range(8000)]    # ~570 KB
        m, rr, final = self.send("EDITME", body=body, extra_headers=("X-Remove-Me: y",))
        self.assertEqual(final[0], 250, self.ctx())
        got = self.stored(m)
        self.assertEqual(len(got), 1, self.ctx())
        head, _, stored_body = got[0][1].partition(b"\r\n\r\n")
        self.assertIn(b"X-Sieve-Added", head)
        self.assertNotIn(b"X-Remove-Me", head)
        want = ("\r\n".join(body + ["END-%s" % m]) + "\r\n").encode()
        self.assertEqual(stored_body, want)

    def test_06_redirect_copy_reaches_the_relayhost(self):
        m, rr, final = self.send("REDIRECTME")
        self.assertEqual(final[0], 250, self.ctx())
        self.assertEqual(len(self.stored(m)), 1, self.ctx())
        got = wait_for(lambda: self.down_msgs(self.relay, m))
        self.assertEqual(len(got), 1, self.ctx())
        self.assertEqual(got[0][0]["rcpts"], ["audit@elsewhere.test"])
        self.assertNotIn(b"Return-Path:", got[0][1])     # added at final delivery only

    def test_07_redirect_without_copy_to_a_local_user(self):
        m, rr, final = self.send("MOVEME")
        self.assertEqual(final[0], 250, self.ctx())
        got = self.stored(m)
        self.assertEqual([p.split("/example.com/")[1].split("/")[0] for p, _ in got], ["boss"],
                         self.ctx())

    def test_08_second_domain_452_then_its_own_transaction(self):
        m = new_marker()
        msg = make_message(m, subject="hello %s" % m)
        rr, final = send(self.d.port, ["user@example.com", "a@sub.example.com"], msg)
        self.assertEqual(rr[0][0], 250)
        self.assertEqual(rr[1][0], 452, rr)
        self.assertIn(b"4.5.3 Too many recipients: sub.example.com is under other rules", rr[1][1])
        self.assertEqual(final[0], 250)
        self.assertEqual(len(self.stored(m)), 1)
        rr, final = send(self.d.port, ["a@sub.example.com"], msg)
        self.assertEqual(final[0], 250, self.ctx())
        self.assertEqual(len(self.stored(m)), 2)

    def test_09_script_needing_the_body(self):
        m, rr, final = self.send("hello", body=["x" * 70] * 3000 + ["BODYMATCH here"])
        self.assertEqual(final[0], 550, self.ctx())
        self.assertIn(b"the body matched", final[1])
        self.assertEqual(self.stored(m), [])

    def test_10_country_and_environment(self):
        m, rr, final = self.send("ENVCHECK", source="127.0.0.5")
        self.assertEqual(final[0], 550, self.ctx())
        self.assertIn(b"country XX from 127.0.0.5", final[1])
        m, rr, final = self.send("ENVCHECK", source="127.0.0.6")
        self.assertEqual(final[0], 250, self.ctx())

    def test_11_broken_script_refused_previous_kept(self):
        write_script(self.d, "server.sieve", SERVER + "\nif true {\n  keep;\n")
        pat = re.compile(r"server\.sieve:\d+:\d+: ")
        wait_for(lambda: pat.search(self.d.log_since(self.mark)))
        self.assertRegex(self.d.log_since(self.mark), pat)
        m, rr, final = self.send("REJECTME")
        self.assertEqual(final[0], 550, self.ctx())
        write_script(self.d, "server.sieve", SERVER)

    def test_12_relayed_message_edited_at_the_relayhost(self):
        m, rr, final = self.send("EDITME", rcpts=("someone@elsewhere.test",),
                                 extra_headers=("X-Remove-Me: z",))
        self.assertEqual(final[0], 250, self.ctx())
        got = wait_for(lambda: self.down_msgs(self.relay, m))
        self.assertEqual(len(got), 1, self.ctx())
        self.assertIn(b"X-Sieve-Added: server was here", got[0][1])
        self.assertNotIn(b"X-Remove-Me", got[0][1])

    def test_13_sieve_max_redirects_applies(self):
        # one redirect is within sieve_max_redirects = 1 (test_06); two make
        # the run fail: the message is kept as it came, nothing redirected
        m, rr, final = self.send("TWOREDIRECTS")
        self.assertEqual(final[0], 250, self.ctx())
        self.assertEqual(len(self.stored(m)), 1, self.ctx())
        self.assertRegex(self.d.log_since(self.mark), r"sieve: server run failed: .*redirect")
        time.sleep(0.3)
        self.assertEqual(self.down_msgs(self.relay, m), [])

    def test_14_redirect_the_relayhost_refuses_451_nothing_stored(self):
        # never a 250 for something lost: the client is told to try again
        old = dict(self.relay.mode or {})
        self.relay.mode = dict(old, rcpt=b"451 4.3.0 not now\r\n")
        try:
            m, rr, final = self.send("REDIRECTME")
        finally:
            self.relay.mode = old
        self.assertEqual(final[0], 451, self.ctx())
        self.assertEqual(self.stored(m), [], self.ctx())
        self.assertEqual(self.tmp_left(), [])
        self.assertIn("the relayhost said 451", self.d.log_since(self.mark))


class PassThrough(Common, unittest.TestCase):
    """delivery = relay: every message goes downstream, after the verdict."""

    @classmethod
    def setUpClass(cls):
        cls.down = FakeSMTP({"ehlo": b"250 down\r\n"})
        cls.d = Daemon("sievepass", SMTP_GATEWAY, relay_networks="127.0.0.0/8",
                       delivery="relay:[127.0.0.1]:%d" % cls.down.port, log_level="info")
        write_script(cls.d, "server.sieve", SERVER)
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop(10)[0]
        cls.down.stop()
        bad = cls.d.sanitizer_lines()
        cls.d.close()
        assert rc == 0 and not bad, "daemon exit %s; %s" % (rc, bad[:5])

    def setUp(self):
        self.mark = self.d.log_mark()

    def test_01_reject_nothing_downstream(self):
        m, rr, final = self.send("REJECTME")
        self.assertEqual(final[0], 550, self.ctx())
        self.assertIn(b"Sieve says no to this", final[1])
        time.sleep(0.3)
        self.assertEqual(self.down_msgs(self.down, m), [])

    def test_02_edits_seen_downstream(self):
        m, rr, final = self.send("EDITME", extra_headers=("X-Remove-Me: one",),
                                 body=["y" * 70] * 5000)
        self.assertEqual(final[0], 250, self.ctx())
        got = wait_for(lambda: self.down_msgs(self.down, m))
        self.assertEqual(len(got), 1, self.ctx())
        head, _, body = got[0][1].partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"X-Sieve-Added: server was here\r\n"), head[:200])
        self.assertNotIn(b"X-Remove-Me", head)
        self.assertIn(b"Received: from client.test", head)
        self.assertEqual(body.count(b"y" * 70), 5000)
        m, rr, final = self.send("hello")        # no action: passed on as it came
        self.assertEqual(final[0], 250, self.ctx())
        self.assertEqual(len(wait_for(lambda: self.down_msgs(self.down, m))), 1)

    def test_03_discard_and_quarantine_nothing_downstream(self):
        write_script(self.d, "domains/example.com.sieve", DOMAIN)
        time.sleep(0.6)
        m, rr, final = self.send("DISCARDME")
        self.assertEqual(final[0], 250, self.ctx())
        m2, rr, final = self.send("QUARANTINEME")
        self.assertEqual(final[0], 250, self.ctx())
        time.sleep(0.3)
        self.assertEqual(self.down_msgs(self.down, m), [])
        self.assertEqual(self.down_msgs(self.down, m2), [])
        self.assertEqual(len(self.quarantined(m2)), 1, self.ctx())
        os.unlink(self.d.path("state", "sieve", "domains", "example.com.sieve"))


    def test_04_redirect_through_the_downstream(self):
        m, rr, final = self.send("REDIRECTME")
        self.assertEqual(final[0], 250, self.ctx())
        got = wait_for(lambda: len(self.down_msgs(self.down, m)) == 2 and
                       self.down_msgs(self.down, m))
        self.assertTrue(got, self.ctx())
        self.assertEqual(sorted(t["rcpts"][0] for t, _ in got),
                         ["audit@elsewhere.test", "user@example.com"])


if __name__ == "__main__":
    sys.exit(runner.main())
