#!/usr/bin/python3
"""The gateway's trace header lines, as the stored file (or the downstream)
has them.

- a message for several recipients names none of them ("for <first>" in
  every copy disclosed Bcc recipients); one for a single recipient names it;
- "with" says the protocol as RFC 3848 does: SMTP after HELO, ESMTP, ESMTPS
  after STARTTLS, ESMTPA after AUTH, ESMTPSA with both; under TLS the version
  and cipher follow as Postfix writes them, "(using TLSv1.3 with cipher
  TLS_AES_256_GCM_SHA384 (256/256 bits))", exactly what the client negotiated;
- final delivery into the store puts "Return-Path: <sender>" first (<> for
  the null sender); pass-through does not (the delivering MTA does).

Clients: python smtplib (with ssl for STARTTLS). The downstream for
pass-through is the harness's scriptable one (harness.fakesmtp).
Last line "N passed, N failed".
"""
import os
import smtplib
import ssl
import subprocess
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import runner  # noqa: E402
from harness.daemon import SANITIZER_RE, Daemon  # noqa: E402
from harness.fakesmtp import FakeSMTP  # noqa: E402

HELO = "client.received.test"
BASE = (("services", "smtp"), ("smtp_listen", "127.0.0.1:{port}"),
        ("myhostname", "mx.received.test"), ("mydomains", "example.com"),
        ("relay_networks", "127.0.0.1"), ("state_dir", "{dir}/state"),
        ("smtp_max_per_client", "100"), ("log_level", "info"))


def start(tag, **extra):
    return Daemon("received-%s" % tag, BASE, **extra)


def stop(dm):
    rc = dm.stop(15)[0]
    bad = [l for l in dm.log_text().splitlines() if SANITIZER_RE.search(l) or
           "killed by signal" in l]
    dm.close()
    return rc, bad


def message(marker):
    return ("From: <s@outside.test>\r\nTo: <undisclosed-recipients:;>\r\n"
            "Subject: received %s\r\nMessage-ID: <%s@received.test>\r\n\r\nbody\r\n"
            % (marker, marker))


def trace(data):
    """The gateway's lines in front of the message (up to the From: line)."""
    i = data.index(b"From: <s@outside.test>")
    return data[:i].decode()


