#!/usr/bin/python3
"""Big messages are spooled, not held: the smtp worker's memory stays bounded
whatever the message size, and every message arrives intact.

Three gateways (services = smtp), each a real portcullisd:
  - delivery = maildir:DIR, message_size_limit = 30000000: 20 clients send a
    20 MB message each at the same time; then a 31 MB message (refused 552:
    its tmp/ file is gone) and a client that vanishes mid-DATA (its tmp/ file
    is gone too);
  - delivery = maildir:DIR, message_size_limit = 0: one 100 MB message;
  - delivery = relay:[127.0.0.1]:PORT to a downstream (in this file) that
    stalls 4 s after its 354 before reading a 64 MB message: the gateway stops
    reading its client meanwhile instead of buffering; the same over STARTTLS.
  - delivery into a 4 MB tmpfs (root only, else skipped): an 8 MB message
    gets 452 4.3.1, its partial spool file goes, the session goes on.
Asserted each time: the growth of the worker's peak RSS (VmHWM of the master's
child, /proc/PID/status) stays under a bound far below the data in flight;
every 250 message is in new/ (or downstream) exactly once, byte for byte
what was sent (sha256) behind the gateway's own header lines.

ASan keeps freed chunks in its quarantine (RSS that says nothing about our
own buffers): the daemon here runs with quarantine_size_mb=16.

Run: PORTCULLIS_BIN=build/asan/bin python3 tests/integration/test_smtp_spool.py
Last line "N passed, N failed".
"""
import hashlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import runner  # noqa: E402
from harness.daemon import SANITIZER_RE, Daemon  # noqa: E402
from harness.fakesmtp import FakeSMTP, unstuff  # noqa: E402
from harness.util import proc_children as children, wait_until  # noqa: E402

BASE = (("services", "smtp"), ("smtp_listen", "127.0.0.1:{port}"),
        ("myhostname", "mx.spool.test"), ("mydomains", "example.com"),
        ("relay_networks", "127.0.0.1"), ("state_dir", "{dir}/state"),
        ("users", "file:{dir}/users"), ("smtp_timeout", "60"),
        ("smtp_max_per_client", "100"), ("log_level", "info"))
MB = 1024 * 1024
LINE = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-the-quick-fox\r\n"
# the gateway's own lines in front of the message: Return-Path:, Received: (folded)
HEAD_RE = re.compile(rb"\A(?:(?:Return-Path|Received): [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)+\Z")


