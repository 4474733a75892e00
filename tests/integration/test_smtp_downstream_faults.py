#!/usr/bin/python3
"""Pass-through against a misbehaving downstream: what the client hears.

The downstream is the harness's scriptable SMTP server (harness.fakesmtp,
threads on 127.0.0.1); each test picks its misbehaviour (garbage greeting, refusals,
over-long and endless replies, silence, a 421 in the middle of the body, a
hang-up after 354, ...) and records what the gateway sent it. The client is
python smtplib or raw sockets. The contract checked: a network failure or
garbage from the downstream gives the client a 4xx of the gateway's own
(451 4.4.1 unreachable, 451 4.4.2 otherwise), a refusal is mirrored, nothing
is ever answered 250 that the downstream did not accept, and the gateway goes
on serving afterwards. Last line: "N passed, N failed".
"""
import os
import smtplib
import socket
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import runner  # noqa: E402
from harness.daemon import SANITIZER_RE, SMTP_GATEWAY, Daemon  # noqa: E402
from harness.fakesmtp import FakeSMTP, stuff, unstuff  # noqa: E402,F401

TIMEOUT = 3     # smtp_timeout: the gateway waits min(smtp_timeout, 60) s for downstream replies
BIG = 3 * 1024 * 1024


def token():
    return uuid.uuid4().hex


def strip_received(body):
    """Drop the gateway's own Received: line (and its continuation lines)."""
    lines = body.split(b"\r\n")
    assert lines[0].startswith(b"Received: "), lines[:3]
    i = 1
    while i < len(lines) and lines[i][:1] in (b"\t", b" "):
        i += 1
    return b"\r\n".join(lines[i:])


