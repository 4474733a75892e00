#!/usr/bin/python3
"""The standalone SMTP gateway's TLS, AUTH, relaying and pass-through doors,
driven by real clients: python smtplib/ssl, swaks, openssl s_client and curl.

What it proves (one class per subject):

    T01StartTLS     STARTTLS offered before and not after the handshake, AUTH
                    PLAIN LOGIN CRAM-MD5 only after it; a message over STARTTLS
                    is in the Maildir when 250 arrives; plaintext pipelined
                    behind STARTTLS is never answered (RFC 3207 injection);
                    inside TLS, QUIT gets 221 and an idle timeout 421 4.4.2
    T02Submission   smtps_listen (implicit TLS, RFC 8314; smtplib, curl) and
                    submission_listen over STARTTLS: MAIL before AUTH is 530 5.7.0
    T03Auth         PLAIN, LOGIN, CRAM-MD5: 235 2.7.0 with the right password,
                    535 5.7.8 with a wrong one or an unknown user; before TLS
                    only CRAM-MD5 (PLAIN/LOGIN 538 5.7.11) unless
                    auth_allow_plaintext = yes; an AUTH done before STARTTLS
                    does not carry into the TLS session (RFC 3207 4.2); swaks
    T04Relay        an outside client may not relay (550 5.7.1) until it has
                    authenticated; then the mail reaches the relayhost; a slow
                    relayhost does not hold up other clients' local delivery
                    or AUTH
    T05PassThrough  delivery = relay:[127.0.0.1]:PORT: mail reaches smtp-sink
                    whole (dot lines, 3 MB, after an RSET); the sink's MAIL,
                    RCPT and end-of-data refusals are mirrored; a dead sink is
                    451 4.4.1 at RCPT; nothing is acknowledged 250 the sink did
                    not get; pass-through is no open relay
    T06MutualTLS    tls_verify_client = require: no client cert, or one from
                    another CA, fails the handshake; one from our CA works
    T07ConfigErrors a key that does not match the certificate, a missing,
                    unreadable (mode 000, daemon run as nobody) or non-PEM
                    certificate, a missing client CA: exit 1 naming the file

Everything listens on 127.0.0.1; "outside" clients come from 127.0.0.5.
Needs root (smtp-sink -u postfix; the unreadable-file case runs the daemon
as nobody), the postfix package (smtp-sink), openssl, swaks and curl.

Run:  python3 tests/integration/test_smtp_tls_auth.py [Class[.test]]...
Environment: PORTCULLIS_BIN (default <repo>/bin), KEEP_LAB=1 keeps the work
directory (daemon logs, sink dumps, Maildirs).  Last line "N passed, N
failed"; exit status 1 on any failure, also when a daemon log holds an
AddressSanitizer / UBSan / LeakSanitizer report or a daemon did not exit 0
on SIGTERM.
"""

import base64
import hmac
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import daemon as hdaemon, runner  # noqa: E402
from harness.client import make_message, new_marker  # noqa: E402
from harness.daemon import BIN, SANITIZER_RE  # noqa: E402,F401
from harness.ports import free_port, greets, port_accepts  # noqa: E402
from harness.postfix import SMTP_SINK  # noqa: E402
from harness.util import HarnessError, read, read_from, tail, wait_until  # noqa: E402

OUTSIDE = "127.0.0.5"
HELO = "client.tls.test"
MYHOSTNAME = "mx.tls.test"
USER = "alice@example.com"
PASSWORD = "c0rrect horse; battery"

W = None            # the module's work area (class Work), made by setUpModule


def b64(s):
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


def run(argv, timeout=20, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=kw.pop("stdin", subprocess.DEVNULL), text=True,
                          timeout=timeout, **kw)


def client_ctx(cert=None, key=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


# ------------------------------------------------------------------ PKI
def openssl(*args):
    p = run(["openssl"] + list(args), timeout=60)
    if p.returncode != 0:
        raise RuntimeError("openssl %s: %s" % (" ".join(args), p.stderr))


def make_pki(d):
    """server cert (self-signed), two CAs and client certs under each, a
    stray key; returns a dict of paths."""
    P = {k: os.path.join(d, k) for k in (
        "server.crt", "server.key", "other.key", "ca.crt", "ca.key", "client.crt",
        "client.key", "client.csr", "rogueca.crt", "rogueca.key", "rogue.crt", "rogue.key",
        "rogue.csr", "garbage.crt")}
    subj = lambda cn: "/CN=%s" % cn   # noqa: E731
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", subj(MYHOSTNAME), "-keyout", P["server.key"], "-out", P["server.crt"])
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
            "-out", P["other.key"])
    for ca, leaf in (("ca", "client"), ("rogueca", "rogue")):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", subj(ca + ".tls.test"), "-keyout", P[ca + ".key"],
                "-out", P[ca + ".crt"])
        openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj",
                subj(leaf + ".tls.test"), "-keyout", P[leaf + ".key"], "-out", P[leaf + ".csr"])
        openssl("x509", "-req", "-in", P[leaf + ".csr"], "-CA", P[ca + ".crt"],
                "-CAkey", P[ca + ".key"], "-CAcreateserial", "-days", "2",
                "-out", P[leaf + ".crt"])
    with open(P["garbage.crt"], "w") as f:
        f.write("this is not a certificate\n")
    for k in P.values():
        os.chmod(k, 0o644)
    return P


# ------------------------------------------------------------------ smtp-sink
class Sink:
    """smtp-sink on 127.0.0.1:port; with dump=True every transaction goes to
    its own file in DIR (envelope in X-Mail-Args / X-Rcpt-Args)."""

    def __init__(self, work, name, port, extra=(), dump=True):
        self.name = name
        self.port = port
        self.dir = os.path.join(work.dir, "sink-" + name)
        os.makedirs(self.dir, exist_ok=True)
        shutil.chown(self.dir, user="postfix")
        os.chmod(self.dir, 0o755)
        self.log = os.path.join(work.dir, "sink-%s.log" % name)
        argv = [SMTP_SINK, "-u", "postfix", "-h", "sink.tls.test"] + list(extra)
        if dump:
            argv += ["-d", self.dir + "/%M."]
        argv += ["127.0.0.1:%d" % port, "64"]
        fh = open(self.log, "ab")
        self.proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        fh.close()
        wait_until(lambda: self.proc.poll() is not None or
                       port_accepts("127.0.0.1", port), 10, what="smtp-sink " + name)
        if self.proc.poll() is not None:
            raise RuntimeError("smtp-sink %s exited: %s" % (name, read(self.log)))

    def dumps(self):
        out = []
        for n in sorted(os.listdir(self.dir)):
            try:
                with open(os.path.join(self.dir, n), "rb") as f:
                    out.append(f.read().decode("utf-8", "replace"))
            except FileNotFoundError:
                continue    # smtp-sink removes the dump of an abandoned transaction
        return out

    def find(self, marker):
        return [t for t in self.dumps() if marker in t]

    def wait_for(self, marker, timeout=5.0):
        try:
            return wait_until(lambda: [t for t in self.find(marker)
                                           if ("END-%s" % marker) in t], timeout,
                                  what="%s at sink %s" % (marker, self.name))
        except HarnessError:
            return []

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        # the port must be free again before the next sink or a "dead" test
        wait_until(lambda: not port_accepts("127.0.0.1", self.port), 5,
                       what="sink port %d free" % self.port)