def status_kb(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for l in f:
            if l.startswith(key + ":"):
                return int(l.split()[1])
    return 0


def body_piece(i):
    """1 MiB of body lines, some needing dot-stuffing; distinct per i."""
    lines = [(b"." if k % 97 == 3 else b"") + b"%08d " % (i * 100000 + k) + LINE
             for k in range(MB // (len(LINE) + 9))]
    return b"".join(lines)


PIECES = [body_piece(i) for i in range(8)]


def message_parts(marker, size_mb):
    """(header bytes, list of body pieces) of a message of about size_mb MiB."""
    head = ("From: <s@outside.test>\r\nTo: <alice@example.com>\r\nSubject: spool %s\r\n"
            "Message-ID: <%s@spool.test>\r\n\r\n" % (marker, marker)).encode()
    return head, [PIECES[i % len(PIECES)] for i in range(size_mb)]


def stuffed(piece):
    return re.sub(rb"(?m)^\.", b"..", piece)


STUFFED = {id(p): stuffed(p) for p in PIECES}


def digest(head, pieces):
    h = hashlib.sha256(head)
    for p in pieces:
        h.update(p)
    return h.hexdigest(), len(head) + sum(len(p) for p in pieces)


class Client:
    def __init__(self, port, timeout=120):
        self.s = socket.create_connection(("127.0.0.1", port), timeout)
        self.f = self.s.makefile("rb")

    def reply(self):
        while True:
            line = self.f.readline()
            if not line or line[3:4] != b"-":
                return line

    def cmd(self, line):
        self.s.sendall(line + b"\r\n")
        return self.reply()

    def begin(self, rcpt=b"alice@example.com"):
        assert self.reply().startswith(b"220")
        assert self.cmd(b"EHLO client.spool.test").startswith(b"250")
        assert self.cmd(b"MAIL FROM:<s@outside.test>").startswith(b"250")
        r = self.cmd(b"RCPT TO:<" + rcpt + b">")
        assert r.startswith(b"250"), r
        r = self.cmd(b"DATA")
        assert r.startswith(b"354"), r

    def send_message(self, head, pieces):
        self.s.sendall(head)
        for p in pieces:
            self.s.sendall(STUFFED[id(p)])
        self.s.sendall(b".\r\n")
        return self.reply()

    def close(self):
        try:
            self.cmd(b"QUIT")
        except OSError:
            pass
        self.f.close()
        self.s.close()


class Gateway:
    """One portcullisd (services = smtp) with the given delivery."""

    def __init__(self, tag, extra):
        extra = extra.replace("MAILDIR", "{dir}/mail")
        self.dm = Daemon("spool-%s" % tag, BASE, **dict(
            l.split(" = ", 1) for l in extra.splitlines() if l))
        self.dir, self.port, self.conf = self.dm.dir, self.dm.port, self.dm.conf
        self.maildir = os.path.join(self.dir, "mail")
        p = self.dm.cli("user", "add", "alice@example.com", "--password-stdin", input="pw\n",
                        check=False)
        assert p.returncode == 0, p.stderr
        self.dm.start(env={"ASAN_OPTIONS": "detect_leaks=1:quarantine_size_mb=16"})
        self.proc = self.dm.proc
        wait_until(lambda: children(self.proc.pid), 5, what="smtp worker")
        self.worker = children(self.proc.pid)[0]
        # the worker's first connections allocate what it keeps: warm it up
        c = Client(self.port)
        c.reply()
        c.close()
        self.hwm0 = status_kb(self.worker, "VmHWM")

    def hwm_growth_mb(self):
        return (status_kb(self.worker, "VmHWM") - self.hwm0) / 1024.0

    def box(self, sub):
        d = os.path.join(self.maildir, "example.com", "alice", "Maildir", sub)
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def stored(self, marker):
        out = []
        for n in self.box("new"):
            path = os.path.join(self.maildir, "example.com", "alice", "Maildir", "new", n)
            with open(path, "rb") as f:
                head = f.read(4096)
            if ("<%s@spool.test>" % marker).encode() in head:
                out.append(path)
        return out

    def stop(self):
        rc = self.dm.stop(15)[0]
        text = self.dm.log_text()
        bad = [l for l in text.splitlines() if SANITIZER_RE.search(l) or
               "killed by signal" in l]
        self.dm.close()
        return rc, bad, text


def check_file(tc, path, head, pieces):
    """path holds our header lines, then exactly the message (sha256)."""
    want, n = digest(head, pieces)
    size = os.path.getsize(path)
    tc.assertGreaterEqual(size, n)
    with open(path, "rb") as f:
        ours = f.read(size - n)
        h = hashlib.sha256()
        while True:
            b = f.read(MB)
            if not b:
                break
            h.update(b)
    tc.assertRegex(ours, HEAD_RE, "the gateway's own lines, then the message")
    tc.assertEqual(h.hexdigest(), want, "%s: message differs from the one sent" % path)


class T1MaildirConcurrent(unittest.TestCase):
    N = 20
    SIZE_MB = 20
    BOUND_MB = 64      # 20 x 20 MB in flight; held whole that is 400 MB and more

    @classmethod
    def setUpClass(cls):
        cls.g = Gateway("maildir", "delivery = maildir:MAILDIR\nmessage_size_limit = 30000000\n")

    @classmethod
    def tearDownClass(cls):
        rc, bad, text = cls.g.stop()
        assert rc == 0 and not bad, "daemon exit %s; %s\n%s" % (rc, bad[:5], text[-3000:])

    def test_1_twenty_concurrent_20mb(self):
        g = self.g
        results = [None] * self.N
        markers = [uuid.uuid4().hex for _ in range(self.N)]

        def one(i):
            try:
                c = Client(g.port)
                c.begin()
                head, pieces = message_parts(markers[i], self.SIZE_MB)
                results[i] = c.send_message(head, pieces)
                c.close()
            except (OSError, AssertionError) as e:
                results[i] = repr(e).encode()

        ts = [threading.Thread(target=one, args=(i,)) for i in range(self.N)]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        for t in ts:
            t.join(300)
        took = time.monotonic() - t0
        growth = g.hwm_growth_mb()
        print("  %d x %d MB in %.1f s; worker VmHWM grew %.1f MB" % (
            self.N, self.SIZE_MB, took, growth), file=sys.stderr)
        for i, r in enumerate(results):
            self.assertTrue(r is not None and r.startswith(b"250 "), "client %d: %r" % (i, r))
        self.assertLess(growth, self.BOUND_MB, "worker peak RSS grew %.1f MB" % growth)
        for i in range(self.N):
            found = g.stored(markers[i])
            self.assertEqual(len(found), 1, "message %d stored %d times" % (i, len(found)))
            head, pieces = message_parts(markers[i], self.SIZE_MB)
            check_file(self, found[0], head, pieces)
        self.assertEqual(g.box("tmp"), [], "tmp/ is empty once every message is in new/")

    def test_2_over_the_limit_is_refused_and_its_spool_removed(self):
        g = self.g
        m = uuid.uuid4().hex
        c = Client(g.port)
        c.begin()
        head, pieces = message_parts(m, 31)
        r = c.send_message(head, pieces)
        self.assertTrue(r.startswith(b"552 5.3.4"), r)
        c.close()
        self.assertEqual(g.stored(m), [])
        self.assertEqual(g.box("tmp"), [], "the spool file of a refused message is removed")

    def test_3_client_gone_mid_data_spool_removed(self):
        g = self.g
        m = uuid.uuid4().hex
        c = Client(g.port)
        c.begin()
        head, pieces = message_parts(m, 6)
        c.s.sendall(head)
        for p in pieces:
            c.s.sendall(STUFFED[id(p)])
        # the gateway has spooled some of it by now
        wait_until(lambda: g.box("tmp"), 10, what="a spool file in tmp/")
        c.f.close()
        c.s.close()
        wait_until(lambda: not g.box("tmp"), 10, what="tmp/ to be emptied")
        self.assertEqual(g.stored(m), [])


class T2MaildirUnlimited(unittest.TestCase):
    SIZE_MB = 100
    BOUND_MB = 48

    def test_100mb_with_no_size_limit(self):
        g = Gateway("unlimited", "delivery = maildir:MAILDIR\nmessage_size_limit = 0\n")
        try:
            m = uuid.uuid4().hex
            c = Client(g.port)
            c.begin()
            head, pieces = message_parts(m, self.SIZE_MB)
            r = c.send_message(head, pieces)
            c.close()
            growth = g.hwm_growth_mb()
            print("  %d MB message; worker VmHWM grew %.1f MB" % (self.SIZE_MB, growth),
                  file=sys.stderr)
            self.assertTrue(r.startswith(b"250 "), r)
            self.assertLess(growth, self.BOUND_MB, "worker peak RSS grew %.1f MB" % growth)
            found = g.stored(m)
            self.assertEqual(len(found), 1)
            check_file(self, found[0], head, pieces)
        finally:
            rc, bad, text = g.stop()
        self.assertTrue(rc == 0 and not bad, "daemon exit %s; %s" % (rc, bad[:5]))


class SlowDownstream(FakeSMTP):
    """After its 354 it reads nothing for `stall` seconds, then the body;
    bodies: the messages taken (dot-stuffing undone)."""

    def __init__(self, stall):
        self.stall = stall
        super().__init__({"greet": b"220 slow ESMTP\r\n", "ehlo": b"250-slow\r\n250 PIPELINING\r\n",
                          "pause_354": stall, "bulk": True, "final": b"250 2.0.0 slow ok\r\n",
                          "other": b"250 ok\r\n"}, backlog=8)

    @property
    def bodies(self):
        with self.lock:
            return [unstuff(bytes(t["raw"])) for t in self.transactions if t["dot"]]

    @property
    def t_354(self):
        with self.lock:
            return max((r["t_354"] for r in self.sessions if r["t_354"]), default=None)


class T3PassThroughSlowDownstream(unittest.TestCase):
    SIZE_MB = 64
    BOUND_MB = 24

    def test_slow_downstream_client_not_buffered(self):
        down = SlowDownstream(stall=4)
        g = Gateway("relay", "delivery = relay:[127.0.0.1]:%d\nmessage_size_limit = 0\n"
                    % down.port)
        try:
            m = uuid.uuid4().hex
            c = Client(g.port)
            c.begin()
            head, pieces = message_parts(m, self.SIZE_MB)
            t0 = time.monotonic()
            r = c.send_message(head, pieces)
            took = time.monotonic() - t0
            c.close()
            growth = g.hwm_growth_mb()
            print("  %d MB through a downstream that stalled %d s: %.1f s; worker VmHWM "
                  "grew %.1f MB" % (self.SIZE_MB, down.stall, took, growth), file=sys.stderr)
            self.assertTrue(r.startswith(b"250 2.0.0 slow ok"), r)
            self.assertLess(growth, self.BOUND_MB, "worker peak RSS grew %.1f MB" % growth)
            self.assertEqual(len(down.bodies), 1)
            got = down.bodies[0]
            self.assertTrue(got.startswith(b"Received: "), got[:100])
            i = got.index(head[:40])
            self.assertRegex(got[:i], HEAD_RE)
            want, n = digest(head, pieces)
            self.assertEqual(hashlib.sha256(got[i:]).hexdigest(), want,
                             "the message differs downstream")
        finally:
            rc, bad, text = g.stop()
            down.stop()
        self.assertTrue(rc == 0 and not bad, "daemon exit %s; %s" % (rc, bad[:5]))


class T4PassThroughSlowDownstreamTLS(unittest.TestCase):
    """The same behind STARTTLS: reading stops inside the TLS layer too.
    (TLS records cost ASan more: 26 MB of growth for 32 MB there, 3.6 MB in
    the release build; main grows by more than the message.)"""
    SIZE_MB = 64
    BOUND_MB = 40

    def test_slow_downstream_starttls_client(self):
        down = SlowDownstream(stall=3)
        keydir = tempfile.mkdtemp(prefix="portcullis-spool-pki.", dir="/tmp")
        try:
            p = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                                "-days", "2", "-subj", "/CN=mx.spool.test",
                                "-keyout", os.path.join(keydir, "k.pem"),
                                "-out", os.path.join(keydir, "c.pem")],
                               capture_output=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            g = Gateway("relaytls", "delivery = relay:[127.0.0.1]:%d\nmessage_size_limit = 0\n"
                        "tls_cert_file = %s/c.pem\ntls_key_file = %s/k.pem\n"
                        % (down.port, keydir, keydir))
        except Exception:
            shutil.rmtree(keydir, ignore_errors=True)
            down.stop()
            raise
        try:
            m = uuid.uuid4().hex
            c = Client(g.port)
            self.assertTrue(c.reply().startswith(b"220"))
            self.assertTrue(c.cmd(b"EHLO client.spool.test").startswith(b"250"))
            self.assertTrue(c.cmd(b"STARTTLS").startswith(b"220"))
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            c.s = ctx.wrap_socket(c.s)
            c.f = c.s.makefile("rb")
            self.assertTrue(c.cmd(b"EHLO client.spool.test").startswith(b"250"))
            self.assertTrue(c.cmd(b"MAIL FROM:<s@outside.test>").startswith(b"250"))
            self.assertTrue(c.cmd(b"RCPT TO:<alice@example.com>").startswith(b"250"))
            self.assertTrue(c.cmd(b"DATA").startswith(b"354"))
            head, pieces = message_parts(m, self.SIZE_MB)
            r = c.send_message(head, pieces)
            c.close()
            growth = g.hwm_growth_mb()
            print("  %d MB over STARTTLS through a downstream that stalled %d s; worker "
                  "VmHWM grew %.1f MB" % (self.SIZE_MB, down.stall, growth), file=sys.stderr)
            self.assertTrue(r.startswith(b"250 2.0.0 slow ok"), r)
            self.assertLess(growth, self.BOUND_MB, "worker peak RSS grew %.1f MB" % growth)
            got = down.bodies[0]
            i = got.index(head[:40])
            want, n = digest(head, pieces)
            self.assertEqual(hashlib.sha256(got[i:]).hexdigest(), want)
        finally:
            rc, bad, text = g.stop()
            down.stop()
            shutil.rmtree(keydir, ignore_errors=True)
        self.assertTrue(rc == 0 and not bad, "daemon exit %s; %s" % (rc, bad[:5]))



class T5DiskFull(unittest.TestCase):
    """A store that fills up mid-message: the rest is read and dropped, the
    final dot gets 452 4.3.1, nothing is left in tmp/, and the next message
    that fits is delivered. The store is a 4 MB tmpfs (needs root: skipped
    where mount is not allowed)."""

    def test_disk_full_452_and_nothing_left(self):
        mnt = tempfile.mkdtemp(prefix="portcullis-spool-full.", dir="/tmp")
        os.chmod(mnt, 0o755)
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", mnt],
                           capture_output=True, timeout=30)
        if p.returncode != 0:
            os.rmdir(mnt)
            self.skipTest("cannot mount a tmpfs here: %s" % p.stderr.decode().strip())
        g = None
        try:
            g = Gateway("full", "delivery = maildir:%s\nmessage_size_limit = 0\n" % mnt)
            g.maildir = mnt
            m = uuid.uuid4().hex
            c = Client(g.port)
            c.begin()
            head, pieces = message_parts(m, 8)
            r = c.send_message(head, pieces)
            self.assertTrue(r.startswith(b"452 4.3.1"), r)
            self.assertEqual(g.box("tmp"), [], "the partial spool file is removed")
            self.assertEqual(g.stored(m), [])
            # the same session goes on, and a message that fits is delivered
            self.assertTrue(c.cmd(b"MAIL FROM:<s@outside.test>").startswith(b"250"))
            self.assertTrue(c.cmd(b"RCPT TO:<alice@example.com>").startswith(b"250"))
            self.assertTrue(c.cmd(b"DATA").startswith(b"354"))
            m2 = uuid.uuid4().hex
            head2, pieces2 = message_parts(m2, 1)
            r = c.send_message(head2, pieces2)
            self.assertTrue(r.startswith(b"250 "), r)
            c.close()
            (path,) = g.stored(m2)
            check_file(self, path, head2, pieces2)
        finally:
            if g is not None:
                rc, bad, text = g.stop()
            subprocess.run(["umount", mnt], capture_output=True, timeout=30)
            os.rmdir(mnt)
        self.assertTrue(rc == 0 and not bad, "daemon exit %s; %s" % (rc, bad[:5]))


if __name__ == "__main__":
    sys.exit(runner.main())