class Store(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dm = start("store", delivery="maildir:{dir}/mail", users="file:{dir}/users",
                       tls_cert_file="{dir}/c.crt", tls_key_file="{dir}/c.key")
        cls.d, cls.port = cls.dm.dir, cls.dm.port
        p = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-days", "2", "-subj", "/CN=mx.received.test",
                            "-keyout", os.path.join(cls.d, "c.key"),
                            "-out", os.path.join(cls.d, "c.crt")], capture_output=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        for u in ("alice@example.com", "bob@example.com"):
            p = cls.dm.cli("user", "add", u, "--password-stdin", input="pw-secret\n",
                           check=False)
            assert p.returncode == 0, p.stderr
        cls.dm.start()

    @classmethod
    def tearDownClass(cls):
        rc, bad = stop(cls.dm)
        assert rc == 0 and not bad, "daemon exit %s; %s" % (rc, bad[:5])

    def stored(self, user, marker, limit=5.0):
        box = os.path.join(self.d, "mail", "example.com", user, "Maildir", "new")
        deadline = time.monotonic() + limit
        while True:
            out = []
            for n in (os.listdir(box) if os.path.isdir(box) else []):
                with open(os.path.join(box, n), "rb") as f:
                    data = f.read()
                if ("<%s@received.test>" % marker).encode() in data:
                    out.append(data)
            if out or time.monotonic() > deadline:
                return out
            time.sleep(0.05)

    def send(self, rcpts, sender="s@outside.test", helo=False, tls=False, auth=False):
        m = uuid.uuid4().hex
        c = smtplib.SMTP("127.0.0.1", self.port, local_hostname=HELO, timeout=20)
        info = None
        try:
            if helo:
                c.helo()
            else:
                c.ehlo()
            if tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                c.starttls(context=ctx)
                c.ehlo()
                info = (c.sock.version(), c.sock.cipher())
            if auth:
                c.login("alice@example.com", "pw-secret")
            c.sendmail(sender, rcpts, message(m))
        finally:
            c.quit()
        return m, info

    def test_one_recipient_named(self):
        m, _ = self.send(["alice@example.com"])
        (data,) = self.stored("alice", m)
        t = trace(data)
        self.assertRegex(t, r"\tby mx\.received\.test with ESMTP\r\n\tfor <alice@example\.com>; ")

    def test_two_recipients_none_named(self):
        m, _ = self.send(["alice@example.com", "bob@example.com"])
        for user in ("alice", "bob"):
            (data,) = self.stored(user, m)
            t = trace(data)
            self.assertNotIn("for <", t, "copy for %s: %r" % (user, t))
            self.assertNotIn("alice@", t)
            self.assertNotIn("bob@", t)
            self.assertRegex(t, r"\tby mx\.received\.test with ESMTP;\r\n\t\w{3}, ")

    def test_return_path_first(self):
        m, _ = self.send(["alice@example.com"])
        (data,) = self.stored("alice", m)
        self.assertTrue(data.startswith(b"Return-Path: <s@outside.test>\r\nReceived: from "
                                        + HELO.encode() + b" ("), data[:120])
        self.assertEqual(data.count(b"Return-Path:"), 1)

    def test_return_path_null_sender(self):
        m, _ = self.send(["alice@example.com"], sender="")
        (data,) = self.stored("alice", m)
        self.assertTrue(data.startswith(b"Return-Path: <>\r\nReceived: "), data[:120])

    def test_helo_is_smtp(self):
        m, _ = self.send(["alice@example.com"], helo=True)
        (data,) = self.stored("alice", m)
        self.assertRegex(trace(data), r"\tby mx\.received\.test with SMTP\r\n")

    def test_starttls_is_esmtps_with_cipher(self):
        m, (version, cipher) = self.send(["alice@example.com"], tls=True)
        (data,) = self.stored("alice", m)
        t = trace(data)
        self.assertIn("\r\n\t(using %s with cipher %s (%d/%d bits))\r\n" % (
            version, cipher[0], cipher[2], cipher[2]), t)
        self.assertRegex(t, r"\tby mx\.received\.test with ESMTPS\r\n")

    def test_starttls_and_auth_is_esmtpsa(self):
        m, (version, cipher) = self.send(["alice@example.com", "bob@example.com"], tls=True,
                                         auth=True)
        (data,) = self.stored("bob", m)
        t = trace(data)
        self.assertIn("(using %s with cipher %s" % (version, cipher[0]), t)
        self.assertRegex(t, r"\tby mx\.received\.test with ESMTPSA;\r\n")
        self.assertNotIn("for <", t)


class PassThrough(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.down = FakeSMTP()
        cls.dm = start("relay", delivery="relay:[127.0.0.1]:%d" % cls.down.port)
        cls.d, cls.port = cls.dm.dir, cls.dm.port
        cls.dm.start()

    @classmethod
    def tearDownClass(cls):
        rc, bad = stop(cls.dm)
        cls.down.stop()
        assert rc == 0 and not bad, "daemon exit %s; %s" % (rc, bad[:5])

    def arrived(self, m):
        for _ in range(100):
            got = [x for r in self.down.since(0) for x in r["msgs"]
                   if ("<%s@received.test>" % m).encode() in x]
            if got:
                return got
            time.sleep(0.05)
        return []

    def send(self, rcpts):
        m = uuid.uuid4().hex
        c = smtplib.SMTP("127.0.0.1", self.port, local_hostname=HELO, timeout=20)
        try:
            c.sendmail("s@outside.test", rcpts, message(m))
        finally:
            c.quit()
        return m

    def test_two_recipients_none_named_no_return_path(self):
        m = self.send(["alice@example.com", "bob@example.com"])
        (data,) = self.arrived(m)
        t = trace(data)
        self.assertTrue(t.startswith("Received: from %s (" % HELO), t)
        self.assertNotIn("Return-Path", t)
        self.assertNotIn("for <", t)
        self.assertRegex(t, r"\tby mx\.received\.test with ESMTP;\r\n")

    def test_one_recipient_named(self):
        m = self.send(["alice@example.com"])
        (data,) = self.arrived(m)
        t = trace(data)
        self.assertNotIn("Return-Path", t)
        self.assertIn("\tfor <alice@example.com>; ", t)


if __name__ == "__main__":
    sys.exit(runner.main())