# ------------------------------------------------------------------ portcullisd
class Daemon(hdaemon.Daemon):
    """portcullisd -f with its own config (W.dir/NAME.conf), state_dir and log
    (W.dir/NAME.log); "auto" for a *_listen key picks a free port (in .ports)."""

    def __init__(self, work, name, **conf):
        self.work = work
        self.ports = {}
        for door in ("smtp", "submission", "smtps"):
            k = door + "_listen"
            if conf.get(k, "") == "auto":
                self.ports[door] = work.port()
                conf[k] = "127.0.0.1:%d" % self.ports[door]
        super().__init__(name, (
            ("services", "smtp"),
            ("myhostname", MYHOSTNAME),
            ("mydomains", "example.com"),
            ("relay_networks", "127.0.0.2"),
            ("relay_authenticated", "yes"),
            ("state_dir", "{dir}/%s-state" % name),
            ("lists", "file:{dir}/%s-state/lists" % name),
            ("users", "file:" + work.users),
            ("delivery", "maildir:" + work.maildir),
            ("tls_cert_file", work.pki["server.crt"]),
            ("tls_key_file", work.pki["server.key"]),
            ("smtp_timeout", "20"),
            ("log_level", "info"),
            # wrong passwords are tested here, not their penalty (test_smtp_auth_guard.py)
            ("auth_failure_delay", "0"),
            ("auth_failure_ban", "0"),
        ), dir=work.dir, port=0, conf=os.path.join(work.dir, name + ".conf"),
            log=os.path.join(work.dir, name + ".log"), **conf)
        self.log = self.log_path
        self.rc = None

    def argv(self):
        return [hdaemon.exe(), "-c", self.conf, "-f"]

    def start(self):
        """Every door listening and, with an smtp door, the worker greeting."""
        self.work.daemons.append(self)
        return super().start(ready=lambda: all(
            port_accepts("127.0.0.1", p) for p in self.ports.values()) and (
            "smtp" not in self.ports or greets(self.ports["smtp"], 1)), timeout=20)

    def stop(self):
        res = super().stop(8)
        if res is not None:
            self.rc = res[0]
        return self.rc


# ------------------------------------------------------------------ work area
class Work:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="portcullis-tls.", dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.maildir = os.path.join(self.dir, "mail")
        self.users = os.path.join(self.dir, "users")
        self.daemons = []
        self.sinks = []
        self.pki = make_pki(os.path.join(self.dir))

    def port(self):
        return free_port()

    def sink(self, name, port=None, extra=(), dump=True):
        s = Sink(self, name, port or self.port(), extra, dump)
        self.sinks.append(s)
        return s

    def add_user(self, conf, user, password):
        p = run([os.path.join(BIN, "portcullis"), "-c", conf, "user", "add", user,
                 "--password-stdin"], stdin=None, input=password + "\n")
        if p.returncode != 0:
            raise RuntimeError("user add %s: %s %s" % (user, p.stdout, p.stderr))

    def mailbox_files(self, user=USER):
        local, domain = user.split("@")
        d = os.path.join(self.maildir, domain, local, "Maildir", "new")
        out = []
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            return out
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out.append((n, f.read()))
        return out

    def in_mailbox(self, marker, user=USER):
        return [(n, b) for n, b in self.mailbox_files(user) if marker.encode() in b]

    def close(self):
        for d in self.daemons:
            d.stop()
        for s in self.sinks:
            try:
                s.stop()
            except Exception:
                pass
        if os.environ.get("KEEP_LAB") == "1":
            sys.stderr.write("kept %s\n" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------ client
class Client:
    """A python smtplib client; every method returns (code, text) and none
    raises on a 4xx/5xx.  implicit_tls: smtps (SMTP_SSL)."""

    def __init__(self, port, source=OUTSIDE, implicit_tls=False, cert=None, key=None,
                 timeout=10):
        self.ctx = client_ctx(cert, key)
        self.log = []
        if implicit_tls:
            self.s = smtplib.SMTP_SSL("127.0.0.1", port, local_hostname=HELO, timeout=timeout,
                                      source_address=(source, 0), context=self.ctx)
        else:
            self.s = smtplib.SMTP("127.0.0.1", port, local_hostname=HELO, timeout=timeout,
                                  source_address=(source, 0))

    def cmd(self, line):
        code, text = self.s.docmd(line)
        text = text.decode("utf-8", "replace").replace("\n", " | ")
        self.log.append("%s -> %d %s" % (line[:60], code, text))
        return code, text

    def ehlo(self):
        """(code, keyword set, AUTH mechanism set)"""
        code, resp = self.s.ehlo(HELO)
        lines = resp.decode("utf-8", "replace").split("\n")[1:]
        self.log.append("EHLO -> %d %s" % (code, " | ".join(lines)))
        kw = {l.split()[0].upper() for l in lines if l.strip()}
        mechs = set()
        for l in lines:
            if l.upper().startswith("AUTH "):
                mechs = set(l.upper().split()[1:])
        return code, kw, mechs

    def starttls(self):
        code, text = self.s.starttls(context=self.ctx)
        self.log.append("STARTTLS -> %d %s" % (code, text))
        return code

    def auth_plain(self, user, password):
        return self.cmd("AUTH PLAIN " + b64("\0%s\0%s" % (user, password)))

    def auth_login(self, user, password):
        code, text = self.cmd("AUTH LOGIN")
        if code != 334 or text != "VXNlcm5hbWU6":
            return code, text
        code, text = self.cmd(b64(user))
        if code != 334 or text != "UGFzc3dvcmQ6":
            return code, text
        return self.cmd(b64(password))

    def auth_cram(self, user, password):
        code, text = self.cmd("AUTH CRAM-MD5")
        if code != 334:
            return code, text
        challenge = base64.b64decode(text)
        digest = hmac.new(password.encode(), challenge, "md5").hexdigest()
        return self.cmd(b64("%s %s" % (user, digest)))

    def auth(self, mech, user, password):
        return {"PLAIN": self.auth_plain, "LOGIN": self.auth_login,
                "CRAM-MD5": self.auth_cram}[mech](user, password)

    def mail(self, sender="sender@outside.test"):
        return self.cmd("MAIL FROM:<%s>" % sender)

    def rcpt(self, rcpt):
        return self.cmd("RCPT TO:<%s>" % rcpt)

    def data(self, message):
        code, text = self.cmd("DATA")
        if code != 354:
            return code, text
        payload = b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n"
                           for l in message.encode().split(b"\r\n")[:-1]) + b".\r\n"
        self.s.send(payload)
        code, text = self.s.getreply()
        text = text.decode("utf-8", "replace")
        self.log.append("<message> -> %d %s" % (code, text))
        return code, text

    def transaction(self, rcpts, marker, sender="sender@outside.test"):
        """MAIL, RCPT..., DATA if any RCPT got 250: the list of (code, text)."""
        if isinstance(rcpts, str):
            rcpts = [rcpts]
        out = [self.mail(sender)]
        if out[0][0] != 250:
            return out
        ok = 0
        for r in rcpts:
            out.append(self.rcpt(r))
            ok += out[-1][0] == 250
        if ok:
            out.append(self.data(make_message(marker, to=rcpts[0])))
        return out

    def close(self):
        try:
            self.s.quit()
        except (smtplib.SMTPException, OSError):
            pass     # QUIT inside TLS has its own test (T01.test_quit_inside_tls)
        try:
            self.s.close()
        except OSError:
            pass

    def transcript(self):
        return "\n".join("  " + l for l in self.log)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------ fixture
