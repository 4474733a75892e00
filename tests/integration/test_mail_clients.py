#!/usr/bin/python3
"""The POP3 and IMAP doors driven by the two command-line clients issue 11
names that test_imap.py / test_pop3.py do not run: `openssl s_client
-starttls imap|pop3` and GNU SASL's `gsasl` client. One portcullisd serves
both doors (services = imap pop3) on one store. Asserted, as the client saw it:

    T1OpensslImap   s_client -starttls imap: the certificate it was shown is
                    the one configured (tls_cert_file); LOGIN after STARTTLS
                    is OK and SELECT INBOX sees the delivered message; a
                    command pipelined in plaintext behind STARTTLS (a relay
                    between s_client and the door appends it, CVE-2011-0411
                    style) is not run inside TLS: no reply to its tag, and the
                    session is still not logged in
    T2OpensslPop3   s_client -starttls pop3: the same for STLS, USER/PASS,
                    STAT; a USER pipelined behind STLS is forgotten ("-ERR No
                    username given." to the PASS inside TLS)
    T3GsaslImap     gsasl --imap (libgsasl's own SCRAM-SHA-256 and CRAM-MD5)
                    over STARTTLS and in plaintext: exit 0 with the
                    right password, non-zero with a wrong one
    T4GsaslPop3     gsasl 2.2 has no POP3 framing (only --imap/--smtp): the
                    test relays its raw base64 steps (gsasl's stdin/stdout
                    mode) through POP3 AUTH (RFC 5034) over STLS; SCRAM-SHA-256
                    and CRAM-MD5 end in "+OK" and the session can STAT; a
                    wrong password ends in -ERR [AUTH]
    T5PopThenImap   (both doors on one store) a message POP3 listed and
                    retrieved first is still \\Recent for the IMAP session
                    that selects INBOX next, as Dovecot's POP3 leaves it

Skipped per class when openssl or gsasl is missing.

Run: PORTCULLIS_BIN=build/asan/bin python3 tests/integration/test_mail_clients.py
"""
import base64
import imaplib
import os
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import gsasl, runner  # noqa: E402
from harness.daemon import Daemon  # noqa: E402
from harness.ports import free_port, port_accepts  # noqa: E402
from harness.util import wait_until  # noqa: E402

USER = "reader@example.com"
PASSWORD = "reader-password"
MYHOSTNAME = "mx.example.com"
OPENSSL = shutil.which("openssl")
GSASL = shutil.which("gsasl")

D = None


def tls_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def setUpModule():
    global D
    D = Daemon("mail-clients")
    D.imap_port = free_port()
    D.pop3_port = free_port()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=" + MYHOSTNAME, "-keyout", D.path("key.pem"),
                    "-out", D.path("crt.pem")], check=True, capture_output=True, timeout=60)
    D.write_config(services="smtp imap pop3", smtp_listen="127.0.0.1:%d" % D.port,
                   imap_listen="127.0.0.1:%d" % D.imap_port,
                   pop3_listen="127.0.0.1:%d" % D.pop3_port, myhostname=MYHOSTNAME,
                   mydomains="example.com", state_dir=D.path("state"),
                   delivery="maildir:" + D.path("mail"), users="file:" + D.path("users"),
                   tls_cert_file=D.path("crt.pem"), tls_key_file=D.path("key.pem"),
                   auth_failure_delay="0",
                   auth_mechanisms="PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256")
    D.cli("user", "add", USER, "--password-stdin", input=PASSWORD + "\n")
    D.start()
    wait_until(lambda: port_accepts("127.0.0.1", D.imap_port) and port_accepts("127.0.0.1", D.pop3_port), 10,
               what="the imap and pop3 doors")
    with smtplib.SMTP("127.0.0.1", D.port, timeout=15) as s:
        s.sendmail("sender@outside.test", [USER],
                   b"From: <sender@outside.test>\r\nTo: <%s>\r\nSubject: for the clients\r\n"
                   b"Message-ID: <clients@outside.test>\r\n\r\nhello\r\n" % USER.encode())


def tearDownModule():
    if D is not None:
        D.stop()
        D.assert_clean()
        D.close()


class Relay:
    """A TCP relay between a client and the door that appends `inject` to the
    client's bytes right behind the first `after` it sends (a man in the
    middle before TLS). Relays until either side closes."""

    def __init__(self, port, after, inject):
        self.port, self.after, self.inject = port, after, inject
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(1)
        self.listen_port = self.ls.getsockname()[1]
        self.injected = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        c, _ = self.ls.accept()
        s = socket.create_connection(("127.0.0.1", self.port), 20)

        def pump(src, dst, up):
            try:
                while True:
                    b = src.recv(65536)
                    if not b:
                        break
                    if up and not self.injected and self.after in b:
                        b += self.inject
                        self.injected = True
                    dst.sendall(b)
            except OSError:
                pass
            for x in (src, dst):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        t = threading.Thread(target=pump, args=(s, c, False), daemon=True)
        t.start()
        pump(c, s, True)
        t.join(20)
        c.close()
        s.close()
        self.ls.close()


