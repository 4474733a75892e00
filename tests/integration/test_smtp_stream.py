#!/usr/bin/python3
"""Pass-through streams: the downstream gets the message while the client is
still sending it, and a message refused at the end is abandoned mid-DATA
(the downstream never sees its final dot, so it discards it).

The downstream here is a small recording SMTP server in this file (so the
test can see bytes arrive and whether the final dot came); the client is
python smtplib over raw sends. Last line: "N passed, N failed".
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("PORTCULLIS_BIN", os.path.join(REPO, "bin"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Downstream(threading.Thread):
    """Records each session: bytes of DATA received so far, final dot seen."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.sessions = []
        self.lock = threading.Lock()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        # one record per transaction (the gateway may reuse a session for
        # the next message); "closed" once the session carrying it ends
        mine = []
        rec = {"data": 0, "dot": False, "closed": False}
        f = c.makefile("rb")
        c.sendall(b"220 down ESMTP\r\n")
        try:
            while True:
                line = f.readline()
                if not line:
                    break
                cmd = line[:4].upper()
                if cmd in (b"EHLO", b"HELO"):
                    c.sendall(b"250 down\r\n")
                elif cmd in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    if cmd == b"MAIL":
                        rec = {"data": 0, "dot": False, "closed": False}
                        mine.append(rec)
                        with self.lock:
                            self.sessions.append(rec)
                    c.sendall(b"250 2.0.0 ok\r\n")
                elif cmd == b"QUIT":
                    c.sendall(b"221 bye\r\n")
                    break
                elif cmd == b"DATA":
                    c.sendall(b"354 go\r\n")
                    while True:
                        d = f.readline()
                        if not d:
                            break
                        if d == b".\r\n":
                            rec["dot"] = True
                            c.sendall(b"250 2.0.0 queued downstream\r\n")
                            break
                        rec["data"] += len(d)
                    if not rec["dot"]:
                        break
                else:
                    c.sendall(b"500 what\r\n")
        except OSError:
            pass
        for r in mine:
            r["closed"] = True
        c.close()

    def stop(self):
        self.sock.close()


class Stream(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="portcullis-stream-")
        cls.down = Downstream()
        cls.down.start()
        cls.port = free_port()
        conf = os.path.join(cls.dir, "p.conf")
        with open(conf, "w") as f:
            f.write("state_dir = %s/state\nservices = smtp\nsmtp_listen = 127.0.0.1:%d\n"
                    "myhostname = mx.example.com\nmydomains = example.com\n"
                    "relay_networks = 127.0.0.2\nmessage_size_limit = 20000000\n"
                    "delivery = relay:[127.0.0.1]:%d\n" % (cls.dir, cls.port, cls.down.port))
        cls.log = open(os.path.join(cls.dir, "d.log"), "w+")
        cls.proc = subprocess.Popen([os.path.join(BIN, "portcullisd"), "-c", conf, "-f"],
                                    stdout=cls.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", cls.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)

    @classmethod
    def tearDownClass(cls):
        cls.proc.send_signal(signal.SIGTERM)
        rc = cls.proc.wait(10)
        cls.down.stop()
        cls.log.flush()
        with open(cls.log.name) as f:
            text = f.read()
        cls.log.close()
        bad = [l for l in text.splitlines() if "Sanitizer" in l or "runtime error:" in l]
        shutil.rmtree(cls.dir, ignore_errors=True)
        assert rc == 0 and not bad, "daemon exit %s; %s" % (rc, bad[:5])

    def session(self):
        s = socket.create_connection(("127.0.0.1", self.port), 10,
                                     source_address=("127.0.0.2", 0))
        f = s.makefile("rb")

        def reply():
            while True:
                line = f.readline()
                if not line or line[3:4] != b"-":
                    return line
        self.assertTrue(reply().startswith(b"220"))
        for cmd, want in ((b"EHLO c.test", b"250"), (b"MAIL FROM:<a@example.com>", b"250"),
                          (b"RCPT TO:<b@other.org>", b"250"), (b"DATA", b"354")):
            s.sendall(cmd + b"\r\n")
            r = reply()
            self.assertTrue(r.startswith(want), (cmd, r))
        return s, reply

    def test_downstream_gets_bytes_before_the_client_is_done(self):
        before = len(self.down.sessions)
        s, reply = self.session()
        head = b"From: a@example.com\r\nSubject: stream\r\n\r\n"
        s.sendall(head + (b"y" * 78 + b"\r\n") * 13000)  # ~1 MB, no final dot yet
        rec = None
        deadline = time.time() + 5
        while time.time() < deadline:
            recs = self.down.sessions[before:]
            if recs and recs[-1]["data"] > 500000:
                rec = recs[-1]
                break
            time.sleep(0.02)
        self.assertIsNotNone(rec, "the downstream got no body while the client was still sending: "
                             "%r" % self.down.sessions[before:])
        self.assertFalse(rec["dot"])
        s.sendall((b"z" * 78 + b"\r\n") * 13000 + b".\r\n")
        r = reply()
        self.assertTrue(r.startswith(b"250 2.0.0 queued downstream"), r)
        self.assertTrue(rec["dot"])
        self.assertGreater(rec["data"], 2000000)
        s.close()

    def test_refused_at_the_end_is_abandoned_downstream(self):
        before = len(self.down.sessions)
        s, reply = self.session()
        # relayed without From:/Reply-To: refused at the final dot, after ~1 MB streamed
        s.sendall(b"Subject: no from\r\n\r\n" + (b"q" * 78 + b"\r\n") * 13000 + b".\r\n")
        r = reply()
        self.assertTrue(r.startswith(b"550 5.7.1"), r)
        deadline = time.time() + 5
        while time.time() < deadline and not all(x["closed"] for x in self.down.sessions[before:]):
            time.sleep(0.02)
        recs = self.down.sessions[before:]
        self.assertTrue(recs, "no downstream session")
        self.assertTrue(all(not x["dot"] for x in recs), "the downstream got a final dot: %r" % recs)
        self.assertTrue(all(x["closed"] for x in recs), recs)
        # the client's session goes on
        s.sendall(b"NOOP\r\n")
        self.assertTrue(reply().startswith(b"250"))
        s.close()

    def test_bare_lf_refused_and_abandoned(self):
        before = len(self.down.sessions)
        s, reply = self.session()
        s.sendall(b"From: a@example.com\r\n\r\n" + (b"w" * 78 + b"\r\n") * 13000 +
                  b"smuggle\n.\nMAIL FROM:<x@evil.example>\r\n.\r\n")
        r = reply()
        self.assertTrue(r.startswith(b"550 5.5.2"), r)
        time.sleep(0.3)
        self.assertTrue(all(not x["dot"] for x in self.down.sessions[before:]))
        s.close()


if __name__ == "__main__":
    res = unittest.main(exit=False, verbosity=2).result
    failed = len(res.failures) + len(res.errors)
    print("%d passed, %d failed" % (res.testsRun - failed - len(res.skipped), failed))
    sys.exit(1 if failed else 0)