MAIN = None         # maildir delivery, all three doors, relayhost = RELAYSINK
PLAIN = None        # auth_allow_plaintext = yes
RELAYSINK = None


def setUpModule():
    global W, MAIN, PLAIN, RELAYSINK
    W = Work()
    RELAYSINK = W.sink("relayhost")
    MAIN = Daemon(W, "main", smtp_listen="auto", submission_listen="auto",
                  smtps_listen="auto", relayhost="[127.0.0.1]:%d" % RELAYSINK.port)
    W.add_user(MAIN.conf, USER, PASSWORD)
    MAIN.start()
    PLAIN = Daemon(W, "plaintext", smtp_listen="auto", auth_allow_plaintext="yes").start()


def tearDownModule():
    pass    # main() closes W after the report of the final checks


class Case(unittest.TestCase):
    maxDiff = None

    def mark(self, d):
        self._marks = getattr(self, "_marks", {})
        self._marks[d.name] = os.path.getsize(d.log)

    def log_since(self, d):
        return read_from(d.log, getattr(self, "_marks", {}).get(d.name, 0))

    def assertReply(self, got, code, enh=None, c=None, what=""):
        ok = got[0] == code and (enh is None or got[1].startswith(enh))
        if not ok:
            self.fail("%s: expected %s %s, got %s %s%s" % (
                what, code, enh or "", got[0], got[1],
                ("\ntranscript:\n" + c.transcript()) if c else ""))

    def assertInMaildir(self, marker, c=None, user=USER):
        hits = W.in_mailbox(marker, user)
        self.assertEqual(len(hits), 1, "message %s: %d copies in %s's Maildir/new at the "
                         "moment of 250 (want exactly 1)%s" % (
                             marker, len(hits), user,
                             ("\n" + c.transcript()) if c else ""))
        self.assertTrue(hits[0][1].endswith(make_message(marker, to=user).encode()),
                        "the Maildir file is not the whole message:\n%r" % hits[0][1][-300:])