def s_client(proto, port, lines):
    """openssl s_client -starttls PROTO, the lines on its stdin; returns
    (stdout, stderr). -ign_eof: it waits for the server to close (LOGOUT,
    QUIT); -nocommands: a line beginning with Q or R is sent, not obeyed."""
    p = subprocess.run([OPENSSL, "s_client", "-starttls", proto, "-connect",
                        "127.0.0.1:%d" % port, "-servername", MYHOSTNAME, "-ign_eof",
                        "-nocommands"],
                       input=b"".join(l + b"\r\n" for l in lines), capture_output=True,
                       timeout=60)
    return p.stdout, p.stderr


def pem_of(path):
    with open(path, "rb") as f:
        return ssl.PEM_cert_to_DER_cert(f.read().decode())


def shown_cert(out):
    """the DER of the server certificate s_client printed"""
    a = out.index(b"-----BEGIN CERTIFICATE-----")
    b = out.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(out[a:b].decode())


@unittest.skipUnless(OPENSSL, "openssl is not installed")
class T1OpensslImap(unittest.TestCase):
    def test_certificate_and_login(self):
        out, err = s_client("imap", D.imap_port,
                            [b"a LOGIN %s %s" % (USER.encode(), PASSWORD.encode()),
                             b"b SELECT INBOX", b"c LOGOUT"])
        self.assertEqual(shown_cert(out), pem_of(D.path("crt.pem")), err)
        self.assertIn(b"subject=CN = " + MYHOSTNAME.encode(), out)
        self.assertIn(b"\na OK [CAPABILITY IMAP4rev1", out, out[-600:])
        self.assertIn(b"* 1 EXISTS\r\n", out)
        self.assertIn(b"\nb OK [READ-WRITE]", out)
        self.assertIn(b"\nc OK Logout completed.", out)

    def test_plaintext_pipelined_behind_starttls_is_dropped(self):
        r = Relay(D.imap_port, b"STARTTLS\r\n",
                  b"x LOGIN %s %s\r\n" % (USER.encode(), PASSWORD.encode()))
        out, err = s_client("imap", r.listen_port, [b"b SELECT INBOX", b"c LOGOUT"])
        self.assertTrue(r.injected, "s_client never sent STARTTLS")
        self.assertEqual(shown_cert(out), pem_of(D.path("crt.pem")), err)
        self.assertNotIn(b"\nx ", out)                   # the injected LOGIN never ran
        self.assertNotIn(b"EXISTS", out)
        self.assertRegex(out, rb"\nb (BAD|NO) ")          # still not logged in
        self.assertIn(b"\nc OK Logout completed.", out)


@unittest.skipUnless(OPENSSL, "openssl is not installed")
class T2OpensslPop3(unittest.TestCase):
    def test_certificate_and_login(self):
        out, err = s_client("pop3", D.pop3_port,
                            [b"USER " + USER.encode(), b"PASS " + PASSWORD.encode(), b"STAT",
                             b"QUIT"])
        self.assertEqual(shown_cert(out), pem_of(D.path("crt.pem")), err)
        i = out.index(b"---\n+OK") if b"---\n+OK" in out else out.index(b"+OK")
        replies = [l for l in out[i:].split(b"\n") if l.startswith((b"+OK", b"-ERR"))]
        self.assertEqual(len(replies), 4, out[-600:])
        self.assertTrue(all(r.startswith(b"+OK") for r in replies), replies)
        self.assertRegex(replies[2], rb"^\+OK 1 \d+\r$")      # STAT: the delivered message
        self.assertTrue(replies[3].startswith(b"+OK Logging out"), replies)

    def test_user_pipelined_behind_stls_is_dropped(self):
        r = Relay(D.pop3_port, b"STLS\r\n", b"USER %s\r\n" % USER.encode())
        out, err = s_client("pop3", r.listen_port, [b"PASS " + PASSWORD.encode(), b"STAT",
                                                    b"QUIT"])
        self.assertTrue(r.injected, "s_client never sent STLS")
        self.assertEqual(shown_cert(out), pem_of(D.path("crt.pem")), err)
        self.assertIn(b"-ERR No username given.\r\n", out)
        self.assertNotRegex(out, rb"\+OK 1 \d+\r\n")          # no STAT answered
        self.assertIn(b"+OK Logging out", out)