class Client:
    """A raw client of the gateway."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), 20)
        self.f = self.s.makefile("rb")
        self.lines = []

    def reply(self):
        self.lines = []
        while True:
            line = self.f.readline()
            self.lines.append(line)
            if not line or line[3:4] != b"-":
                return line

    def cmd(self, line):
        self.s.sendall(line + b"\r\n")
        return self.reply()

    def vanish(self):
        """Hang up at once, nothing more said (the makefile holds the fd too)."""
        self.f.close()
        self.s.close()

    def close(self):
        try:
            self.s.sendall(b"QUIT\r\n")
            self.reply()
        except OSError:
            pass
        self.f.close()
        self.s.close()


def code(reply):
    try:
        return int(reply[:3])
    except ValueError:
        return None


class DownstreamFaults(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # the downstream is harness.fakesmtp.FakeSMTP: each test sets its .mode
        cls.down = FakeSMTP(backlog=64, stall_for=TIMEOUT + 6)
        cls.d = Daemon("dsfaults", SMTP_GATEWAY, relay_networks="127.0.0.1",
                       message_size_limit=20000000, smtp_max_per_client=200,
                       smtp_timeout=TIMEOUT,
                       smtp_min_data_rate=100,    # test_10d's slow client sends 160 B/s
                       delivery="relay:[127.0.0.1]:%d" % cls.down.port)
        cls.d.start()
        cls.port = cls.d.port

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop(10)[0]
        cls.down.stop()
        text = cls.d.log_text()
        bad = [l for l in text.splitlines() if SANITIZER_RE.search(l) or
               "killed by signal" in l or "exited with status" in l]
        cls.d.close()
        if rc != 0 or bad:
            print("daemon log excerpt:\n" + "\n".join(text.splitlines()[-60:]), file=sys.stderr)
        assert rc == 0 and not bad, "daemon exit %s; %s" % (rc, bad[:5])

    def setUp(self):
        # each test starts on fresh downstream connections: whatever an earlier
        # test left open (a session the gateway keeps for the next message, if
        # it caches them) is hung up by the downstream
        self.down.mode = {}
        self.down.drop_all()
        time.sleep(0.05)
        self.mark = len(self.down.sessions)
        self.clients = []

    def tearDown(self):
        for c in self.clients:
            try:
                c.vanish()
            except OSError:
                pass
        self.down.mode = {}

    # ---- helpers ----

    def client(self):
        c = Client(self.port)
        self.clients.append(c)
        self.assertEqual(code(c.reply()), 220)
        return c

    def begin(self, c, rcpt=b"b@example.com"):
        """EHLO and MAIL (the gateway's own answers); the RCPT's reply is returned."""
        r = c.cmd(b"EHLO client.test")
        self.assertEqual(code(r), 250, r)
        r = c.cmd(b"MAIL FROM:<a@example.com>")
        self.assertEqual(code(r), 250, r)
        return c.cmd(b"RCPT TO:<" + rcpt + b">")

    def message(self, tag, body=b"hello\r\n"):
        return (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: " + tag.encode() +
                b"\r\n\r\n" + body)

    def sessions(self):
        return self.down.since(self.mark)

    def wait_closed(self, recs, limit=5.0):
        deadline = time.time() + limit
        while time.time() < deadline and not all(r["closed"] for r in recs):
            time.sleep(0.02)

    def arrived(self, tag):
        """The messages (as the downstream got them, with their final dot) carrying tag."""
        return [m for r in self.down.since(0) for m in r["msgs"] if tag.encode() in m]

    def send_big(self, c, tag, size=BIG, piece=256 * 1024, line=b"y" * 78 + b"\r\n", pause=0):
        """A big message in pieces, then the final dot; returns the final reply.
        pause: seconds to wait after the first piece (the downstream acts meanwhile)."""
        c.s.sendall(self.message(tag, b""))
        chunk = line * (piece // len(line))
        sent = 0
        while sent < size:
            c.s.sendall(chunk)
            sent += len(chunk)
            if pause and sent == len(chunk):
                time.sleep(pause)
        c.s.sendall(b".\r\n")
        return c.reply()

    def assert_serves(self):
        """A clean transaction against a well-behaved downstream goes through."""
        self.down.mode = {}
        tag = token()
        c = self.client()
        r = self.begin(c)
        self.assertEqual(code(r), 250, r)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        c.s.sendall(self.message(tag) + b".\r\n")
        r = c.reply()
        self.assertEqual(r, b"250 2.0.0 queued downstream\r\n")
        self.assertTrue(self.arrived(tag), "the message did not arrive downstream")
        c.close()

    def assert_451(self, r, detail=b"4.4.2"):
        self.assertEqual(code(r), 451, r)
        self.assertIn(b"451 " + detail, r)

    # ---- 1-3: greeting and EHLO ----

    def test_01_garbage_greeting(self):
        self.down.mode = {"greet": b"hello\r\n"}
        c = self.client()
        r = self.begin(c)
        self.assert_451(r)
        self.assertEqual(len(self.sessions()), 1, "the gateway did not connect downstream")
        # the same client session goes on: a new transaction against a sane downstream
        self.down.mode = {}
        self.assertEqual(code(c.cmd(b"RSET")), 250)
        tag = token()
        r = self.begin(c)
        self.assertEqual(code(r), 250, r)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        c.s.sendall(self.message(tag) + b".\r\n")
        self.assertEqual(c.reply(), b"250 2.0.0 queued downstream\r\n")
        self.assertTrue(self.arrived(tag))
        c.close()
        self.assert_serves()

    def test_02_greeting_554(self):
        self.down.mode = {"greet": b"554 5.3.2 not now\r\n"}
        c = self.client()
        r = self.begin(c)
        self.assert_451(r)
        recs = self.sessions()
        self.assertEqual(len(recs), 1)
        self.wait_closed(recs)
        self.assertFalse(any(l.startswith((b"MAIL", b"RCPT")) for l in recs[0]["cmds"]),
                         recs[0]["cmds"])
        c.close()

    def test_03_ehlo_502_falls_back_to_helo(self):
        self.down.mode = {"ehlo": b"502 5.5.1 no EHLO here\r\n"}
        tag = token()
        c = self.client()
        r = self.begin(c)
        self.assertEqual(code(r), 250, r)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        c.s.sendall(self.message(tag) + b".\r\n")
        self.assertEqual(c.reply(), b"250 2.0.0 queued downstream\r\n")
        recs = self.sessions()
        self.assertEqual(len(recs), 1)
        verbs = [l[:4].upper() for l in recs[0]["cmds"]]
        self.assertEqual(verbs[:4], [b"EHLO", b"HELO", b"MAIL", b"RCPT"], recs[0]["cmds"])
        self.assertTrue(recs[0]["cmds"][1].startswith(b"HELO mx.example.com"), recs[0]["cmds"])
        self.assertTrue(recs[0]["dot"] and tag.encode() in recs[0]["msgs"][0])
        c.close()

    # ---- 4-6: over-long, endless and missing replies ----

    def test_04_overlong_reply_line_to_mail(self):
        def overlong(s):
            s.sendall(b"250 " + b"x" * 5000)
            time.sleep(1.0)
            s.sendall(b"\r\n")
        self.down.mode = {"mail": overlong}
        c = self.client()
        t0 = time.time()
        r = self.begin(c)
        self.assert_451(r)
        self.assertLess(time.time() - t0, TIMEOUT + 2)
        recs = self.sessions()
        self.assertFalse(any(l.startswith(b"RCPT") for l in recs[0]["cmds"]), recs[0]["cmds"])
        c.close()

    def test_04b_overlong_reply_line_in_one_piece(self):
        # 2000 octets and the CRLF in one write: still over the 1000-octet limit
        self.down.mode = {"mail": b"250 " + b"x" * 2000 + b"\r\n"}
        c = self.client()
        r = self.begin(c)
        self.assert_451(r)
        c.close()

    def test_05_ehlo_reply_of_500_lines(self):
        self.down.mode = {"ehlo": b"250-down\r\n" + b"250-X-FILLER\r\n" * 498 + b"250 8BITMIME\r\n"}
        c = self.client()
        r = self.begin(c)
        self.assert_451(r)
        recs = self.sessions()
        self.assertFalse(any(l.startswith(b"MAIL") for l in recs[0]["cmds"]), recs[0]["cmds"])
        c.close()

    def test_06_rcpt_reply_never_comes(self):
        self.down.mode = {"rcpt_hang": True}
        c = self.client()
        self.assertEqual(code(c.cmd(b"EHLO client.test")), 250)
        self.assertEqual(code(c.cmd(b"MAIL FROM:<a@example.com>")), 250)
        t0 = time.time()
        r = c.cmd(b"RCPT TO:<b@example.com>")
        took = time.time() - t0
        self.assert_451(r)
        self.assertLess(took, TIMEOUT + 2, "RCPT answered after %.1f s" % took)
        self.assertGreater(took, TIMEOUT - 1, "RCPT answered after %.1f s: not the timeout" % took)
        recs = self.sessions()
        self.wait_closed(recs, 3)
        self.assertIsNotNone(recs[0]["t_hangup"], "the gateway kept the silent session open")
        self.assertEqual(code(c.cmd(b"NOOP")), 250)
        c.close()

    # ---- 7: PIPELINING ----

    def test_07a_pipelining_mail_and_rcpt_together(self):
        # the EHLO reply is slow, so the client's RCPT is known before MAIL can go
        # downstream (whether the gateway opens the session at MAIL or at RCPT)
        self.down.mode = {"pipelining": True, "check_mail": True, "ehlo_delay": 0.3}
        tag = token()
        c = self.client()
        r = self.begin(c)
        self.assertEqual(code(r), 250, r)
        recs = self.sessions()
        self.assertEqual(len(recs), 1)
        pend = recs[0]["pending_after_mail"]
        self.assertIsNotNone(pend)
        self.assertTrue(pend.startswith(b"RCPT TO:<b@example.com>\r\n"),
                        "PIPELINING offered but RCPT not sent with MAIL: pending %r" % pend)
        # and the rest of a pipelined session goes through
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        c.s.sendall(self.message(tag) + b".\r\n")
        self.assertEqual(c.reply(), b"250 2.0.0 queued downstream\r\n")
        self.assertTrue(self.arrived(tag))
        c.close()

    def test_07b_no_pipelining_rcpt_waits_for_mail_reply(self):
        self.down.mode = {"pipelining": False, "check_mail": True, "ehlo_delay": 0.3}
        c = self.client()
        r = self.begin(c)
        self.assertEqual(code(r), 250, r)
        recs = self.sessions()
        self.assertEqual(recs[0]["pending_after_mail"], b"",
                         "RCPT sent before the MAIL reply without PIPELINING")
        self.assertTrue(any(l.startswith(b"RCPT TO:<b@example.com>") for l in recs[0]["cmds"]))
        c.close()

    def late_rcpt(self, pipelining):
        """The client's RCPT comes while the downstream sits on its MAIL reply
        (a gateway that opens the session at MAIL has sent MAIL by then)."""
        self.down.mode = {"pipelining": pipelining, "check_mail": True}
        c = self.client()
        self.assertEqual(code(c.cmd(b"EHLO client.test")), 250)
        self.assertEqual(code(c.cmd(b"MAIL FROM:<a@example.com>")), 250)
        time.sleep(0.08)
        r = c.cmd(b"RCPT TO:<b@example.com>")
        self.assertEqual(code(r), 250, r)
        recs = self.sessions()
        self.assertEqual(len(recs), 1)
        c.close()
        return recs[0]["pending_after_mail"]

    def test_07c_no_pipelining_late_rcpt_waits_for_mail_reply(self):
        self.assertEqual(self.late_rcpt(False), b"",
                         "RCPT sent before the MAIL reply without PIPELINING")

    def test_07d_pipelining_late_rcpt_goes_at_once(self):
        pend = self.late_rcpt(True)
        self.assertTrue(pend.startswith(b"RCPT TO:<b@example.com>\r\n"),
                        "PIPELINING offered, yet RCPT waited for the MAIL reply: %r" % pend)

    # ---- 8-10: trouble during DATA ----

    def test_08_421_out_of_turn_during_body(self):
        self.down.mode = {"abort_after": 200000}
        tag = token()
        c = self.client()
        self.assertEqual(code(self.begin(c)), 250)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        r = self.send_big(c, tag)
        self.assertIsNotNone(code(r), "no reply to the final dot: %r" % r)
        self.assertTrue(400 <= code(r) < 500, r)
        recs = self.sessions()
        self.assertEqual(len(recs), 1)
        self.assertFalse(recs[0]["dot"])
        self.assertGreaterEqual(len(recs[0]["raw"]), 200000)
        c.close()
        self.assert_serves()

    def test_08b_250_out_of_turn_during_body(self):
        self.down.mode = {"abort_after": 100000, "body_reply": b"250 2.0.0 what dot?\r\n"}
        tag = token()
        c = self.client()
        self.assertEqual(code(self.begin(c)), 250)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        r = self.send_big(c, tag, size=1024 * 1024)
        self.assert_451(r)
        c.close()

    def test_08d_554_out_of_turn_during_body(self):
        # a reply in the middle of the body is out of turn: our own 4xx, not a bounce
        self.down.mode = {"abort_after": 100000, "body_reply": b"554 5.0.0 go away\r\n"}
        tag = token()
        c = self.client()
        self.assertEqual(code(self.begin(c)), 250)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        r = self.send_big(c, tag, size=1024 * 1024)
        self.assertIsNotNone(code(r), r)
        self.assertTrue(400 <= code(r) < 500, r)
        c.close()

    def test_08c_extra_reply_after_rcpt(self):
        self.down.mode = {"rcpt": b"250 2.1.5 ok\r\n250 2.0.0 and again\r\n"}
        tag = token()
        c = self.client()
        self.assertEqual(code(self.begin(c)), 250)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        c.s.sendall(self.message(tag) + b".\r\n")
        r = c.reply()
        self.assert_451(r)
        self.assertFalse(self.arrived(tag))
        c.close()

    def test_09_close_right_after_354_small(self):
        self.down.mode = {"close_354": True}
        tag = token()
        c = self.client()
        self.assertEqual(code(self.begin(c)), 250)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        c.s.sendall(self.message(tag) + b".\r\n")
        self.assert_451(c.reply())
        c.close()
        self.assert_serves()

    def test_09b_close_right_after_354_streamed(self):
        self.down.mode = {"close_354": True}
        tag = token()
        c = self.client()
        self.assertEqual(code(self.begin(c)), 250)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        r = self.send_big(c, tag)
        self.assert_451(r)
        c.close()
        self.assert_serves()

    def test_09c_final_reply_never_comes(self):
        self.down.mode = {"stall": True}
        tag = token()
        c = self.client()
        self.assertEqual(code(self.begin(c)), 250)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        t0 = time.time()
        r = self.send_big(c, tag, size=1024 * 1024)
        took = time.time() - t0
        self.assert_451(r)
        self.assertLess(took, TIMEOUT + 4, "final dot answered after %.1f s" % took)
        c.close()

    def test_10_data_refused_554_small(self):
        self.down.mode = {"data": b"554 5.7.1 no thanks\r\n"}
        tag = token()
        c = self.client()
        self.assertEqual(code(self.begin(c)), 250)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        c.s.sendall(self.message(tag) + b".\r\n")
        r = c.reply()
        self.assertEqual(r, b"554 5.7.1 no thanks\r\n")
        recs = self.sessions()
        self.assertFalse(recs[0]["dot"])
        self.assertEqual(bytes(recs[0]["raw"]), b"", "message bytes sent after DATA was refused")
        c.close()

    def test_10b_data_refused_554_streamed(self):
        self.down.mode = {"data": b"554 5.7.1 no thanks\r\n"}
        tag = token()
        c = self.client()
        self.assertEqual(code(self.begin(c)), 250)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        r = self.send_big(c, tag, size=1024 * 1024)
        self.assertEqual(r, b"554 5.7.1 no thanks\r\n")
        recs = self.sessions()
        self.assertFalse(recs[0]["dot"])
        self.assertEqual(recs[0]["cmds"][-1], b"DATA\r\n",
                         "message bytes taken as commands: %r" % recs[0]["cmds"][-3:])
        c.close()

    def test_10c_data_refused_554_then_hangup_streamed(self):
        # the downstream refuses DATA and closes; the refusal is still the answer
        self.down.mode = {"data": b"554 5.7.1 no thanks\r\n", "data_close": True}
        tag = token()
        c = self.client()
        self.assertEqual(code(self.begin(c)), 250)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        # DATA goes downstream with the first piece (>= 64 KB); the 554 and the
        # hang-up come while the client is still sending
        r = self.send_big(c, tag, size=1024 * 1024, pause=0.5)
        self.assertEqual(r, b"554 5.7.1 no thanks\r\n")
        c.close()

    def test_10d_data_refused_554_slow_client(self):
        # a well-behaved downstream refuses DATA and waits; the client takes
        # longer than the downstream timeout to send its message
        self.down.mode = {"data": b"554 5.7.1 no thanks\r\n"}
        tag = token()
        c = self.client()
        self.assertEqual(code(self.begin(c)), 250)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        c.s.sendall(self.message(tag, b"x" * 78 + b"\r\n"))
        t_end = time.time() + TIMEOUT + 1.5
        while time.time() < t_end:
            time.sleep(0.5)
            c.s.sendall(b"w" * 78 + b"\r\n")
        c.s.sendall(b".\r\n")
        r = c.reply()
        self.assertEqual(r, b"554 5.7.1 no thanks\r\n")
        c.close()

    # ---- 11: dot-stuffing ----

    def test_11_dot_stuffing_small(self):
        tag = token()
        body = (b".leading dot\r\n..two dots\r\n.\r\nthe line above was a lone dot\r\n"
                b"...\r\n. space\r\nmid.dle\r\n.\r\n..\r\nend\r\n")
        msg = self.message(tag, body)
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=20) as s:
            refused = s.sendmail("a@example.com", ["b@example.com"], msg)
            self.assertEqual(refused, {})
        msgs = self.arrived(tag)
        self.assertEqual(len(msgs), 1)
        raw = msgs[0]
        self.assertTrue(raw.endswith(b"\r\n"))
        got = strip_received(raw)
        self.assertEqual(got, stuff(msg), "not stuffed exactly once on the wire")
        self.assertEqual(unstuff(got), msg)

    def test_11b_dot_stuffing_streamed(self):
        # ~1.5 MB where every line starts with a dot: piece boundaries fall after
        # CRLF, between CR and LF, and inside lines
        tag = token()
        lines = []
        for i in range(24000):
            lines.append(b"." * (1 + i % 3) + (b"%d" % i) * (i % 17) + b"\r\n")
            if i % 7 == 0:
                lines.append(b".\r\n")
        msg = self.message(tag, b"".join(lines))
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=20) as s:
            self.assertEqual(s.sendmail("a@example.com", ["b@example.com"], msg), {})
        msgs = self.arrived(tag)
        self.assertEqual(len(msgs), 1)
        got = strip_received(msgs[0])
        self.assertEqual(len(got), len(stuff(msg)))
        self.assertTrue(got == stuff(msg), "not stuffed exactly once on the wire")
        self.assertTrue(unstuff(got) == msg)

    # ---- more refusals and reachability ----

    def test_12_rcpt_refusal_mirrored(self):
        self.down.mode = {"rcpt": b"550 5.1.1 <b@example.com>: no such user\r\n"}
        c = self.client()
        r = self.begin(c)
        self.assertEqual(r, b"550 5.1.1 <b@example.com>: no such user\r\n")
        self.assertEqual(code(c.cmd(b"DATA")), 554)
        c.close()

    def test_13_mail_refusal_mirrored_at_rcpt(self):
        self.down.mode = {"mail": b"553 5.1.8 sender refused\r\n", "pipelining": True}
        c = self.client()
        r = self.begin(c)
        self.assertEqual(r, b"553 5.1.8 sender refused\r\n")
        c.close()
        self.assert_serves()

    def test_13b_reply_text_made_printable(self):
        self.down.mode = {"rcpt": b"550 5.1.1 no\x00such\x1b[31muser\xff\r\n"}
        c = self.client()
        r = self.begin(c)
        self.assertEqual(r, b"550 5.1.1 no?such?[31muser?\r\n")
        c.close()

    def test_15_downstream_hangs_up_after_mail(self):
        self.down.mode = {"mail_close": True}
        c = self.client()
        r = self.begin(c)
        self.assert_451(r)
        c.close()
        self.assert_serves()

    def test_16_client_leaves_while_rcpt_pending(self):
        self.down.mode = {"rcpt_delay": 1.0}
        c = self.client()
        self.assertEqual(code(c.cmd(b"EHLO client.test")), 250)
        self.assertEqual(code(c.cmd(b"MAIL FROM:<a@example.com>")), 250)
        c.s.sendall(b"RCPT TO:<b@example.com>\r\n")
        time.sleep(0.2)
        c.vanish()
        recs = self.sessions()
        self.wait_closed(recs, 3)     # < smtp_timeout after the RCPT reply
        self.assertTrue(recs and all(r["closed"] for r in recs),
                        "downstream session left open after the client went")
        self.assertFalse(any(r["dot"] for r in recs))
        self.assert_serves()

    def test_17_client_leaves_mid_body(self):
        tag = token()
        c = self.client()
        self.assertEqual(code(self.begin(c)), 250)
        self.assertEqual(code(c.cmd(b"DATA")), 354)
        c.s.sendall(self.message(tag) + (b"v" * 78 + b"\r\n") * 13000)
        time.sleep(0.3)
        c.vanish()
        recs = self.sessions()
        self.wait_closed(recs, 2)     # < smtp_timeout
        self.assertTrue(recs and all(r["closed"] for r in recs), recs and recs[0]["cmds"])
        self.assertFalse(any(r["dot"] for r in recs), "unfinished message got a final dot")
        self.assert_serves()

    # ---- a downstream that ends the session between messages ----
    # (whether or not the gateway keeps finished sessions for the next message,
    # the next message must get through on a fresh connection)

    def next_message_in_same_session(self, mode, gap):
        self.down.mode = mode
        c = self.client()
        for i in range(2):
            tag = token()
            r = self.begin(c) if i == 0 else c.cmd(b"MAIL FROM:<a@example.com>")
            if i == 1:
                self.assertEqual(code(r), 250, r)
                r = c.cmd(b"RCPT TO:<b@example.com>")
            self.assertEqual(code(r), 250, "message %d: RCPT %r" % (i + 1, r))
            self.assertEqual(code(c.cmd(b"DATA")), 354)
            c.s.sendall(self.message(tag) + b".\r\n")
            r = c.reply()
            self.assertEqual(r, b"250 2.0.0 queued downstream\r\n", "message %d" % (i + 1))
            self.assertEqual(len(self.arrived(tag)), 1)
            time.sleep(gap)
        c.close()

    def test_18_downstream_closes_after_final_reply(self):
        self.next_message_in_same_session({"close_after_final": True}, 0.2)

    def test_18b_downstream_closes_after_final_reply_next_at_once(self):
        self.next_message_in_same_session({"close_after_final": True}, 0)

    def test_18c_downstream_421_between_messages(self):
        self.next_message_in_same_session({"421_after_final": True}, 0.3)

    def test_18e_reused_session_closed_at_mail(self):
        self.next_message_in_same_session({"later_mail": b""}, 0)

    def test_18f_reused_session_421_at_mail(self):
        self.next_message_in_same_session(
            {"later_mail": b"421 4.4.2 down idle too long, closing\r\n"}, 0)

    def test_18g_reused_pipelining_session_421_at_mail(self):
        self.next_message_in_same_session(
            {"later_mail": b"421 4.4.2 down idle too long, closing\r\n", "pipelining": True}, 0)

    def test_18d_next_client_after_downstream_closed(self):
        self.down.mode = {"close_after_final": True}
        for i in range(3):
            tag = token()
            c = self.client()
            self.assertEqual(code(self.begin(c)), 250)
            self.assertEqual(code(c.cmd(b"DATA")), 354)
            c.s.sendall(self.message(tag) + b".\r\n")
            self.assertEqual(c.reply(), b"250 2.0.0 queued downstream\r\n", "message %d" % (i + 1))
            c.close()

    def test_14_downstream_unreachable(self):
        self.down.stop()
        try:
            time.sleep(0.1)
            c = self.client()
            r = self.begin(c)
            self.assert_451(r, b"4.4.1")
            c.close()
        finally:
            self.down.listen()
        self.assert_serves()


if __name__ == "__main__":
    sys.exit(runner.main(require=("portcullisd",)))