# ============================================================== T01 STARTTLS
class T01StartTLS(Case):
    def test_ehlo_before_and_after_starttls(self):
        with Client(MAIN.ports["smtp"]) as c:
            code, kw, mechs = c.ehlo()
            self.assertEqual(code, 250)
            self.assertIn("STARTTLS", kw, c.transcript())
            self.assertEqual(mechs, {"CRAM-MD5", "SCRAM-SHA-256"},
                             "before TLS only CRAM-MD5 (auth_allow_plaintext = no)\n" +
                             c.transcript())
            self.assertEqual(c.starttls(), 220)
            code, kw, mechs = c.ehlo()
            self.assertEqual(code, 250)
            self.assertNotIn("STARTTLS", kw, "STARTTLS offered inside TLS\n" + c.transcript())
            self.assertEqual(mechs, {"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"}, c.transcript())
            self.assertIsInstance(c.s.sock, ssl.SSLSocket)
            # a second STARTTLS inside TLS is refused
            self.assertReply(c.cmd("STARTTLS"), 503, "5.5.1", c, "STARTTLS inside TLS")

    def test_message_over_starttls_in_maildir(self):
        m = new_marker("starttls")
        with Client(MAIN.ports["smtp"]) as c:
            c.ehlo()
            c.starttls()
            c.ehlo()
            r = c.transaction(USER, m)
            self.assertReply(r[-1], 250, "2.0.0", c, "end of data over STARTTLS")
            self.assertInMaildir(m, c)

    def test_openssl_s_client_starttls(self):
        # s_client does the pre-TLS EHLO and STARTTLS itself; what it prints
        # after the handshake is the server's answer to our EHLO inside TLS.
        # One command per write: EHLO must end a pipelined group (RFC 2920).
        p = subprocess.Popen(["openssl", "s_client", "-starttls", "smtp", "-connect",
                              "127.0.0.1:%d" % MAIN.ports["smtp"], "-crlf", "-quiet"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)
            p.stdin.write("EHLO s-client.tls.test\n")
            p.stdin.flush()
            time.sleep(0.5)
            p.stdin.write("NOOP\n")
            p.stdin.flush()
            time.sleep(0.5)
            p.kill()            # -quiet implies -ign_eof: it would wait forever
            out, err = p.communicate(timeout=5)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        self.assertRegex(out, r"250-AUTH PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256\r?\n", out + err)
        self.assertRegex(out, r"250 2\.0\.0 Ok\r?\n", "NOOP inside TLS\n" + out + err)
        self.assertNotIn("250-STARTTLS", out, out)

    def test_plaintext_pipelined_after_starttls_not_answered(self):
        s = socket.create_connection(("127.0.0.1", MAIN.ports["smtp"]), 10,
                                     source_address=(OUTSIDE, 0))
        f = s.makefile("rb")
        self.assertTrue(f.readline().startswith(b"220"))
        s.sendall(b"EHLO " + HELO.encode() + b"\r\n")
        while True:
            line = f.readline()
            self.assertTrue(line.startswith(b"250"), line)
            if line[3:4] == b" ":
                break
        # one write: STARTTLS and three commands an attacker slipped in
        s.sendall(b"STARTTLS\r\nRSET\r\nHELP\r\nMAIL FROM:<injected@evil.test>\r\n")
        line = f.readline()
        self.assertTrue(line.startswith(b"220 "), "STARTTLS answered %r" % line)
        # nothing else came in plaintext
        s.settimeout(0.3)
        try:
            extra = s.recv(1000, socket.MSG_PEEK)
        except socket.timeout:
            extra = b""
        self.assertEqual(extra, b"", "plaintext replies after 220: %r" % extra)
        s.settimeout(10)
        t = client_ctx().wrap_socket(s)
        t.sendall(b"NOOP\r\n")
        got = b""
        t.settimeout(1.0)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                chunk = t.recv(4096)
            except socket.timeout:
                break
            if not chunk:
                break
            got += chunk
        self.assertEqual(got, b"250 2.0.0 Ok\r\n",
                         "the only reply inside TLS must be the NOOP's; a reply to the "
                         "injected RSET/HELP/MAIL shows they were carried into TLS")
        # proof the session works and the injected MAIL left no state
        t.settimeout(10)
        tf = t.makefile("rb")
        t.sendall(b"EHLO " + HELO.encode() + b"\r\n")
        while True:
            line = tf.readline()
            self.assertTrue(line.startswith(b"250"), line)
            if line[3:4] == b" ":
                break
        t.sendall(b"HELP\r\n")
        self.assertTrue(tf.readline().startswith(b"214"))
        t.sendall(b"RCPT TO:<" + USER.encode() + b">\r\n")
        line = tf.readline()
        self.assertTrue(line.startswith(b"503 5.5.1"),
                        "RCPT without MAIL inside TLS: %r (an injected MAIL survived?)" % line)
        t.close()

    def test_quit_inside_tls_gets_221(self):
        # RFC 5321 4.1.1.10: the server MUST send an OK reply to QUIT, then close.
        for door, implicit in (("smtp", False), ("smtps", True)):
            with self.subTest(door=door):
                c = Client(MAIN.ports[door], implicit_tls=implicit)
                c.ehlo()
                if not implicit:
                    c.starttls()
                    c.ehlo()
                try:
                    got = c.cmd("QUIT")
                except (smtplib.SMTPServerDisconnected, OSError) as e:
                    got = (-1, "connection closed without a reply: %r" % e)
                c.s.close()
                self.assertReply(got, 221, "2.0.0", c, "QUIT inside TLS on the %s door" % door)

    def test_idle_timeout_inside_tls_gets_421(self):
        # smtp_timeout: "idle / per command, then 421 4.4.2" -- inside TLS the
        # 421 must come as TLS data, not as plaintext bytes in the TLS stream
        d = Daemon(W, "timeout", smtp_listen="auto", smtps_listen="auto",
                   smtp_timeout="1").start()
        try:
            for door, mode in (("smtp", "plain"), ("smtp", "starttls"), ("smtps", "implicit")):
                with self.subTest(mode=mode):
                    c = Client(d.ports[door], implicit_tls=(mode == "implicit"))
                    c.ehlo()
                    if mode == "starttls":
                        c.starttls()
                        c.ehlo()
                    time.sleep(1.5)
                    try:
                        code, text = c.s.getreply()
                        got = (code, text.decode("utf-8", "replace"))
                    except (smtplib.SMTPServerDisconnected, OSError) as e:
                        got = (-1, "no readable reply: %r" % e)
                    c.s.close()
                    self.assertReply(got, 421, "4.4.2", c, "idle past smtp_timeout (%s)" % mode)
        finally:
            d.stop()


# ============================================================== T02 doors
class T02Submission(Case):
    def test_smtps_implicit_tls_requires_auth(self):
        m = new_marker("smtps")
        with Client(MAIN.ports["smtps"], implicit_tls=True) as c:
            self.assertIsInstance(c.s.sock, ssl.SSLSocket)
            code, kw, mechs = c.ehlo()
            self.assertEqual(code, 250)
            self.assertNotIn("STARTTLS", kw, c.transcript())
            self.assertEqual(mechs, {"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"}, c.transcript())
            self.assertReply(c.mail(), 530, "5.7.0", c, "MAIL before AUTH on smtps")
            self.assertReply(c.auth_plain(USER, PASSWORD), 235, "2.7.0", c, "AUTH PLAIN")
            r = c.transaction(USER, m)
            self.assertReply(r[-1], 250, "2.0.0", c, "message over smtps")
            self.assertInMaildir(m, c)

    def test_smtps_with_smtplib_login(self):
        # smtplib's own AUTH negotiation (it picks CRAM-MD5, then PLAIN, LOGIN)
        c = Client(MAIN.ports["smtps"], implicit_tls=True)
        try:
            c.ehlo()
            with self.assertRaises(smtplib.SMTPAuthenticationError) as cm:
                c.s.login(USER, PASSWORD + "x")
            self.assertEqual(cm.exception.smtp_code, 535)
            code, _ = c.s.login(USER, PASSWORD)
            self.assertEqual(code, 235)
        finally:
            c.close()

    def test_curl_smtps(self):
        m = new_marker("curl")
        msgfile = os.path.join(W.dir, m + ".eml")
        with open(msgfile, "w", newline="") as f:
            f.write(make_message(m, to=USER))
        p = run(["curl", "-sS", "--max-time", "15", "-k", "--url",
                 "smtps://127.0.0.1:%d" % MAIN.ports["smtps"], "--user",
                 "%s:%s" % (USER, PASSWORD), "--mail-from", USER, "--mail-rcpt", USER,
                 "--upload-file", msgfile, "-v"], timeout=30)
        conv = "\n".join(l for l in p.stderr.splitlines() if l[:2] in ("> ", "< "))
        self.assertRegex(conv, r"< 235 2\.7\.0", conv + p.stderr[-2000:])
        self.assertRegex(conv, r"< 250 2\.0\.0 Ok", conv)
        self.assertInMaildir(m)

    def test_submission_starttls_requires_auth(self):
        m = new_marker("submission")
        with Client(MAIN.ports["submission"]) as c:
            code, kw, mechs = c.ehlo()
            self.assertIn("STARTTLS", kw)
            self.assertReply(c.mail(), 530, "5.7.0", c, "MAIL before TLS and AUTH")
            self.assertEqual(c.starttls(), 220)
            code, kw, mechs = c.ehlo()
            self.assertEqual(mechs, {"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"}, c.transcript())
            self.assertReply(c.mail(), 530, "5.7.0", c, "MAIL inside TLS, before AUTH")
            self.assertReply(c.auth_login(USER, "wrong"), 535, "5.7.8", c, "wrong password")
            self.assertReply(c.mail(), 530, "5.7.0", c, "MAIL after a failed AUTH")
            self.assertReply(c.auth_login(USER, PASSWORD), 235, "2.7.0", c, "AUTH LOGIN")
            r = c.transaction(USER, m)
            self.assertReply(r[-1], 250, "2.0.0", c, "message on submission after AUTH")
            self.assertInMaildir(m, c)

    def test_smtp_door_does_not_require_auth(self):
        # the contrast: on smtp_listen, MAIL needs no AUTH
        with Client(MAIN.ports["smtp"]) as c:
            c.ehlo()
            self.assertReply(c.mail(), 250, "2.1.0", c, "MAIL on the smtp door")


# ============================================================== T03 AUTH
class T03Auth(Case):
    MECHS = ("PLAIN", "LOGIN", "CRAM-MD5")

    def tls_client(self, daemon=None):
        c = Client((daemon or MAIN).ports["smtp"])
        c.ehlo()
        self.assertEqual(c.starttls(), 220)
        c.ehlo()
        return c

    def test_right_password_235(self):
        for mech in self.MECHS:
            with self.subTest(mech=mech), self.tls_client() as c:
                self.assertReply(c.auth(mech, USER, PASSWORD), 235, "2.7.0", c, mech)
                # a second AUTH in the same session is refused
                self.assertReply(c.auth_plain(USER, PASSWORD), 503, "5.5.1", c, "second AUTH")

    def test_wrong_password_or_unknown_user_535(self):
        self.mark(MAIN)
        for mech in self.MECHS:
            for user, pw, what in ((USER, PASSWORD + "!", "wrong password"),
                                   (USER, "", "empty password"),
                                   ("nobody@example.com", PASSWORD, "unknown user"),
                                   ("alice", PASSWORD, "login without domain")):
                with self.subTest(mech=mech, case=what), self.tls_client() as c:
                    self.assertReply(c.auth(mech, user, pw), 535, "5.7.8", c,
                                     "%s %s" % (mech, what))
                    # and it gave no rights: a relay attempt is still refused
                    c.mail()
                    self.assertReply(c.rcpt("user@other.org"), 550, "5.7.1", c,
                                     "relay after a failed AUTH")
        self.assertRegex(self.log_since(MAIN), r"AUTH failed for .*reason=auth-failed")

    def test_plaintext_refused_before_tls(self):
        with Client(MAIN.ports["smtp"]) as c:
            code, kw, mechs = c.ehlo()
            self.assertEqual(mechs, {"CRAM-MD5", "SCRAM-SHA-256"}, c.transcript())
            self.assertReply(c.auth_plain(USER, PASSWORD), 538, "5.7.11", c,
                             "AUTH PLAIN without TLS")
            self.assertReply(c.cmd("AUTH LOGIN"), 538, "5.7.11", c, "AUTH LOGIN without TLS")
            self.assertReply(c.cmd("AUTH PLAIN"), 538, "5.7.11", c,
                             "AUTH PLAIN (no initial response) without TLS")
            # CRAM-MD5 never sends the password: allowed without TLS
            self.assertReply(c.auth_cram(USER, PASSWORD), 235, "2.7.0", c,
                             "AUTH CRAM-MD5 without TLS")

    def test_auth_before_starttls_does_not_survive_it(self):
        # RFC 3207 4.2: after the handshake the server MUST discard any
        # knowledge obtained from the client that did not come from the TLS
        # negotiation.  Either STARTTLS is refused once authenticated, or the
        # TLS session starts unauthenticated (submission: MAIL is 530 again).
        c = Client(MAIN.ports["submission"])
        try:
            c.ehlo()
            self.assertReply(c.auth_cram(USER, PASSWORD), 235, "2.7.0", c, "CRAM-MD5 before TLS")
            code, text = c.cmd("STARTTLS")
            if code != 220:
                self.assertEqual(code // 100, 5, "STARTTLS after AUTH: %d %s" % (code, text))
                return
            c.s.sock = c.ctx.wrap_socket(c.s.sock)
            c.s.file = None
            code, kw, mechs = c.ehlo()
            self.assertEqual(code, 250)
            self.assertEqual(mechs, {"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"},
                             "EHLO inside TLS must offer AUTH again: the session is new\n" +
                             c.transcript())
            self.assertReply(c.mail(USER), 530, "5.7.0", c,
                             "MAIL on submission inside TLS without AUTH in this TLS session "
                             "(the AUTH done before STARTTLS was kept)")
        finally:
            c.close()

    def test_auth_rset_starttls_then_no_relay(self):
        # RFC 3207 4.2 on the smtp door, where MAIL needs no AUTH: the engine
        # must forget the identity too (the finding: AUTH, RSET, STARTTLS,
        # EHLO, MAIL without AUTH, and a relayed RCPT was accepted)
        c = Client(MAIN.ports["smtp"])
        try:
            c.ehlo()
            self.assertReply(c.auth_cram(USER, PASSWORD), 235, "2.7.0", c, "CRAM-MD5 before TLS")
            c.mail()
            self.assertReply(c.rcpt("user@other.org"), 250, None, c, "relay while authenticated")
            self.assertReply(c.cmd("RSET"), 250, None, c, "RSET")
            self.assertEqual(c.starttls(), 220, c.transcript())
            c.ehlo()
            self.assertReply(c.mail(), 250, None, c, "MAIL inside TLS, no AUTH")
            self.assertReply(c.rcpt("user@other.org"), 550, "5.7.1", c,
                             "relayed RCPT inside TLS without AUTH in this TLS session")
        finally:
            c.close()

    def test_cram_md5_without_tls_wrong_password(self):
        with Client(MAIN.ports["smtp"]) as c:
            c.ehlo()
            self.assertReply(c.auth_cram(USER, "guess"), 535, "5.7.8", c, "CRAM-MD5 wrong")

    def test_allow_plaintext_yes(self):
        for mech in self.MECHS:
            with self.subTest(mech=mech), Client(PLAIN.ports["smtp"]) as c:
                code, kw, mechs = c.ehlo()
                self.assertEqual(mechs, {"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"}, c.transcript())
                self.assertNotIsInstance(c.s.sock, ssl.SSLSocket)
                self.assertReply(c.auth(mech, USER, PASSWORD + "x"), 535, "5.7.8", c,
                                 mech + " wrong password, no TLS")
        for mech in self.MECHS:
            with self.subTest(mech=mech), Client(PLAIN.ports["smtp"]) as c:
                c.ehlo()
                self.assertReply(c.auth(mech, USER, PASSWORD), 235, "2.7.0", c,
                                 mech + " without TLS, auth_allow_plaintext = yes")

    def test_swaks_auth_login_starttls(self):
        m = new_marker("swaks")
        p = run(["swaks", "--server", "127.0.0.1:%d" % MAIN.ports["smtp"], "--tls",
                 "--auth", "LOGIN", "--auth-user", USER, "--auth-password", PASSWORD,
                 "--from", USER, "--to", USER, "--helo", HELO,
                 "--header", "Message-ID: <%s@tls.test>" % m,
                 "--body", "swaks body\nEND-%s" % m, "--timeout", "10"], timeout=30)
        out = p.stdout + p.stderr
        # the QUIT inside TLS is judged by T01.test_quit_inside_tls_gets_221,
        # so swaks' exit status (it complains when QUIT gets no 221) is not used
        self.assertRegex(out, r"<~  235 2\.7\.0", out)
        self.assertRegex(out, r"<~  250 2\.0\.0 Ok", out)
        hits = W.in_mailbox(m)
        self.assertEqual(len(hits), 1, out)

    def test_auth_garbage(self):
        with self.tls_client() as c:
            self.assertReply(c.cmd("AUTH PLAIN !!!notbase64"), 501, "5.5.2", c, "bad base64")
            self.assertReply(c.cmd("AUTH DIGEST-MD5"), 504, "5.5.4", c, "unknown mechanism")
            code, _ = c.cmd("AUTH LOGIN")
            self.assertEqual(code, 334)
            self.assertReply(c.cmd("*"), 501, "5.7.0", c, "client cancels with *")
            self.assertReply(c.auth_plain(USER, PASSWORD), 235, "2.7.0", c,
                             "AUTH after the garbage")


# ============================================================== T04 relaying
class T04Relay(Case):
    def test_outside_cannot_relay_without_auth(self):
        m = new_marker("norelay")
        with Client(MAIN.ports["smtp"]) as c:
            c.ehlo()
            self.assertReply(c.mail(), 250, "2.1.0", c, "MAIL")
            got = c.rcpt("user@other.org")
            self.assertReply(got, 550, "5.7.1", c, "relay without AUTH")
            self.assertIn("Relay access denied", got[1])
        with Client(MAIN.ports["smtp"]) as c:      # TLS alone grants nothing
            c.ehlo()
            c.starttls()
            c.ehlo()
            c.mail()
            self.assertReply(c.rcpt("user@other.org"), 550, "5.7.1", c,
                             "relay inside TLS without AUTH")
            self.assertReply(c.data(make_message(m, to="user@other.org")), 554, None, c,
                             "DATA with no recipient")
        self.assertEqual(RELAYSINK.find(m), [])

    def test_relay_after_auth_reaches_relayhost(self):
        for door, mech in (("smtp", "PLAIN"), ("submission", "CRAM-MD5")):
            with self.subTest(door=door):
                m = new_marker("relay-" + door)
                with Client(MAIN.ports[door]) as c:
                    c.ehlo()
                    c.starttls()
                    c.ehlo()
                    self.assertReply(c.auth(mech, USER, PASSWORD), 235, "2.7.0", c, mech)
                    r = c.transaction("user@other.org", m, sender=USER)
                    self.assertReply(r[1], 250, None, c, "RCPT user@other.org after AUTH")
                    self.assertReply(r[-1], 250, None, c, "end of data, relayed")
                # pass-through: the relayhost had it before the client got 250
                got = RELAYSINK.find(m)
                self.assertEqual(len(got), 1, "relayhost sink: %d copies of %s\n%s" % (
                    len(got), m, c.transcript()))
                self.assertRegex(got[0], r"X-Rcpt-Args: (TO:)?<user@other\.org>")
                self.assertIn("END-%s" % m, got[0])
                self.assertEqual(W.in_mailbox(m), [], "relayed mail also went to the Maildir")


    def test_slow_relayhost_does_not_stall_local_delivery_or_auth(self):
        # README: "Slow work -- fsync, password hashing -- runs on worker
        # threads; downstream sessions are non-blocking clients on the event
        # loop itself. The event loop never waits."  A relayhost that takes
        # 3 s per RCPT (a tarpit, a far-away MX) must not make other clients'
        # local delivery or AUTH wait for it.
        slow = W.sink("slow-relayhost", extra=["-W", "RCPT:3"], dump=False)
        d = Daemon(W, "slowrelay", smtp_listen="auto",
                   relayhost="[127.0.0.1]:%d" % slow.port).start()
        relayers, relay_times = [], []
        try:
            def relay(i):
                try:
                    c = Client(d.ports["smtp"], source="127.0.0.2", timeout=30)
                    c.ehlo()
                    c.mail("relay%d@example.com" % i)
                    t0 = time.monotonic()
                    relayers.append(c.rcpt("user%d@other.org" % i))
                    relay_times.append(time.monotonic() - t0)
                    c.s.close()
                except (OSError, smtplib.SMTPException) as e:
                    relayers.append((-1, repr(e)))
            ts = [threading.Thread(target=relay, args=(i,), daemon=True) for i in range(12)]
            for t in ts:
                t.start()
            time.sleep(0.5)       # every relayed RCPT is now waiting on the relayhost
            m = new_marker("while-slow")
            res = {}

            def local():
                with Client(d.ports["smtp"]) as c:
                    c.ehlo()
                    t0 = time.monotonic()
                    r = c.transaction(USER, m)
                    res["local"] = (time.monotonic() - t0, r[-1], c.transcript())

            def auth():
                with Client(d.ports["smtp"]) as c:
                    c.ehlo()
                    t0 = time.monotonic()
                    got = c.auth_cram(USER, PASSWORD)
                    res["auth"] = (time.monotonic() - t0, got, c.transcript())
            probes = [threading.Thread(target=f, daemon=True) for f in (local, auth)]
            for t in probes:
                t.start()
            for t in probes:
                t.join(20)
            t_local, got, tr = res["local"]
            self.assertEqual(got[0], 250, tr)
            t_auth, got, tr = res["auth"]
            self.assertEqual(got[0], 235, tr)
            for t in ts:
                t.join(20)
            self.assertEqual([r[0] for r in relayers], [250] * 12,
                             "the relayed RCPTs (through the slow relayhost): %r" % relayers)
            slow_ones = []
            if t_local >= 1.0:
                slow_ones.append("a local Maildir delivery (DATA to 250) took %.2fs" % t_local)
            if t_auth >= 1.0:
                slow_ones.append("AUTH CRAM-MD5 took %.2fs" % t_auth)
            self.assertEqual(slow_ones, [], "while 12 sessions waited on a relayhost that "
                             "answers RCPT after 3 s; relayed RCPTs answered after %s s" % (
                                 sorted(set("%.0f" % x for x in relay_times))))
        finally:
            d.stop()
            slow.stop()


# ============================================================== T05 pass-through
class T05PassThrough(Case):
    """One daemon with delivery = relay:[127.0.0.1]:SINKPORT; each test starts
    the smtp-sink it needs on that port (or none)."""

    @classmethod
    def setUpClass(cls):
        cls.sink_port = W.port()
        cls.d = Daemon(W, "passthrough", smtp_listen="auto",
                       delivery="relay:[127.0.0.1]:%d" % cls.sink_port).start()
        cls.sink = None

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def setUp(self):
        self.acked = []          # (marker, sink) the client got 250 for

    def tearDown(self):
        # nothing acknowledged 250 that the sink did not get
        for m, sink in self.acked:
            self.assertTrue(sink is not None and sink.find(m),
                            "%s got 250 but is not at the sink" % m)
        if T05PassThrough.sink is not None:
            T05PassThrough.sink.stop()
            T05PassThrough.sink = None

    def start_sink(self, name, extra=()):
        T05PassThrough.sink = W.sink(name, self.sink_port, extra)
        return T05PassThrough.sink

    def send(self, rcpts, marker, source=OUTSIDE, tls=False):
        c = Client(self.d.ports["smtp"], source=source)
        c.ehlo()
        if tls:
            c.starttls()
            c.ehlo()
        r = c.transaction(rcpts, marker)
        if r[-1][0] == 250 and len(r) > 2:
            self.acked.append((marker, T05PassThrough.sink))
        c.close()
        return c, r

    def test_local_mail_reaches_sink(self):
        sink = self.start_sink("pass-ok")
        m = new_marker("pass")
        c, r = self.send(["user@example.com", "other@example.com"], m)
        self.assertReply(r[1], 250, None, c, "RCPT 1")
        self.assertReply(r[2], 250, None, c, "RCPT 2")
        self.assertReply(r[-1], 250, None, c, "end of data")
        got = sink.find(m)      # no polling: the sink had it before the 250
        self.assertEqual(len(got), 1, c.transcript())
        rcpts = re.findall(r"^X-Rcpt-Args: (?:TO:)?<([^>]*)>", got[0], re.M)
        self.assertEqual(sorted(rcpts), ["other@example.com", "user@example.com"])
        self.assertIn("END-%s" % m, got[0])
        self.assertEqual(W.in_mailbox(m, "user@example.com"), [], "went to the Maildir too")
        # over STARTTLS as well
        m2 = new_marker("pass-tls")
        c, r = self.send("user@example.com", m2, tls=True)
        self.assertReply(r[-1], 250, None, c, "end of data over STARTTLS")
        self.assertEqual(len(sink.find(m2)), 1)

    def test_passthrough_is_no_open_relay(self):
        sink = self.start_sink("pass-norelay")
        m = new_marker("pass-norelay")
        c, r = self.send("user@other.org", m)
        self.assertReply(r[1], 550, "5.7.1", c, "outside -> other.org in pass-through")
        self.assertEqual(sink.find(m), [])

    def test_downstream_rcpt_refusal_mirrored(self):
        for extra, code, enh, text in (
                (["-f", "RCPT", "-B", "550 5.1.1 sink-says-no-such-mailbox"], 550, "5.1.1",
                 "sink-says-no-such-mailbox"),
                (["-r", "RCPT", "-b", "451 4.3.2 sink-is-busy-try-later"], 451, "4.3.2",
                 "sink-is-busy-try-later")):
            with self.subTest(code=code):
                sink = self.start_sink("pass-rcpt%d" % code, extra)
                m = new_marker("pass-rcpt%d" % code)
                c, r = self.send("user@example.com", m)
                self.assertReply(r[0], 250, None, c, "MAIL")
                self.assertReply(r[1], code, enh, c, "RCPT refused downstream")
                self.assertIn(text, r[1][1], "the downstream's text is not mirrored\n" +
                              c.transcript())
                self.assertEqual(len(r), 2, "DATA was sent although no RCPT got 250")
                self.assertEqual(sink.find(m), [])
                sink.stop()
                T05PassThrough.sink = None

    def test_downstream_mail_refusal_mirrored_at_rcpt(self):
        # the downstream's MAIL is sent with the first RCPT: its refusal is
        # what the client hears there
        sink = self.start_sink("pass-mail550", ["-f", "MAIL", "-B",
                                                "550 5.7.1 sink-refuses-this-sender"])
        m = new_marker("pass-mail550")
        c, r = self.send("user@example.com", m)
        self.assertReply(r[1], 550, "5.7.1", c, "RCPT when the downstream refused MAIL")
        self.assertIn("sink-refuses-this-sender", r[1][1], c.transcript())
        self.assertEqual(sink.find(m), [])

    def test_rset_dots_and_a_large_message(self):
        sink = self.start_sink("pass-rset")
        m = new_marker("pass-rset")
        body = [".leading dot", "..two dots", ".", "x"] + ["y" * 998] * 3000
        msg = make_message(m, to="second@example.com", body=body)
        with Client(self.d.ports["smtp"]) as c:
            c.ehlo()
            self.assertReply(c.mail("first@example.org"), 250, None, c, "MAIL 1")
            self.assertReply(c.rcpt("first@example.com"), 250, None, c, "RCPT 1 (downstream)")
            self.assertReply(c.cmd("RSET"), 250, None, c, "RSET with a downstream open")
            self.assertReply(c.mail("second@example.org"), 250, None, c, "MAIL 2")
            self.assertReply(c.rcpt("second@example.com"), 250, None, c, "RCPT 2")
            got = c.data(msg)
            self.assertReply(got, 250, None, c, "3 MB message with dot lines")
            self.acked.append((m, sink))
        dumps = sink.find(m)
        self.assertEqual(len(dumps), 1, c.transcript())
        d = dumps[0]
        self.assertEqual(re.findall(r"^X-Rcpt-Args: (?:TO:)?<([^>]*)>", d, re.M),
                         ["second@example.com"], "the RSET transaction leaked downstream")
        self.assertEqual(re.findall(r"^X-Mail-Args: (?:FROM:)?<([^>]*)>", d, re.M),
                         ["second@example.org"])
        # smtp-sink writes its dump with LF line ends and one empty line after
        want = msg.replace("\r\n", "\n").rstrip("\n")
        self.assertTrue(d.replace("\r\n", "\n").rstrip("\n").endswith(want),
                        "the sink's copy differs from what the client sent (dot-stuffing? "
                        "truncation?): %d vs %d bytes" % (len(d), len(want)))
        self.assertEqual([t for t in sink.dumps() if "first@example" in t], [])

    def test_downstream_refuses_message(self):
        for extra, want in ((["-r", ".", "-b", "452 4.3.1 sink-out-of-space"], 452),
                            (["-f", ".", "-B", "554 5.6.0 sink-hates-this-message"], 554)):
            with self.subTest(code=want):
                self.start_sink("pass-dot%d" % want, extra)
                m = new_marker("pass-dot%d" % want)
                c, r = self.send("user@example.com", m)
                self.assertReply(r[1], 250, None, c, "RCPT")
                self.assertEqual(r[-1][0], want, "final reply must mirror the sink's refusal\n"
                                 + c.transcript())
                T05PassThrough.sink.stop()
                T05PassThrough.sink = None

    def test_downstream_drops_connection_after_dot(self):
        self.start_sink("pass-drop", ["-q", "."])
        m = new_marker("pass-drop")
        c, r = self.send("user@example.com", m)
        self.assertReply(r[1], 250, None, c, "RCPT")
        self.assertEqual(r[-1][0] // 100, 4, "the sink hung up without answering the dot: "
                         "the client must get a 4xx, never 250\n" + c.transcript())

    def test_downstream_down_451_4_4_1(self):
        # no sink on the port
        self.assertFalse(port_accepts("127.0.0.1", self.sink_port))
        m = new_marker("pass-down")
        t0 = time.monotonic()
        c, r = self.send("user@example.com", m)
        self.assertReply(r[0], 250, None, c, "MAIL")
        self.assertReply(r[1], 451, "4.4.1", c, "RCPT with the downstream down")
        self.assertLess(time.monotonic() - t0, 5, "connection refused must answer fast")
        # the gateway still serves once the downstream is back
        sink = self.start_sink("pass-back")
        m2 = new_marker("pass-back")
        c, r = self.send("user@example.com", m2)
        self.assertReply(r[-1], 250, None, c, "after the downstream came back")
        self.assertEqual(len(sink.find(m2)), 1)


# ============================================================== T06 mutual TLS
class T06MutualTLS(Case):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(W, "mtls", smtp_listen="auto", smtps_listen="auto",
                       tls_verify_client="require",
                       tls_client_ca_file=W.pki["ca.crt"]).start()

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def attempt(self, door, cert=None, key=None):
        """(ok, what happened): ok when EHLO inside TLS got 250."""
        c = None
        try:
            c = Client(self.d.ports[door], implicit_tls=(door == "smtps"), cert=cert, key=key)
            if door == "smtp":
                code, kw, _ = c.ehlo()
                if "STARTTLS" not in kw:
                    return False, "no STARTTLS offered"
                c.starttls()
            code, kw, mechs = c.ehlo()
            return code == 250, "EHLO inside TLS: %d %s" % (code, sorted(kw))
        except socket.timeout as e:
            return None, "timed out (the server hung instead of refusing): %r" % e
        except (ssl.SSLError, smtplib.SMTPException, ConnectionError, OSError) as e:
            return False, "%s: %s" % (type(e).__name__, e)
        finally:
            if c is not None:
                try:
                    c.s.close()
                except OSError:
                    pass

    def test_no_client_cert_fails(self):
        for door in ("smtp", "smtps"):
            with self.subTest(door=door):
                ok, what = self.attempt(door)
                self.assertIs(ok, False, "%s without a client certificate: %s" % (door, what))

    def test_cert_from_another_ca_fails(self):
        for door in ("smtp", "smtps"):
            with self.subTest(door=door):
                ok, what = self.attempt(door, W.pki["rogue.crt"], W.pki["rogue.key"])
                self.assertIs(ok, False, "%s with a certificate from another CA: %s" % (
                    door, what))

    def test_cert_from_our_ca_works(self):
        for door in ("smtp", "smtps"):
            with self.subTest(door=door):
                ok, what = self.attempt(door, W.pki["client.crt"], W.pki["client.key"])
                self.assertIs(ok, True, "%s with a certificate from our CA: %s\nlog:\n%s" % (
                    door, what, tail(self.d.log, 10)))
        # and a whole message over mutual TLS
        m = new_marker("mtls")
        with Client(self.d.ports["smtps"], implicit_tls=True, cert=W.pki["client.crt"],
                    key=W.pki["client.key"]) as c:
            c.ehlo()
            c.auth_plain(USER, PASSWORD)
            r = c.transaction(USER, m)
            self.assertReply(r[-1], 250, None, c, "message over mutual TLS")
            self.assertInMaildir(m, c)
        self.assertTrue(self.d.alive(), "the daemon died")


# ============================================================== T07 config errors
class T07ConfigErrors(Case):
    def start_expect_fail(self, name, as_nobody=False, **conf):
        d = Daemon(W, name, smtp_listen="auto", **conf)
        argv = d.argv()
        if as_nobody:
            argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] + argv
        try:
            p = run(argv, timeout=10)
        except subprocess.TimeoutExpired:
            self.fail("portcullisd %s kept running with a broken TLS setting" % name)
        return p

    def assertNames(self, p, path, what):
        self.assertEqual(p.returncode, 1, "%s: exit status %s\nstderr: %s" % (
            what, p.returncode, p.stderr))
        self.assertIn(path, p.stderr, "%s: stderr does not name %s" % (what, path))
        self.assertLess(len(p.stderr.splitlines()), 5, "a short message, please:\n" + p.stderr)

    def test_key_does_not_match_cert(self):
        p = self.start_expect_fail("badkey", tls_key_file=W.pki["other.key"])
        self.assertNames(p, W.pki["other.key"], "mismatched key")
        self.assertIn("match", p.stderr)

    def test_missing_cert_file(self):
        path = os.path.join(W.dir, "no-such-cert.pem")
        p = self.start_expect_fail("nocert", tls_cert_file=path)
        self.assertNames(p, path, "missing certificate")

    def test_not_pem_cert_file(self):
        p = self.start_expect_fail("garbagecert", tls_cert_file=W.pki["garbage.crt"])
        self.assertNames(p, W.pki["garbage.crt"], "non-PEM certificate")

    def test_missing_client_ca_file(self):
        path = os.path.join(W.dir, "no-such-ca.pem")
        p = self.start_expect_fail("noca", tls_verify_client="require", tls_client_ca_file=path)
        self.assertNames(p, path, "missing client CA file")

    def test_unreadable_cert_file(self):
        if os.geteuid() != 0 or shutil.which("setpriv") is None:
            self.skipTest("needs root and setpriv to run the daemon as nobody")
        d = os.path.join(W.dir, "nobody")
        os.mkdir(d)
        for k in ("server.crt", "server.key"):
            shutil.copy(W.pki[k], d)
        shutil.chown(d, user="nobody")
        for n in os.listdir(d):
            shutil.chown(os.path.join(d, n), user="nobody")
        cert = os.path.join(d, "server.crt")
        os.chmod(cert, 0o000)
        p = self.start_expect_fail("unreadable", as_nobody=True, tls_cert_file=cert,
                                   tls_key_file=os.path.join(d, "server.key"),
                                   state_dir=os.path.join(d, "state"),
                                   lists="file:" + os.path.join(d, "lists"),
                                   users="file:" + os.path.join(d, "users"),
                                   delivery="maildir:" + os.path.join(d, "mail"))
        self.assertNames(p, cert, "unreadable certificate (daemon run as nobody, mode 000)")


# ============================================================== runner
CASES = [T01StartTLS, T02Submission, T03Auth, T04Relay, T05PassThrough, T06MutualTLS,
         T07ConfigErrors]


def final_checks():
    """After every test: daemons exit 0 on SIGTERM, no sanitizer report."""
    problems = []
    if W is None:
        return problems
    for d in W.daemons:
        if d.name in ("badkey", "nocert", "garbagecert", "noca", "unreadable"):
            continue
        rc = d.stop()
        if rc not in (0, None):
            problems.append("portcullisd %s exited %s on SIGTERM" % (d.name, rc))
    for n in sorted(os.listdir(W.dir)):
        if n.endswith(".log") and not n.startswith("sink-"):
            bad = [l for l in read(os.path.join(W.dir, n)).splitlines()
                   if SANITIZER_RE.search(l)]
            if bad:
                problems.append("%s: sanitizer report:\n  %s" % (n, "\n  ".join(bad[:20])))
    return problems


def main(argv=None, cases=CASES, tools=()):
    """runner.main for this file and the ones built on its work area."""
    if os.geteuid() != 0:
        print("needs root (smtp-sink -u postfix)", file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    return runner.main(argv, cases=cases, module="__main__",
                       tools=tools, final_checks=final_checks,
                       cleanup=lambda: W is not None and W.close())


if __name__ == "__main__":
    sys.exit(main())