def gsasl_imap(mech, password, tls=True):
    args = [GSASL, "--imap", "--connect", "127.0.0.1:%d" % D.imap_port, "-m", mech,
            "-a", USER, "-p", password, "--hostname", MYHOSTNAME, "--verbose"]
    # --no-cb: gsasl 2.2 with channel-binding data from its TLS session fails
    # a plain (non -PLUS) SCRAM-SHA-256 on its own side, before it sends a
    # byte ("mechanism error"), whatever the server; the door offers no -PLUS
    args += ["--starttls", "--x509-ca-file=", "--no-cb"] if tls else ["--no-starttls"]
    return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)


@unittest.skipUnless(GSASL, "gsasl is not installed")
class T3GsaslImap(unittest.TestCase):
    def check(self, mech, tls=True):
        p = gsasl_imap(mech, PASSWORD, tls)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn(b"AUTHENTICATE " + mech.encode(), p.stdout + p.stderr)
        self.assertRegex(p.stdout + p.stderr, rb"\. OK ")
        p = gsasl_imap(mech, "wrong-" + PASSWORD, tls)
        self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn(b"AUTHENTICATIONFAILED", p.stdout + p.stderr)

    def test_scram_sha_256_over_starttls(self):
        self.check("SCRAM-SHA-256")

    def test_cram_md5_over_starttls(self):
        self.check("CRAM-MD5")

    def test_scram_sha_256_in_plaintext(self):
        # SCRAM sends no password either (auth_allow_plaintext = no)
        self.check("SCRAM-SHA-256", tls=False)

    def test_cram_md5_in_plaintext(self):
        # CRAM-MD5 sends no password: offered before TLS too
        self.check("CRAM-MD5", tls=False)


class Pop3Tls:
    def __init__(self):
        s = socket.create_connection(("127.0.0.1", D.pop3_port), 20)
        f = s.makefile("rb")
        assert f.readline().startswith(b"+OK")
        s.sendall(b"STLS\r\n")
        assert f.readline().startswith(b"+OK")
        self.s = tls_ctx().wrap_socket(s)
        self.f = self.s.makefile("rb")

    def cmd(self, line):
        self.s.sendall(line + b"\r\n")
        return self.f.readline()

    def close(self):
        self.s.close()


def gsasl_pop3(mech, password):
    """AUTH over STLS with gsasl doing the mechanism (harness.gsasl):
    (the final server line, session, gsasl's output)"""
    p = Pop3Tls()
    line, out = gsasl.pop3_auth(p.cmd, mech, USER, password, MYHOSTNAME)
    return line, p, out


@unittest.skipUnless(GSASL, "gsasl is not installed")
class T4GsaslPop3(unittest.TestCase):
    def check(self, mech):
        line, p, out = gsasl_pop3(mech, PASSWORD)
        self.assertTrue(line.startswith(b"+OK"), (line, out))
        self.assertRegex(p.cmd(b"STAT"), rb"^\+OK 1 \d+\r\n$")
        self.assertTrue(p.cmd(b"QUIT").startswith(b"+OK"))
        p.close()
        line, p, out = gsasl_pop3(mech, "wrong-" + PASSWORD)
        self.assertTrue(line.startswith(b"-ERR [AUTH]"), (line, out))
        p.close()

    def test_scram_sha_256(self):
        self.check("SCRAM-SHA-256")

    def test_cram_md5(self):
        self.check("CRAM-MD5")


class T5PopThenImap(unittest.TestCase):
    def test_pop3_leaves_recent_to_imap(self):
        with smtplib.SMTP("127.0.0.1", D.port, timeout=15) as s:
            s.sendmail("sender@outside.test", [USER],
                       b"From: <sender@outside.test>\r\nSubject: pop first\r\n"
                       b"Message-ID: <popfirst@outside.test>\r\n\r\nhello\r\n")
        p = poplib.POP3("127.0.0.1", D.pop3_port, timeout=20)
        p.stls(context=tls_ctx())
        p.user(USER)
        p.pass_(PASSWORD)
        n = p.stat()[0]
        self.assertGreaterEqual(n, 1)
        self.assertIn(b"popfirst", b"\n".join(p.retr(n)[1]))
        p.quit()
        c = imaplib.IMAP4("127.0.0.1", D.imap_port, timeout=20)
        c.starttls(ssl_context=tls_ctx())
        c.login(USER, PASSWORD)
        typ, data = c.select("INBOX")
        self.assertEqual(typ, "OK")
        typ, data = c.search(None, "HEADER", "Message-ID", "popfirst")
        seq = data[0].split()
        self.assertEqual(len(seq), 1, data)
        typ, data = c.fetch(seq[0], "(FLAGS)")
        self.assertIn(b"\\Recent", data[0], data)
        c.logout()


if __name__ == "__main__":
    sys.exit(runner.main(tools=[t for t in (OPENSSL, GSASL) if t]))
