#!/usr/bin/python3
"""The IMAP proxy (issue 12): users whose line says proxy=y host=... are
handed, after Portcullis checked their password, to a private Dovecot on
loopback (its own store, login_trusted_networks = 127.0.0.0/8).

    T01Users        portcullis user set/show: the proxy fields, validation
                    with clear errors, a password change keeps them
    T02Imap         imaplib through Portcullis to Dovecot: login, SELECT,
                    FETCH of a message only Dovecot holds; the tagged OK
                    carries Dovecot's post-login CAPABILITY (equal to what
                    Dovecot tells a direct client); the client's address in
                    Dovecot's log (ID x-originating-ip); one log line per
                    proxied login; proxy_sessions_total in portcullis stats;
                    a local user on the same door still served from the store
    T03Idle         IDLE through the proxy: a message appended through
                    Dovecot reaches the idling client as * EXISTS
    T04Big          a 20 MB message fetched through the proxy, byte-identical
                    (plaintext, implicit TLS on the client's side, curl)
    T05Tls          STARTTLS and implicit TLS to the backend verified with a
                    test CA; a certificate for another name refused (NO
                    [UNAVAILABLE], never plaintext)
    T06Down         backend down at login: NO [UNAVAILABLE] fast, the log
                    names the backend; backend stopped mid-session: the
                    client's connection is closed
    T07Guard        the kill list and the login penalty apply to proxied
                    users (a wrong password never reaches the backend)
    T08Pop3         poplib through Portcullis to Dovecot's POP3: USER/PASS,
                    RETR, the client's address via XCLIENT in Dovecot's log,
                    STLS and implicit TLS to the backend, -ERR [SYS/TEMP]
    T09Master       every mechanism with no password to forward goes through
                    the backend master user (USER*MASTER; Dovecot's log shows
                    "Master user logging in as" USER, auth_verbose): IMAP
                    CRAM-MD5 and SCRAM-SHA-256 (imaplib; gsasl --imap, the
                    server's signature checked by the client), POP3 APOP
                    (poplib, STAT/RETR of the backend's message), POP3
                    CRAM-MD5 (gsasl) and SCRAM-SHA-256, EXTERNAL with a client
                    certificate on imaps and pop3s; a wrong digest / password,
                    another user's certificate or none refused here, one the
                    CA never signed failing the handshake: the backend never
                    asked; without a master user, NO [UNAVAILABLE]
    T10BackendAuth  mail_proxy_auth = backend: unknown users of
                    mail_proxy_domains checked by mail_proxy_default (IMAP
                    and POP3), its NO a failed login with the penalty delay
    T11Clients      mbsync (STARTTLS), mutt (batch mode, imaps), fetchmail
                    (STLS), poplib POP3_SSL and curl pop3s through the proxy
    T13Names        host= as a DNS name, resolved on the loop through the
                    resolver setting (a dnsmasq on loopback): IMAP and POP3
                    logins, implicit TLS verified against the name (another
                    name refused), an unknown name NO [UNAVAILABLE] fast
    T14UserIP       proxied sessions count in mail_max_userip_connections:
                    past it NO [UNAVAILABLE] / -ERR [IN-USE] with Dovecot's
                    words, a slot again once a session ends
    T15Forward      mail_proxy_forward_client: the ID / XCLIENT lines a
                    backend gets (client's address and port, the door's),
                    none of them with no
    T12Robust       a scripted backend (slow login, a long stream, a close
                    behind a full client): clients over TLS that vanish while
                    the backend logs in or streams, a backend that closes
                    while the client's output is full (all of it still
                    delivered), the daemon sanitizer-clean and serving after;
                    plaintext behind a backend's STARTTLS answer refused (NO
                    [UNAVAILABLE] / -ERR [SYS/TEMP], the log says why); no
                    CR LF of a client's PLAIN password smuggled into the
                    backend's session (mail_proxy_auth = backend); a backend
                    refusing a login we accepted: NO [AUTHENTICATIONFAILED]
                    / -ERR [AUTH], "refused" in the log; a backend on ::1

Run: PORTCULLIS_BIN=$PWD/build/asan/bin python3 tests/integration/test_proxy.py
"""
import imaplib
import poplib
import os
import re
import shutil
import signal
import ssl
import socket
import subprocess
import sys
import struct
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import dovecot, gsasl, runner  # noqa: E402
from harness.daemon import Daemon, run_bin  # noqa: E402
from harness.ports import free_port  # noqa: E402
from harness.util import wait_until  # noqa: E402

USER = "alice@example.com"
PASSWORD = "Proxy pass 1"
LOCAL = "bob@example.com"
CLIENT = "127.0.0.3"        # the client's source address (seen by Dovecot via ID)
OUTSIDE = "127.0.0.4"       # may be kill-listed / banned

W = None


def openssl(*args):
    p = subprocess.run(["openssl"] + list(args), capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError("openssl %s: %s" % (" ".join(args), p.stderr))


class Work:
    """A test CA, a backend certificate for 127.0.0.1 and one for another name."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pc-proxy-")
        os.chmod(self.dir, 0o755)
        p = lambda n: os.path.join(self.dir, n)  # noqa: E731
        self.ca, self.ca_key = p("ca.crt"), p("ca.key")
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                "/CN=Portcullis test CA", "-keyout", self.ca_key, "-out", self.ca)
        self.good = self.cert("good", "IP:127.0.0.1")
        self.wrong = self.cert("wrong", "DNS:backend.invalid")
        self.front = self.cert("front", "IP:127.0.0.1,DNS:localhost")

    def cert(self, name, san):
        key, csr, crt = (os.path.join(self.dir, name + x) for x in (".key", ".csr", ".crt"))
        ext = os.path.join(self.dir, name + ".ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=%s\n" % san)
        openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + name,
                "-keyout", key, "-out", csr)
        openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", crt)
        os.chmod(key, 0o644)
        return crt, key

    def close(self):
        if os.environ.get("KEEP_LAB") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)


MASTER, MASTER_PW = "proxymaster", "Master pass 9"


def backend(name, tls, protocols=("imap",), users=None, extra=""):
    masters = os.path.join(W.dir, name + "-masters")
    with open(masters, "w") as f:
        f.write("%s:{PLAIN}%s\n" % (MASTER, MASTER_PW))
    os.chmod(masters, 0o644)
    dc = dovecot.Dovecot(W.dir, protocols=protocols,
                         users=users or {USER: "{PLAIN}" + PASSWORD},
                         tls=tls, name=name, mechanisms="plain login",
                         extra_conf="login_trusted_networks = 127.0.0.0/8\n"
                                    "imap_idle_notify_interval = 1 secs\n"
                                    "auth_master_user_separator = *\n"
                                    "passdb {\n  driver = passwd-file\n  master = yes\n"
                                    "  args = %s\n}\n" % masters + extra)
    return dc.start()


def put_message(dc, data, name):
    md = dc.maildir(USER)
    for d in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(md, d), exist_ok=True)
    path = os.path.join(md, "new", "%s,S=%d" % (name, len(data)))
    with open(path, "wb") as f:
        f.write(data)
    if os.getuid() == 0:
        for top, dirs, files in os.walk(os.path.join(dc.store)):
            for n in [top] + [os.path.join(top, x) for x in dirs + files]:
                os.lchown(n, dc.uid, dc.gid)


class SrcIMAP4(imaplib.IMAP4):
    """imaplib.IMAP4 from a chosen loopback source address"""

    def __init__(self, host, port, source="127.0.0.1", timeout=15):
        self.source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))


GSASL = shutil.which("gsasl")


def gsasl_pop3(port, mech, password, user=USER):
    """POP3 AUTH in plaintext with gsasl doing the mechanism (harness.gsasl):
    -> (the final server line, socket, its reader, gsasl's output)"""
    s = socket.create_connection(("127.0.0.1", port), 20)
    f = s.makefile("rb")
    assert f.readline().startswith(b"+OK")

    def cmd(line):
        s.sendall(line + b"\r\n")
        return f.readline()
    line, out = gsasl.pop3_auth(cmd, mech, user, password, "front.example.com")
    return line, s, f, out


class Gateway:
    """portcullisd with the IMAP door; USER proxied with fields, LOCAL local."""

    def __init__(self, name, fields=None, users=None, **conf):
        self.imap_port = free_port()
        self.pop3_port = free_port()
        self.imaps_port = free_port()
        base = {
            "imaps_listen": "127.0.0.1:%d" % self.imaps_port,
            "services": "imap pop3",
            "pop3_listen": "127.0.0.1:%d" % self.pop3_port,
            "myhostname": "front.example.com",
            "mydomains": "example.com",
            "state_dir": "{dir}/state",
            "delivery": "maildir:{dir}/mail",
            "imap_listen": "127.0.0.1:%d" % self.imap_port,
            "tls_cert_file": W.front[0],
            "tls_key_file": W.front[1],
            "auth_allow_plaintext": "yes",
            "auth_failure_delay": "0",
            "mail_proxy_tls_ca_file": W.ca,
            "mail_proxy_timeout": "5",
        }
        base.update(conf)
        self.d = Daemon(name, base)
        for u, f in (users or {USER: fields}).items():
            self.d.cli("user", "add", u, "--password-stdin", input=PASSWORD + "\n")
            if f:
                self.d.cli("user", "set", u, *f)
        self.d.cli("user", "add", LOCAL, "--password-stdin", input=PASSWORD + "\n")
        self.d.start(ready=None)
        wait_until(lambda: _accepts(self.imap_port) and _accepts(self.pop3_port), 10,
                   what="the imap and pop3 doors")

    def imap(self, source="127.0.0.1"):
        return SrcIMAP4("127.0.0.1", self.imap_port, source=source)

    def login(self, user=USER, source="127.0.0.1"):
        c = self.imap(source)
        typ, _ = c.login(user, PASSWORD)
        assert typ == "OK"
        return c

    def stop(self):
        self.d.stop()
        self.d.assert_clean()
        self.d.close()


def _accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False


def raw_login(port, user, source="127.0.0.1"):
    """the tagged line a raw LOGIN gets"""
    s = socket.create_connection(("127.0.0.1", port), 10, source_address=(source, 0))
    f = s.makefile("rb")
    f.readline()
    s.sendall(b'a LOGIN "%s" "%s"\r\n' % (user.encode(), PASSWORD.encode()))
    while True:
        line = f.readline()
        if not line or line.startswith(b"a "):
            break
    s.sendall(b"z LOGOUT\r\n")
    s.close()
    return line.decode(errors="replace")


def raw_lines(port, *lines, source="127.0.0.1"):
    """the first reply line to each of lines, sent one after the other
    behind the greeting (a continuation or tagged line for IMAP)"""
    s = socket.create_connection(("127.0.0.1", port), 10, source_address=(source, 0))
    f = s.makefile("rb")
    f.readline()
    got = []
    for line in lines:
        s.sendall(line + b"\r\n")
        got.append(f.readline())
    s.close()
    return got


def pop3_login(port, user, source="127.0.0.1"):
    """USER and PASS: the PASS reply (USER's must be +OK)"""
    u, p = raw_lines(port, b"USER " + user.encode(), b"PASS " + PASSWORD.encode(), source=source)
    assert u.startswith(b"+OK"), u
    return p


def caps_of(line):
    m = re.search(r"\[CAPABILITY ([^\]]*)\]", line)
    return set(m.group(1).split()) if m else set()


def setUpModule():
    global W
    if not dovecot.installed(("imap",)):
        raise unittest.SkipTest("dovecot-imapd is not installed")
    W = Work()


def tearDownModule():
    if W is not None:
        W.close()


class T01Users(unittest.TestCase):
    def test_set_show_validate(self):
        d = Daemon("users", {"services": "imap", "state_dir": "{dir}/state",
                             "delivery": "maildir:{dir}/mail"})
        try:
            d.cli("user", "add", USER, "--password-stdin", input=PASSWORD + "\n")
            out = d.cli("user", "show", USER).stdout
            self.assertIn("served by: the local store", out)
            d.cli("user", "set", USER, "proxy=y", "host=127.0.0.1", "port=1143", "tls=starttls",
                  "destuser=other@example.com")
            out = d.cli("user", "show", USER).stdout
            self.assertIn("backend 127.0.0.1 port 1143 tls starttls as other@example.com", out)
            self.assertIn("fields: proxy=y host=127.0.0.1 port=1143 tls=starttls "
                          "destuser=other@example.com", out)
            # a password change keeps them
            d.cli("user", "passwd", USER, "--password-stdin", input="new pass\n")
            self.assertIn("tls starttls", d.cli("user", "show", USER).stdout)
            # KEY= removes a key
            d.cli("user", "set", USER, "destuser=", "port=")
            out = d.cli("user", "show", USER).stdout
            self.assertIn("fields: proxy=y host=127.0.0.1 tls=starttls\n", out)
            for args, err in ((["host=backend..example"], "numeric IPv4 or IPv6 address or a "
                                                          "DNS name"),
                              (["port=70000"], "port number 1-65535"),
                              (["tls=maybe"], "no, starttls or yes"),
                              (["proxy=sure"], "y or n"),
                              (["destuser=a b"], "login name"),
                              (["colour=red"], "KEY one of proxy, host"),
                              (["host="], "proxy=y needs host=ADDRESS")):
                r = d.cli("user", "set", USER, *args, check=False)
                self.assertNotEqual(r.returncode, 0, args)
                self.assertIn(err, r.stderr, args)
            # unchanged by the refusals
            self.assertIn("fields: proxy=y host=127.0.0.1 tls=starttls\n",
                          d.cli("user", "show", USER).stdout)
            d.cli("user", "set", USER, "proxy=n")
            self.assertIn("served by: the local store", d.cli("user", "show", USER).stdout)
            r = d.cli("user", "show", "nobody@example.com", check=False)
            self.assertEqual(r.returncode, 1)
        finally:
            d.close()


class T01Config(unittest.TestCase):
    """portcullisd -t refuses bad mail_proxy_* settings, naming the key"""
    CASES = [
        ("a default that is no address", {"mail_proxy_default": "backend..example:143"},
         r'mail_proxy_default: "backend\.\.example:143": expected ADDRESS\[:PORT\]'),
        ("a door's default that is no address", {"pop3_mail_proxy_default": "b.example x"},
         r'pop3_mail_proxy_default: "b\.example x": expected ADDRESS\[:PORT\]'),
        ("domains with one door's default only", {"mail_proxy_domains": "far.example",
                                                  "pop3_mail_proxy_default": "192.0.2.1"},
         r"mail_proxy_domains needs mail_proxy_default \(or imap_mail_proxy_default\)"),
        ("a default port out of range", {"mail_proxy_default": "192.0.2.1:0"},
         r"mail_proxy_default.*port is not a number from 1 to 65535"),
        ("domains without a default", {"mail_proxy_domains": "far.example"},
         r"mail_proxy_domains needs mail_proxy_default"),
        ("a master user without its password", {"mail_proxy_master_user": "m"},
         r"mail_proxy_master_user needs mail_proxy_master_password_file"),
        ("a CA file that is not there", {"mail_proxy_tls_ca_file": "/nonexistent/ca.pem"},
         r"mail_proxy_tls_ca_file: cannot load the CA certificates"),
        ("an unknown auth mode", {"mail_proxy_auth": "both"}, r"mail_proxy_auth"),
    ]

    def test_check_refuses(self):
        base = {"services": "imap pop3", "state_dir": "{dir}/state",
                "delivery": "maildir:{dir}/mail", "imap_listen": "127.0.0.1:%d" % free_port(),
                "pop3_listen": "127.0.0.1:%d" % free_port()}
        for name, over, want in self.CASES:
            d = Daemon("conf", base, **over)
            try:
                p = run_bin("portcullisd", "-c", d.conf, "-t")
                self.assertEqual(p.returncode, 1, "%s: %s" % (name, p.stderr))
                self.assertRegex(p.stderr, want, name)
            finally:
                d.close()
        d = Daemon("conf-ok", base, mail_proxy_auth="backend", mail_proxy_default="[::1]:143",
                   pop3_mail_proxy_default="pop.far.example:1110",
                   mail_proxy_domains="far.example")
        try:
            p = run_bin("portcullisd", "-c", d.conf, "-t")
            self.assertEqual(p.returncode, 0, p.stderr)
        finally:
            d.close()


class T02Imap(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dc = backend("dc-imap", None)
        put_message(cls.dc, b"From: far@example.org\r\nTo: alice@example.com\r\n"
                    b"Subject: held by dovecot\r\n\r\nonly the backend has this\r\n",
                    "1700000000.M1P1.backend")
        cls.g = Gateway("imap", ["proxy=y", "host=127.0.0.1", "port=%d" % cls.dc.imap_port])

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()
        cls.dc.close()

    def test_login_select_fetch(self):
        c = self.g.login(source=CLIENT)
        typ, data = c.select("INBOX")
        self.assertEqual(typ, "OK")
        self.assertEqual(data[0], b"1")
        typ, data = c.fetch("1", "(BODY.PEEK[])")
        self.assertEqual(typ, "OK")
        self.assertIn(b"only the backend has this", data[0][1])
        c.logout()
        # the client's address reached Dovecot through ID
        wait_until(lambda: "rip=%s" % CLIENT in open(self.dc.log).read(), 10,
                   what="the client's address in Dovecot's log")
        log = self.g.d.log_text()
        self.assertRegex(log, r"imap: conn=\S+ proxy: user=<%s> client=\[%s\] "
                         r"backend=127\.0\.0\.1:%d: logged in" % (re.escape(USER), CLIENT,
                                                                    self.dc.imap_port))
        out = self.g.d.cli("stats", "--prometheus").stdout
        self.assertRegex(out, r'proxy_sessions_total\{door="imap",backend="127\.0\.0\.1:%d",'
                         r'result="success"\} [1-9]' % self.dc.imap_port)

    def test_post_login_capability_is_dovecots(self):
        via = raw_login(self.g.imap_port, USER)
        direct = raw_login(self.dc.imap_port, USER)
        self.assertTrue(via.startswith("a OK [CAPABILITY "), via)
        self.assertIn("IDLE", caps_of(via))
        self.assertEqual(caps_of(via), caps_of(direct))

    def test_local_user_still_local(self):
        c = self.g.login(LOCAL)
        typ, data = c.select("INBOX")
        self.assertEqual((typ, data[0]), ("OK", b"0"))
        c.logout()

    def test_pipelined_after_login(self):
        s = socket.create_connection(("127.0.0.1", self.g.imap_port), 10)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b'a LOGIN "%s" "%s"\r\nb SELECT INBOX\r\nc LOGOUT\r\n'
                  % (USER.encode(), PASSWORD.encode()))
        got = f.read()
        s.close()
        self.assertIn(b"a OK [CAPABILITY", got)
        self.assertIn(b"b OK [READ-WRITE]", got)
        self.assertIn(b"c OK", got)


class T03Idle(unittest.TestCase):
    def test_idle_sees_a_delivery(self):
        dc = backend("dc-idle", None)
        g = Gateway("idle", ["proxy=y", "host=127.0.0.1", "port=%d" % dc.imap_port])
        try:
            s = socket.create_connection(("127.0.0.1", g.imap_port), 15)
            f = s.makefile("rb")
            f.readline()
            s.sendall(b'a LOGIN "%s" "%s"\r\nb SELECT INBOX\r\n' % (USER.encode(),
                                                                   PASSWORD.encode()))
            while not f.readline().startswith(b"b OK"):
                pass
            s.sendall(b"c IDLE\r\n")
            line = f.readline()
            self.assertTrue(line.startswith(b"+"), line)
            d = dc.imap(USER, PASSWORD)
            t0 = time.monotonic()
            d.append("INBOX", None, None, b"Subject: new\r\n\r\nnew mail\r\n")
            d.logout()
            while True:
                line = f.readline()
                self.assertTrue(line, "connection closed in IDLE")
                if re.match(rb"\* 1 EXISTS", line):
                    break
            self.assertLess(time.monotonic() - t0, 10)
            s.sendall(b"DONE\r\n")
            while True:
                line = f.readline()
                self.assertTrue(line, "connection closed after IDLE")
                if line.startswith(b"c "):
                    break
            self.assertTrue(line.startswith(b"c OK"), line)
            s.close()
        finally:
            g.stop()
            dc.close()


class T04Big(unittest.TestCase):
    def test_20mb_fetch_byte_identical(self):
        dc = backend("dc-big", None)
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.:-+*/\r\n"
        body = line * (20 * 1024 * 1024 // len(line))
        msg = b"From: big@example.org\r\nSubject: big\r\n\r\n" + body
        put_message(dc, msg, "1700000001.M2P2.backend")
        g = Gateway("big", ["proxy=y", "host=127.0.0.1", "port=%d" % dc.imap_port])
        try:
            c = g.login()
            c.select("INBOX", readonly=True)
            t0 = time.monotonic()
            typ, data = c.fetch("1", "(BODY.PEEK[])")
            dt = time.monotonic() - t0
            self.assertEqual(typ, "OK")
            self.assertEqual(len(data[0][1]), len(msg))
            self.assertTrue(data[0][1] == msg, "the message differs")
            sys.stderr.write("\n20 MB through the proxy: %.2f s (%.0f MB/s) " %
                             (dt, len(msg) / 1e6 / dt))
            c.logout()
            # the same over implicit TLS on the client's side
            ctx = ssl.create_default_context(cafile=W.ca)
            c = imaplib.IMAP4_SSL("127.0.0.1", g.imaps_port, ssl_context=ctx, timeout=30)
            self.assertEqual(c.login(USER, PASSWORD)[0], "OK")
            c.select("INBOX", readonly=True)
            typ, data = c.fetch("1", "(BODY.PEEK[])")
            self.assertTrue(data[0][1] == msg, "the message differs over TLS")
            c.logout()
            # and curl, a client of its own
            if shutil.which("curl"):
                out = os.path.join(W.dir, "curl-big")
                r = subprocess.run(["curl", "-s", "--max-time", "60", "-o", out,
                                    "--login-options", "AUTH=PLAIN", "--user",
                                    "%s:%s" % (USER, PASSWORD),
                                    "imap://127.0.0.1:%d/INBOX;UID=1" % g.imap_port],
                                   capture_output=True, timeout=90)
                self.assertEqual(r.returncode, 0, r.stderr)
                with open(out, "rb") as f:
                    self.assertTrue(f.read() == msg, "curl got another message")
        finally:
            g.stop()
            dc.close()


class T05Tls(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dc = backend("dc-tls", W.good)
        cls.bad = backend("dc-wrong", W.wrong)
        users = {
            "st@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % cls.dc.imap_port,
                               "tls=starttls", "destuser=" + USER],
            "im@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % cls.dc.imaps_port,
                               "tls=yes", "destuser=" + USER],
            "wr@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % cls.bad.imaps_port,
                               "tls=yes", "destuser=" + USER],
            "ws@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % cls.bad.imap_port,
                               "tls=starttls", "destuser=" + USER],
        }
        cls.g = Gateway("tls", users=users)

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()
        cls.dc.close()
        cls.bad.close()

    def test_starttls_and_implicit_tls_verified(self):
        for u in ("st@example.com", "im@example.com"):
            line = raw_login(self.g.imap_port, u)
            self.assertTrue(line.startswith("a OK [CAPABILITY"), (u, line))
        log = open(self.dc.log).read()
        self.assertIn("user=<%s>" % USER, log)
        self.assertRegex(log, r"Login: user=<%s>.*TLS" % re.escape(USER))

    def test_wrong_name_refused(self):
        for u in ("wr@example.com", "ws@example.com"):
            mark = self.g.d.log_mark()
            line = raw_login(self.g.imap_port, u)
            self.assertTrue(line.startswith("a NO [UNAVAILABLE]"), (u, line))
            wait_until(lambda: "proxy: user=<%s>" % u in self.g.d.log_since(mark), 5,
                       what="the log line")
            self.assertRegex(self.g.d.log_since(mark), r"unavailable: TLS handshake failed: "
                             r"TLS: certificate not accepted")
        # never logged in to the backend in plaintext
        self.assertNotIn("Login: user=", open(self.bad.log).read())


class T06Down(unittest.TestCase):
    def test_backend_down_at_login(self):
        # a refused connect is tried again a second later,
        # mail_proxy_max_reconnects times (Dovecot's 3), then NO [UNAVAILABLE]
        port = free_port()
        g = Gateway("down", ["proxy=y", "host=127.0.0.1", "port=%d" % port])
        try:
            t0 = time.monotonic()
            line = raw_login(g.imap_port, USER)
            took = time.monotonic() - t0
            self.assertTrue(line.startswith("a NO [UNAVAILABLE]"), line)
            self.assertGreater(took, 2.9)
            self.assertLess(took, 6)
            self.assertRegex(g.d.log_text(), r"proxy: user=<%s> client=\[127\.0\.0\.1\] "
                             r"backend=127\.0\.0\.1:%d: unavailable: Connection refused "
                             r"\(after 3 reconnects\)" % (re.escape(USER), port))
        finally:
            g.stop()
        g = Gateway("down0", ["proxy=y", "host=127.0.0.1", "port=%d" % port],
                    mail_proxy_max_reconnects="0")
        try:
            t0 = time.monotonic()
            line = raw_login(g.imap_port, USER)
            self.assertTrue(line.startswith("a NO [UNAVAILABLE]"), line)
            self.assertLess(time.monotonic() - t0, 1)
            self.assertRegex(g.d.log_text(), r"unavailable: Connection refused \(\d+ ms\)")
        finally:
            g.stop()

    def test_client_gone_while_we_retry(self):
        # the client leaves between two tries: the timer goes with the
        # session (ASan: nothing touched after it is freed), the door serves on
        port = free_port()
        g = Gateway("gone", ["proxy=y", "host=127.0.0.1", "port=%d" % port])
        try:
            for wait in (0.3, 1.2):
                s = socket.create_connection(("127.0.0.1", g.imap_port), 10)
                s.recv(4096)
                s.sendall(b'a LOGIN "%s" "%s"\r\n' % (USER.encode(), PASSWORD.encode()))
                time.sleep(wait)
                rst(s)
            time.sleep(2)
            line = raw_login(g.imap_port, LOCAL)
            self.assertTrue(line.startswith("a OK"), line)
            self.assertEqual(g.d.sanitizer_lines(), [])
        finally:
            g.stop()

    def test_backend_back_while_we_retry(self):
        # the backend (re)starting: its port refuses, then listens; the
        # login goes through on a reconnect, IMAP and POP3 alike
        port, port3 = free_port(), free_port()
        g = Gateway("back", users={
            USER: ["proxy=y", "host=127.0.0.1", "port=%d" % port],
            "p3@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % port3]})
        got, bs = {}, []

        def login():
            got["imap"] = raw_login(g.imap_port, USER)

        def login3():
            got["pop3"] = pop3_login(g.pop3_port, "p3@example.com")
        try:
            ts = [threading.Thread(target=f) for f in (login, login3)]
            for t in ts:
                t.start()
            time.sleep(1.5)
            bs = [FakeBackend("imap", port=port), FakeBackend("pop3", port=port3)]
            for t in ts:
                t.join(10)
            self.assertTrue(got["imap"].startswith("a OK [CAPABILITY IMAP4rev1 IDLE]"), got)
            self.assertTrue(got["pop3"].startswith(b"+OK"), got)
            self.assertEqual([b.logins for b in bs], [1, 1])
            self.assertEqual(len(re.findall(r"proxy: user=<\S+> client=\S+ backend=\S+: logged in",
                                            g.d.log_text())), 2)
        finally:
            g.stop()
            for b in bs:
                b.close()

    def test_backend_stopped_mid_session(self):
        dc = backend("dc-stop", None)
        g = Gateway("stop", ["proxy=y", "host=127.0.0.1", "port=%d" % dc.imap_port])
        try:
            c = g.login()
            self.assertEqual(c.select("INBOX")[0], "OK")
            # Dovecot's imap processes outlive its master: end them all
            pids = dc.pids()
            dc.stop()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            with self.assertRaises((imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError)):
                for _ in range(5):
                    c.noop()
                    time.sleep(0.3)
            wait_until(lambda: "the backend closed the session" in g.d.log_text(), 5,
                       what="the log line")
            # and the door still serves others
            line = raw_login(g.imap_port, LOCAL)
            self.assertTrue(line.startswith("a OK"), line)
        finally:
            g.stop()
            dc.close()


class T07Guard(unittest.TestCase):
    def test_kill_list_and_penalty(self):
        dc = backend("dc-guard", None)
        g = Gateway("guard", ["proxy=y", "host=127.0.0.1", "port=%d" % dc.imap_port],
                    auth_failure_delay="1s", auth_failure_delay_max="1s",
                    auth_failure_ban="3/10m", auth_failure_ban_time="1h")
        try:
            c = g.imap(source=OUTSIDE)
            t0 = time.monotonic()
            with self.assertRaisesRegex(imaplib.IMAP4.error, r"AUTHENTICATIONFAILED"):
                c.login(USER, "guess-1")
            self.assertGreaterEqual(time.monotonic() - t0, 0.9, "no penalty delay")
            for i in (2, 3):
                try:
                    c.login(USER, "guess-%d" % i)
                except (imaplib.IMAP4.error, imaplib.IMAP4.abort, OSError):
                    pass
            wait_until(lambda: OUTSIDE in g.d.cli("kill", "list").stdout, 10,
                       what="the auth-ban on the kill list")
            wait_until(lambda: "lists reloaded" in g.d.log_text(), 10, what="the lists reload")
            time.sleep(0.5)
            with self.assertRaisesRegex(imaplib.IMAP4.error, r"BYE.*kill list"):
                g.imap(source=OUTSIDE)
            # the guesses never reached the backend
            self.assertNotIn("auth failed", open(dc.log).read())
            self.assertNotIn("rip=%s" % OUTSIDE, open(dc.log).read())
            c = g.login()   # the right password from elsewhere is proxied
            self.assertEqual(c.select("INBOX")[0], "OK")
            c.logout()
        finally:
            g.stop()
            dc.close()


class T09Master(unittest.TestCase):
    def test_cram_md5_through_the_master_user(self):
        dc = backend("dc-master", None)
        pwfile = os.path.join(W.dir, "master-password")
        with open(pwfile, "w") as f:
            f.write(MASTER_PW + "\n")
        g = Gateway("master", ["proxy=y", "host=127.0.0.1", "port=%d" % dc.imap_port],
                    mail_proxy_master_user=MASTER, mail_proxy_master_password_file=pwfile)
        try:
            c = g.imap()
            self.assertEqual(c.login_cram_md5(USER, PASSWORD)[0], "OK")
            self.assertEqual(c.select("INBOX")[0], "OK")
            c.logout()
            wait_until(lambda: re.search(r"Login: user=<%s>" % re.escape(USER),
                                         open(dc.log).read()), 10, what="the master login")
            # a wrong CRAM-MD5 answer never reaches the backend
            c = g.imap()
            with self.assertRaisesRegex(imaplib.IMAP4.error, r"AUTHENTICATIONFAILED"):
                c.login_cram_md5(USER, "wrong")
            c.logout()
            self.assertEqual(len(re.findall(r"Login: user=", open(dc.log).read())), 1)
        finally:
            g.stop()
            dc.close()

    def test_scram_through_the_master_user(self):
        from test_imap import scram_auth
        dc = backend("dc-scram", None)
        pwfile = os.path.join(W.dir, "master-password-2")
        with open(pwfile, "w") as f:
            f.write(MASTER_PW + "\n")
        g = Gateway("scram", ["proxy=y", "host=127.0.0.1", "port=%d" % dc.imap_port],
                    mail_proxy_master_user=MASTER, mail_proxy_master_password_file=pwfile)
        try:
            c = g.imap()
            cb, st = scram_auth(USER, PASSWORD)
            typ, _ = c.authenticate("SCRAM-SHA-256", cb)
            self.assertEqual(typ, "OK")
            self.assertTrue(st.ok, "the server's SCRAM signature did not check out")
            self.assertEqual(c.select("INBOX")[0], "OK")
            c.logout()
            wait_until(lambda: re.search(r"Login: user=<%s>" % re.escape(USER),
                                         open(dc.log).read()), 10, what="the master login")
            # the backend gone: the tagged NO [UNAVAILABLE], then the connection closes
            pids = dc.pids()
            dc.stop()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            c = g.imap()
            cb, st = scram_auth(USER, PASSWORD)
            with self.assertRaises((imaplib.IMAP4.error, imaplib.IMAP4.abort)):
                c.authenticate("SCRAM-SHA-256", cb)
        finally:
            g.stop()
            dc.close()

    def test_pop3_scram_through_the_master_user(self):
        import base64
        from test_imap import scram_auth
        dc = backend("dc-pscram", None, protocols=("imap", "pop3"))
        pwfile = os.path.join(W.dir, "master-password-3")
        with open(pwfile, "w") as f:
            f.write(MASTER_PW + "\n")
        g = Gateway("pscram", ["proxy=y", "host=127.0.0.1", "port=%d" % dc.pop3_port],
                    mail_proxy_master_user=MASTER, mail_proxy_master_password_file=pwfile)
        try:
            s = socket.create_connection(("127.0.0.1", g.pop3_port), 15)
            f = s.makefile("rb")
            self.assertTrue(f.readline().startswith(b"+OK"))
            cb, st = scram_auth(USER, PASSWORD)
            s.sendall(b"AUTH SCRAM-SHA-256\r\n")
            while True:
                line = f.readline()
                if not line.startswith(b"+ ") and line.strip() != b"+":
                    break
                chal = base64.b64decode(line[2:].strip()) if len(line) > 3 else b""
                s.sendall(base64.b64encode(cb(chal)) + b"\r\n")
            self.assertTrue(line.startswith(b"+OK"), line)
            self.assertTrue(st.ok, "the server's SCRAM signature did not check out")
            s.sendall(b"STAT\r\n")
            self.assertTrue(f.readline().startswith(b"+OK 0 "))
            s.sendall(b"QUIT\r\n")
            f.readline()
            s.close()
            wait_until(lambda: re.search(r"pop3-login: (Info: )?Login: user=<%s>" % re.escape(USER),
                                         open(dc.log).read()), 10, what="the master login")
        finally:
            g.stop()
            dc.close()

    # the master user's logins in Dovecot's log (auth_verbose: "Master user
    # logging in as USER"), and the logins its login processes saw
    VERBOSE = "auth_verbose = yes\n"

    def master_gateway(self, name, port, fields=(), **conf):
        pwfile = os.path.join(W.dir, name + "-master-password")
        with open(pwfile, "w") as f:
            f.write(MASTER_PW + "\n")
        return Gateway(name, ["proxy=y", "host=127.0.0.1", "port=%d" % port] + list(fields),
                       mail_proxy_master_user=MASTER, mail_proxy_master_password_file=pwfile,
                       **conf)

    def assert_master_logins(self, dc, door, n):
        """Dovecot's log: n logins of USER by the master user, on door"""
        def count():
            log = open(dc.log).read()
            return (len(re.findall(r"auth: .*Master user logging in as %s$" % re.escape(USER),
                                   log, re.M)),
                    len(re.findall(r"%s-login: (Info: )?Login: user=<%s>" %
                                   (door, re.escape(USER)), log)))
        wait_until(lambda: count() == (n, n), 10, what="%d master login(s) in Dovecot's log" % n)
        time.sleep(0.3)
        self.assertEqual(count(), (n, n), open(dc.log).read())

    def test_pop3_apop_through_the_master_user(self):
        dc = backend("dc-apop", None, protocols=("imap", "pop3"), extra=self.VERBOSE)
        put_message(dc, b"From: far@example.org\r\nSubject: apop\r\n\r\n"
                    b"only the backend has this\r\n", "1700000004.M1P1.backend")
        g = self.master_gateway("apop", dc.pop3_port, pop3_apop="yes")
        try:
            p = poplib.POP3("127.0.0.1", g.pop3_port, timeout=15)
            self.assertRegex(p.getwelcome(), rb"^\+OK .* <[^>]+@[^>]+>$")
            self.assertTrue(p.apop(USER, PASSWORD).startswith(b"+OK"))
            self.assertEqual(p.stat()[0], 1)
            self.assertIn(b"only the backend has this", p.retr(1)[1])
            self.assertTrue(p.quit().startswith(b"+OK"))
            self.assert_master_logins(dc, "pop3", 1)
            self.assertRegex(g.d.log_text(), r"pop3: conn=\S+ proxy: user=<%s> client=\[127\."
                             r"0\.0\.1\] backend=127\.0\.0\.1:%d: logged in" % (
                                 re.escape(USER), dc.pop3_port))
            # a wrong digest never reaches the backend
            p = poplib.POP3("127.0.0.1", g.pop3_port, timeout=15)
            with self.assertRaisesRegex(poplib.error_proto, r"-ERR \[AUTH\]"):
                p.apop(USER, "wrong")
            p.quit()
            self.assert_master_logins(dc, "pop3", 1)
            self.assertNotIn("auth failed", open(dc.log).read())
        finally:
            g.stop()
            dc.close()

    def test_pop3_cram_md5_through_the_master_user(self):
        if not GSASL:
            self.skipTest("gsasl is not installed")
        dc = backend("dc-pcram", None, protocols=("imap", "pop3"), extra=self.VERBOSE)
        put_message(dc, b"From: far@example.org\r\nSubject: cram\r\n\r\nbackend\r\n",
                    "1700000005.M1P1.backend")
        g = self.master_gateway("pcram", dc.pop3_port)
        try:
            line, s, f, out = gsasl_pop3(g.pop3_port, "CRAM-MD5", PASSWORD)
            self.assertTrue(line.startswith(b"+OK"), (line, out))
            s.sendall(b"STAT\r\n")
            self.assertRegex(f.readline(), rb"^\+OK 1 \d+\r\n$")
            s.sendall(b"QUIT\r\n")
            self.assertTrue(f.readline().startswith(b"+OK"))
            s.close()
            self.assert_master_logins(dc, "pop3", 1)
            # a wrong password: -ERR [AUTH] from here, nothing at the backend
            line, s, f, out = gsasl_pop3(g.pop3_port, "CRAM-MD5", "wrong-" + PASSWORD)
            self.assertTrue(line.startswith(b"-ERR [AUTH]"), (line, out))
            s.close()
            self.assert_master_logins(dc, "pop3", 1)
        finally:
            g.stop()
            dc.close()

    def external_lab(self, name, proto):
        """a backend with a message, and a gateway with EXTERNAL on imaps
        and pop3s (tls_client_ca_file = the test CA) proxying USER to the
        backend's proto port; certificates: USER's, another user's, and one
        naming USER the CA never signed"""
        dc = backend("dc-" + name, None, protocols=("imap", "pop3"), extra=self.VERBOSE)
        put_message(dc, b"From: far@example.org\r\nSubject: ext\r\n\r\nbackend\r\n",
                    "1700000006.M1P1.backend")
        certs = {"user": W.cert(name + "-user", "email:" + USER),
                 "other": W.cert(name + "-other", "email:carol@example.com")}
        forged = tuple(os.path.join(W.dir, name + "-forged" + x) for x in (".crt", ".key"))
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                "/CN=" + USER, "-keyout", forged[1], "-out", forged[0])
        certs["forged"] = forged
        pop3s_port = free_port()
        g = self.master_gateway(name, dc.imap_port if proto == "imap" else dc.pop3_port,
                                tls_client_ca_file=W.ca, tls_verify_client="optional",
                                pop3s_listen="127.0.0.1:%d" % pop3s_port,
                                auth_mechanisms="PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256 EXTERNAL")
        g.pop3s_port = pop3s_port

        def ctx(who):
            c = ssl.create_default_context(cafile=W.ca)
            if who:
                c.load_cert_chain(*certs[who])
            return c
        return dc, g, ctx

    def test_imap_external_through_the_master_user(self):
        """AUTHENTICATE EXTERNAL on imaps with USER's client certificate: the
        backend's mailbox through the master user; another user's
        certificate, or none: refused here; one naming USER the CA never
        signed fails the handshake; the backend never asked"""
        dc, g, ctx = self.external_lab("iext", "imap")

        def imaps(who):
            return imaplib.IMAP4_SSL("127.0.0.1", g.imaps_port, ssl_context=ctx(who), timeout=15)
        try:
            c = imaps("user")
            self.assertIn(b"AUTH=EXTERNAL", c.welcome)
            typ, data = c.authenticate("EXTERNAL", lambda _: b"")
            self.assertEqual(typ, "OK", data)
            self.assertEqual(c.select("INBOX"), ("OK", [b"1"]))
            typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            self.assertIn(b"Subject: ext", data[0][1])
            c.logout()
            self.assert_master_logins(dc, "imap", 1)
            c = imaps("other")      # a user Portcullis does not know
            with self.assertRaisesRegex(imaplib.IMAP4.error, r"AUTHENTICATIONFAILED"):
                c.authenticate("EXTERNAL", lambda _: b"")
            c.logout()
            c = imaps(None)
            self.assertNotIn(b"AUTH=EXTERNAL", c.welcome)
            with self.assertRaises(imaplib.IMAP4.error):
                c.authenticate("EXTERNAL", lambda _: b"")
            c.logout()
            with self.assertRaises(OSError):    # the handshake fails: unknown CA
                imaps("forged")
            self.assert_master_logins(dc, "imap", 1)
            self.assertNotIn("auth failed", open(dc.log).read())
        finally:
            g.stop()
            dc.close()

    def test_pop3_external_through_the_master_user(self):
        """the same on pop3s: AUTH EXTERNAL (RFC 5034, the empty initial
        response "=") proxied through the master user; the others -ERR here"""
        dc, g, ctx = self.external_lab("pext", "pop3")

        def pop3s(who):
            return poplib.POP3_SSL("127.0.0.1", g.pop3s_port, context=ctx(who), timeout=15)
        try:
            p = pop3s("user")
            self.assertIn("EXTERNAL", p.capa().get("SASL", []))
            self.assertTrue(p._shortcmd("AUTH EXTERNAL =").startswith(b"+OK"))
            self.assertEqual(p.stat()[0], 1)
            self.assertIn(b"Subject: ext", b"\n".join(p.retr(1)[1]))
            self.assertTrue(p.quit().startswith(b"+OK"))
            self.assert_master_logins(dc, "pop3", 1)
            p = pop3s("other")
            with self.assertRaisesRegex(poplib.error_proto, r"-ERR \[AUTH\]"):
                p._shortcmd("AUTH EXTERNAL =")
            p.quit()
            p = pop3s(None)
            self.assertNotIn("EXTERNAL", p.capa().get("SASL", []))
            with self.assertRaises(poplib.error_proto):
                p._shortcmd("AUTH EXTERNAL =")
            p.quit()
            with self.assertRaises(OSError):
                pop3s("forged")
            self.assert_master_logins(dc, "pop3", 1)
            self.assertNotIn("auth failed", open(dc.log).read())
        finally:
            g.stop()
            dc.close()

    def test_gsasl_imap_scram_through_the_master_user(self):
        """GNU SASL's own SCRAM-SHA-256 client (gsasl --imap, which checks the
        server's signature) logs in through the proxy: the master login"""
        if not GSASL:
            self.skipTest("gsasl is not installed")
        dc = backend("dc-gscram", None, extra=self.VERBOSE)
        g = self.master_gateway("gscram", dc.imap_port)
        try:
            for pw, ok in ((PASSWORD, True), ("wrong-" + PASSWORD, False)):
                p = subprocess.run([GSASL, "--imap", "--connect", "127.0.0.1:%d" % g.imap_port,
                                    "-m", "SCRAM-SHA-256", "-a", USER, "-p", pw,
                                    "--hostname", "front.example.com", "--no-starttls",
                                    "--verbose"], stdin=subprocess.DEVNULL,
                                   capture_output=True, timeout=60)
                out = p.stdout + p.stderr
                if ok:
                    self.assertEqual(p.returncode, 0, out)
                    self.assertRegex(out, rb"\. OK ")
                else:
                    self.assertNotEqual(p.returncode, 0, out)
                    self.assertIn(b"AUTHENTICATIONFAILED", out)
                self.assert_master_logins(dc, "imap", 1)
        finally:
            g.stop()
            dc.close()

    def test_without_master_user_refused(self):
        dc = backend("dc-nomaster", None)
        g = Gateway("nomaster", ["proxy=y", "host=127.0.0.1", "port=%d" % dc.imap_port])
        try:
            c = g.imap()
            with self.assertRaisesRegex(imaplib.IMAP4.error, r"UNAVAILABLE"):
                c.login_cram_md5(USER, PASSWORD)
            self.assertIn("no password to forward", g.d.log_text())
        finally:
            g.stop()
            dc.close()


class T10BackendAuth(unittest.TestCase):
    def test_backend_decides_for_unknown_users_of_its_domains(self):
        far = "carol@far.example"
        dc = backend("dc-backend", None, protocols=("imap", "pop3"),
                     users={far: "{PLAIN}Far pass 2"})
        # one default for both doors, the POP3 door's port its own
        g = Gateway("backend", [], mail_proxy_auth="backend",
                    mail_proxy_default="127.0.0.1:%d" % dc.imap_port,
                    pop3_mail_proxy_default="127.0.0.1:%d" % dc.pop3_port,
                    mail_proxy_domains="far.example", auth_failure_delay="1s",
                    auth_failure_delay_max="1s")
        try:
            c = g.imap(source=CLIENT)
            self.assertEqual(c.login(far, "Far pass 2")[0], "OK")
            self.assertEqual(c.select("INBOX")[0], "OK")
            c.logout()
            wait_until(lambda: re.search(r"Login: user=<%s>.*rip=%s" % (re.escape(far), CLIENT),
                                         open(dc.log).read()), 10, what="Dovecot's login")
            # the backend's NO is a failed login here too: the penalty's delay
            c = g.imap()
            t0 = time.monotonic()
            with self.assertRaisesRegex(imaplib.IMAP4.error, r"AUTHENTICATIONFAILED"):
                c.login(far, "wrong")
            self.assertGreaterEqual(time.monotonic() - t0, 0.9, "no penalty delay")
            self.assertRegex(g.d.log_text(), r"proxy: user=<%s> .*refused by the backend" %
                             re.escape(far))
            # a domain not proxied: never asked
            with self.assertRaisesRegex(imaplib.IMAP4.error, r"AUTHENTICATIONFAILED"):
                c.login("dave@elsewhere.example", "x")
            self.assertNotIn("dave@", open(dc.log).read())
            c.logout()
            # POP3 the same way, to the port of pop3_mail_proxy_default
            p = poplib.POP3("127.0.0.1", g.pop3_port, timeout=15)
            p.user(far)
            self.assertTrue(p.pass_("Far pass 2").startswith(b"+OK"))
            self.assertEqual(p.stat()[0], 0)
            p.quit()
            self.assertRegex(g.d.log_text(), r"pop3: conn=\S+ proxy: user=<%s> .*backend=127\.0"
                             r"\.0\.1:%d: logged in" % (re.escape(far), dc.pop3_port))
            p = poplib.POP3("127.0.0.1", g.pop3_port, timeout=15)
            p.user(far)
            with self.assertRaisesRegex(poplib.error_proto, r"-ERR \[AUTH\]"):
                p.pass_("wrong")
            p.quit()
            # users of our own file are still checked here
            c = g.login(LOCAL)
            self.assertEqual(c.select("INBOX")[0], "OK")
            c.logout()
        finally:
            g.stop()
            dc.close()


class T11Clients(unittest.TestCase):
    """mbsync (IMAP, STARTTLS to Portcullis), mutt (imaps), fetchmail (POP3, STLS),
    poplib and curl (pop3s) through the proxy"""

    @classmethod
    def setUpClass(cls):
        cls.dc = backend("dc-clients", None, protocols=("imap", "pop3"))
        for i in range(3):
            put_message(cls.dc, b"From: far@example.org\r\nSubject: client %d\r\n\r\n"
                        b"body %d\r\n" % (i, i), "170000001%d.M%dP9.backend" % (i, i))
        cls.gi = Gateway("clients-imap", ["proxy=y", "host=127.0.0.1",
                                          "port=%d" % cls.dc.imap_port])
        cls.pops_port = free_port()
        cls.gp = Gateway("clients-pop3", ["proxy=y", "host=127.0.0.1",
                                          "port=%d" % cls.dc.pop3_port],
                         pop3s_listen="127.0.0.1:%d" % cls.pops_port)

    @classmethod
    def tearDownClass(cls):
        cls.gi.stop()
        cls.gp.stop()
        cls.dc.close()

    def assert_proxied(self, g, door):
        self.assertRegex(g.d.log_text(), r"%s: conn=\S+ proxy: user=<%s> client=\[127\.0\.0\.1\] "
                         r"backend=127\.0\.0\.1:\d+: logged in" % (door, re.escape(USER)))

    @unittest.skipUnless(shutil.which("mutt") and shutil.which("script"),
                         "mutt (or script) is not installed")
    def test_mutt_reads_through_the_proxy(self):
        # mutt in batch mode (under script(1) for a terminal), over imaps
        d = self.gi.d
        out, rc, certs = d.path("mutt.out"), d.path("muttrc"), d.path("mutt-certs")
        with open(certs, "w") as f:
            f.write(open(W.front[0]).read() + open(W.ca).read())
        with open(rc, "w") as f:
            f.write('set folder="imaps://%s@127.0.0.1:%d/" spoolfile="+INBOX"\n'
                    'set imap_pass="%s" certificate_file="%s" ssl_verify_host=no\n'
                    'set header_cache="" message_cachedir="" wait_key=no pipe_split=no\n'
                    'set imap_authenticators="plain:login"\n'
                    % (USER, self.gi.imaps_port, PASSWORD, certs))
        keys = ("<tag-pattern>~A<enter><tag-prefix><pipe-message>grep Subject: > %s"
                "<enter><quit>" % out)
        cmd = "TERM=xterm %s -n -F %s -e 'push \"%s\"'" % (shutil.which("mutt"), rc, keys)
        p = subprocess.run([shutil.which("script"), "-qec", cmd, "/dev/null"],
                           capture_output=True, timeout=60, env=dict(os.environ, HOME=d.dir))
        self.assertEqual(p.returncode, 0, p.stdout[-2000:])
        with open(out) as f:
            got = sorted(line.strip() for line in f)
        self.assertEqual(got, ["Subject: client %d" % i for i in range(3)])
        self.assert_proxied(self.gi, "imap")

    def test_pop3s_poplib(self):
        ctx = ssl.create_default_context(cafile=W.ca)
        p = poplib.POP3_SSL("127.0.0.1", self.pops_port, context=ctx, timeout=15)
        p.user(USER)
        self.assertTrue(p.pass_(PASSWORD).startswith(b"+OK"))
        self.assertEqual(p.stat()[0], 3)
        got = b"\n".join(p.retr(2)[1])
        self.assertRegex(got, rb"Subject: client \d")
        self.assertTrue(p.quit().startswith(b"+OK"))
        self.assert_proxied(self.gp, "pop3")

    @unittest.skipUnless(shutil.which("curl"), "curl is not installed")
    def test_pop3s_curl(self):
        base = "pop3s://127.0.0.1:%d/" % self.pops_port
        args = ["curl", "-sS", "--max-time", "30", "--cacert", W.ca, "--login-options",
                "AUTH=PLAIN", "--user", "%s:%s" % (USER, PASSWORD)]
        r = subprocess.run(args + [base], capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(r.stdout.split(b"\r\n")) - 1, 3, r.stdout)     # the LIST
        r = subprocess.run(args + [base + "3"], capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, rb"Subject: client \d\r\n\r\nbody \d\r\n")
        self.assert_proxied(self.gp, "pop3")

    @unittest.skipUnless(shutil.which("mbsync"), "isync (mbsync) is not installed")
    def test_mbsync_pull(self):
        # AuthMechs LOGIN (the IMAP LOGIN command): mbsync's SASL PLAIN needs
        # libsasl2-modules, which a bare Debian does not have (CI)
        local = os.path.join(self.gi.d.dir, "mbsync")
        os.makedirs(local)
        rc = os.path.join(local, "rc")
        with open(rc, "w") as f:
            f.write("IMAPAccount pc\nHost localhost\nPort %d\nUser %s\nPass \"%s\"\n"
                    "SSLType STARTTLS\nCertificateFile %s\nAuthMechs LOGIN\n\n"
                    "IMAPStore remote\nAccount pc\n\nMaildirStore near\nPath %s/\n"
                    "Inbox %s/INBOX\n\nChannel pc\nFar :remote:\nNear :near:\n"
                    "Patterns INBOX\nSync Pull\nCreate Near\nSyncState *\n"
                    % (self.gi.imap_port, USER, PASSWORD, W.ca, local, local))
        p = subprocess.run(["mbsync", "-c", rc, "pc"], capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        got = []
        for d in ("new", "cur"):
            dd = os.path.join(local, "INBOX", d)
            for n in os.listdir(dd):
                with open(os.path.join(dd, n), "rb") as f:
                    got.append(f.read())
        self.assertEqual(len(got), 3)
        self.assertTrue(any(b"Subject: client 2" in m for m in got))

    @unittest.skipUnless(os.access("/usr/bin/fetchmail", os.X_OK), "fetchmail not installed")
    def test_fetchmail_keep(self):
        tmp = tempfile.mkdtemp(prefix="pc-fetchmail.", dir=self.gp.d.dir)
        rc = os.path.join(tmp, "fetchmailrc")
        out = os.path.join(tmp, "mbox")
        with open(rc, "w") as f:
            f.write('poll 127.0.0.1 service %d protocol pop3 uidl\n'
                    '  user "%s" there with password "%s" is "%s" here keep\n'
                    '  sslproto "tls1.2+" no sslcertck\n'
                    '  mda "/bin/sh -c \'cat >> %s\'"\n' % (self.gp.pop3_port, USER, PASSWORD,
                                                           os.environ.get("USER", "root"), out))
        os.chmod(rc, 0o600)
        env = dict(os.environ, HOME=tmp, FETCHMAILHOME=tmp)
        r = subprocess.run(["fetchmail", "-f", rc, "--nodetach", "--nosyslog", "-v"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout.decode(errors="replace")[-2000:])
        with open(out, "rb") as f:
            got = f.read()
        for i in range(3):
            self.assertIn(b"Subject: client %d" % i, got)


class SrcPOP3(poplib.POP3):
    def __init__(self, host, port, source="127.0.0.1", timeout=15):
        self.source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))


class T08Pop3(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dc = backend("dc-pop3", W.good, protocols=("imap", "pop3"))
        put_message(cls.dc, b"From: far@example.org\r\nSubject: pop me\r\n\r\n"
                    b"only the backend has this\r\n", "1700000002.M3P3.backend")
        down = free_port()
        users = {
            USER: ["proxy=y", "host=127.0.0.1", "port=%d" % cls.dc.pop3_port],
            "st@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % cls.dc.pop3_port,
                               "tls=starttls", "destuser=" + USER],
            "im@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % cls.dc.pop3s_port,
                               "tls=yes", "destuser=" + USER],
            "dn@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % down],
        }
        cls.g = Gateway("pop3", users=users)

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()
        cls.dc.close()

    def test_user_pass_retr_and_client_address(self):
        p = SrcPOP3("127.0.0.1", self.g.pop3_port, source=CLIENT)
        p.user(USER)
        self.assertTrue(p.pass_(PASSWORD).startswith(b"+OK"))
        self.assertEqual(p.stat()[0], 1)
        resp, lines, _ = p.retr(1)
        self.assertIn(b"only the backend has this", lines)
        self.assertTrue(p.quit().startswith(b"+OK"))
        wait_until(lambda: re.search(r"pop3-login: (Info: )?Login: user=<%s>.*rip=%s" % (
            re.escape(USER), CLIENT), open(self.dc.log).read()), 10,
            what="the client's address (XCLIENT) in Dovecot's log")
        self.assertRegex(self.g.d.log_text(), r"pop3: conn=\S+ proxy: user=<%s> client=\[%s\] "
                         r"backend=127\.0\.0\.1:%d: logged in" % (re.escape(USER), CLIENT,
                                                                    self.dc.pop3_port))

    def test_tls_to_backend(self):
        for u in ("st@example.com", "im@example.com"):
            p = poplib.POP3("127.0.0.1", self.g.pop3_port, timeout=15)
            p.user(u)
            self.assertTrue(p.pass_(PASSWORD).startswith(b"+OK"), u)
            self.assertEqual(p.stat()[0], 1)
            p.quit()

    def test_backend_down(self):
        p = poplib.POP3("127.0.0.1", self.g.pop3_port, timeout=15)
        p.user("dn@example.com")
        with self.assertRaisesRegex(poplib.error_proto, r"-ERR \[SYS/TEMP\]"):
            p.pass_(PASSWORD)
        p.quit()
        self.assertRegex(self.g.d.log_text(), r"pop3: conn=\S+ proxy: user=<dn@example.com> "
                         r"client=\[127\.0\.0\.1\] backend=127\.0\.0\.1:\d+: unavailable")


def _v6():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


V6 = _v6()


class FakeBackend:
    """A scripted IMAP or POP3 backend: accepts any login after login_delay
    seconds; after it, a command line holding BIG gets big bytes back (then
    the connection is closed when the line also holds CLOSE)."""

    def __init__(self, proto="imap", login_delay=0.0, big=8 * 1024 * 1024, cert=None,
                 bare=False, inject=b"", refuse=False, host="127.0.0.1", port=0):
        self.proto, self.login_delay, self.big = proto, login_delay, big
        self.bare = bare    # IMAP: "* OK" and "L OK", nothing after the status
        self.inject = inject    # sent in plaintext right behind the STARTTLS answer
        self.refuse = refuse    # every login refused, as for a password out of step
        self.tls = None
        if cert:    # STARTTLS / STLS offered with this certificate
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(*cert)
        self.ls = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind((host, port))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.logins = 0
        self.lines = []     # every line the proxy sent, all connections
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        imap = self.proto == "imap"
        try:
            f = s.makefile("rb")
            s.sendall((b"* OK\r\n" if self.bare else
                       b"* OK [CAPABILITY IMAP4rev1 SASL-IR STARTTLS AUTH=PLAIN] fake\r\n")
                      if imap else b"+OK fake\r\n")
            while True:
                line = f.readline()
                if not line:
                    return
                self.lines.append(line)
                words = line.split()
                verb = words[1].upper() if imap and len(words) > 1 else \
                    (words[0].upper() if words else b"")
                if verb in (b"STARTTLS", b"STLS") and self.tls:
                    s.sendall((b"S OK go\r\n" if imap else b"+OK go\r\n") + self.inject)
                    s = self.tls.wrap_socket(s, server_side=True)
                    f = s.makefile("rb")
                elif imap and verb in (b"AUTHENTICATE", b"LOGIN") or not imap and verb == b"PASS":
                    time.sleep(self.login_delay)
                    if self.refuse:
                        s.sendall(b"L NO [AUTHENTICATIONFAILED] no\r\n" if imap else
                                  b"-ERR [AUTH] no\r\n")
                        continue
                    self.logins += 1
                    s.sendall((b"L OK\r\n" if self.bare else
                               b"L OK [CAPABILITY IMAP4rev1 IDLE] in\r\n")
                              if imap else b"+OK in\r\n")
                elif imap and verb == b"CAPABILITY":
                    s.sendall(b"* CAPABILITY IMAP4rev1 IDLE BARE\r\n" + words[0] + b" OK done\r\n")
                elif b"BIG" in line:
                    sent = 0
                    while sent < self.big:
                        s.sendall(stream_chunk(sent))
                        sent += 64000
                    if b"CLOSE" in line:
                        if self.tls:
                            s.settimeout(10)
                            try:
                                s = s.unwrap()  # close_notify: read in-band by the proxy
                            except (OSError, ValueError):
                                pass
                        s.shutdown(socket.SHUT_WR)
                        return
                elif imap:
                    s.sendall(b"* ID NIL\r\n" + words[0] + b" OK done\r\n")
                else:
                    s.sendall(b"+OK\r\n")
        except OSError:
            pass
        finally:
            s.close()

    def close(self):
        self.closed = True
        self.ls.close()


BIG_SENT = (8 * 1024 * 1024 + 63999) // 64000 * 64000     # FakeBackend's stream, whole chunks


def stream_chunk(at):
    """64000 bytes of FakeBackend's stream from offset at: numbered lines"""
    return b"".join(b"%078d\r\n" % (at // 80 + i) for i in range(800))


def read_all(f):
    out = bytearray()
    while True:
        b = f.read1(65536)
        if not b:
            return bytes(out)
        out += b


def rst(s):
    """close with a reset: the next write on the other end fails at once"""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


class T12Robust(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.slow = FakeBackend("imap", login_delay=0.5)
        cls.slow3 = FakeBackend("pop3", login_delay=0.5)
        cls.fast = FakeBackend("imap")
        cls.stls = FakeBackend("imap", cert=W.good)
        cls.stls3 = FakeBackend("pop3", cert=W.good)
        cls.bare = FakeBackend("imap", bare=True)
        cls.fast3 = FakeBackend("pop3")
        cls.inj = FakeBackend("imap", cert=W.good, inject=b"* OK [CAPABILITY IMAP4rev1 X] in\r\n")
        cls.inj3 = FakeBackend("pop3", cert=W.good, inject=b"+OK in\r\n")
        cls.ref = FakeBackend("imap", refuse=True)
        cls.ref3 = FakeBackend("pop3", refuse=True)
        cls.v6 = cls.v63 = None
        if V6:
            cls.v6, cls.v63 = FakeBackend("imap", host="::1"), FakeBackend("pop3", host="::1")
        cls.pops_port = free_port()
        users = {
            "slow@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % cls.slow.port],
            "slow3@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % cls.slow3.port],
            USER: ["proxy=y", "host=127.0.0.1", "port=%d" % cls.fast.port],
            "st@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % cls.stls.port,
                               "tls=starttls"],
            "st3@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % cls.stls3.port,
                                "tls=starttls"],
            "bare@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % cls.bare.port],
            "inj@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % cls.inj.port,
                                "tls=starttls"],
            "inj3@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % cls.inj3.port,
                                 "tls=starttls"],
            "ref@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % cls.ref.port],
            "ref3@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % cls.ref3.port],
        }
        if V6:
            users["v6@example.com"] = ["proxy=y", "host=::1", "port=%d" % cls.v6.port]
            users["v63@example.com"] = ["proxy=y", "host=::1", "port=%d" % cls.v63.port]
        cls.g = Gateway("robust", users=users, pop3s_listen="127.0.0.1:%d" % cls.pops_port,
                        mail_proxy_auth="backend", mail_proxy_domains="fake.example",
                        imap_mail_proxy_default="127.0.0.1:%d" % cls.fast.port,
                        pop3_mail_proxy_default="127.0.0.1:%d" % cls.fast3.port)
        cls.ctx = ssl.create_default_context(cafile=W.ca)

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()    # asserts: no sanitizer report, a clean exit
        for b in (cls.slow, cls.slow3, cls.fast, cls.stls, cls.stls3, cls.bare, cls.fast3,
                  cls.inj, cls.inj3, cls.ref, cls.ref3, cls.v6, cls.v63):
            if b is not None:
                b.close()

    def tls(self, port):
        s = self.ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), 10),
                                 server_hostname="127.0.0.1")
        return s, s

    def logged_in(self, over_tls, timeout):
        """USER logged in through the proxy, imaps or plaintext: (raw
        socket, the one to talk on, its reader)"""
        if over_tls:
            raw, s = self.tls(self.g.imaps_port)
        else:
            raw = s = socket.create_connection(("127.0.0.1", self.g.imap_port), 10)
        s.settimeout(timeout)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b'a LOGIN "%s" "%s"\r\n' % (USER.encode(), PASSWORD.encode()))
        self.assertTrue(f.readline().startswith(b"a OK"))
        return raw, s, f

    def assert_serving(self):
        self.assertTrue(self.g.d.alive())
        self.assertEqual(self.g.d.sanitizer_lines(), [])
        line = raw_login(self.g.imap_port, LOCAL)
        self.assertTrue(line.startswith("a OK"), line)

    def test_bare_status_lines(self):
        # "* OK" and "L OK" with nothing after them: nothing read past the
        # line (ASan), the CAPABILITY asked for and passed on
        line = raw_login(self.g.imap_port, "bare@example.com")
        self.assertTrue(line.startswith("a OK [CAPABILITY IMAP4rev1 IDLE BARE]"), line)
        self.assert_serving()

    def test_bytes_behind_the_starttls_answer_refused(self):
        # plaintext behind the backend's STARTTLS answer (injected by anyone
        # on the path) is never taken as the start of TLS or as the
        # backend's words: the login stops there, and the log says why
        line = raw_login(self.g.imap_port, "inj@example.com")
        self.assertTrue(line.startswith("a NO [UNAVAILABLE]"), line)
        line = pop3_login(self.g.pop3_port, "inj3@example.com")
        self.assertTrue(line.startswith(b"-ERR [SYS/TEMP]"), line)
        self.assertEqual((self.inj.logins, self.inj3.logins), (0, 0))
        log = self.g.d.log_text()
        for u in ("inj", "inj3"):
            self.assertRegex(log, r"user=<%s@example\.com> .*unavailable: the backend sent more "
                             r"behind its STARTTLS answer" % u)
        self.assert_serving()

    @unittest.skipUnless(V6, "no IPv6 loopback here")
    def test_ipv6_backend(self):
        # host=::1: connected over IPv6, named [::1]:PORT in the log line
        line = raw_login(self.g.imap_port, "v6@example.com")
        self.assertTrue(line.startswith("a OK [CAPABILITY IMAP4rev1 IDLE]"), line)
        line = pop3_login(self.g.pop3_port, "v63@example.com")
        self.assertTrue(line.startswith(b"+OK"), line)
        self.assertEqual((self.v6.logins, self.v63.logins), (1, 1))
        log = self.g.d.log_text()
        self.assertRegex(log, r"user=<v6@example\.com> client=\[127\.0\.0\.1\] "
                         r"backend=\[::1\]:%d: logged in" % self.v6.port)
        self.assertRegex(log, r"user=<v63@example\.com> .*backend=\[::1\]:%d: logged in" %
                         self.v63.port)

    def test_backend_refuses_what_we_accepted(self):
        # mail_proxy_auth = local, the backend's password out of step with
        # ours: the client is refused as for a wrong password (not told to
        # come back later), and the log names the backend's verdict
        line = raw_login(self.g.imap_port, "ref@example.com")
        self.assertTrue(line.startswith("a NO [AUTHENTICATIONFAILED]"), line)
        line = pop3_login(self.g.pop3_port, "ref3@example.com")
        self.assertTrue(line.startswith(b"-ERR [AUTH]"), line)
        log = self.g.d.log_text()
        for u in ("ref", "ref3"):
            self.assertRegex(log, r"proxy: user=<%s@example\.com> .*: refused" % u)
        self.assert_serving()

    def test_no_line_breaks_smuggled_into_the_backend(self):
        # mail_proxy_auth = backend forwards the client's PLAIN credentials
        # to a backend Portcullis did not check them against: a password
        # holding CR LF would be a second command in the backend's POP3
        # session (USER/PASS go as they are); refused before it connects
        import base64
        evil = base64.b64encode(b"\0x@fake.example\0pw\r\nDELE 1")
        good = base64.b64encode(b"\0x@fake.example\0pw")
        n3, n = self.fast3.logins, self.fast.logins
        self.assertTrue(raw_lines(self.g.pop3_port, b"AUTH PLAIN " + evil)[0].startswith(b"-ERR"))
        self.assertTrue(raw_lines(self.g.imap_port,
                                  b"a AUTHENTICATE PLAIN " + evil)[0].startswith(b"a NO"))
        self.assertEqual((self.fast3.logins, self.fast.logins), (n3, n))
        # the same login without them goes through, on both doors
        self.assertTrue(raw_lines(self.g.pop3_port, b"AUTH PLAIN " + good)[0].startswith(b"+OK"))
        self.assertTrue(raw_lines(self.g.imap_port,
                                  b"a AUTHENTICATE PLAIN " + good)[0].startswith(b"a OK"))
        self.assertEqual((self.fast3.logins, self.fast.logins), (n3 + 1, n + 1))
        self.assert_serving()

    def test_tls_client_gone_during_backend_login(self):
        # the tagged OK after the backend's login fails on the spot (TLS):
        # the door's end of the connection must not free the session under it
        n = self.slow.logins
        raw, s = self.tls(self.g.imaps_port)
        s.recv(4096)
        s.sendall(b'a LOGIN "slow@example.com" "%s"\r\n' % PASSWORD.encode())
        time.sleep(0.2)         # the backend is still logging in
        rst(raw)
        wait_until(lambda: self.slow.logins > n, 5, what="the backend's login")
        time.sleep(0.3)
        self.assert_serving()

    def test_pop3s_client_gone_during_backend_login(self):
        n = self.slow3.logins
        raw, s = self.tls(self.pops_port)
        s.recv(4096)
        s.sendall(b"USER slow3@example.com\r\n")
        s.recv(4096)
        s.sendall(b"PASS %s\r\n" % PASSWORD.encode())
        time.sleep(0.2)
        rst(raw)
        wait_until(lambda: self.slow3.logins > n, 5, what="the backend's login")
        time.sleep(0.3)
        self.assert_serving()

    def test_client_gone_while_backend_streams(self):
        for over_tls in (False, True):
            raw, s, f = self.logged_in(over_tls, 10)
            s.sendall(b"b BIG\r\n")
            got = 0
            while got < 1024 * 1024:
                got += len(f.read1(65536))
            rst(raw)
            time.sleep(0.3)
            self.assert_serving()

    def test_backend_closes_while_client_output_full(self):
        for over_tls in (False, True):
            raw, s, f = self.logged_in(over_tls, 20)
            s.sendall(b"b BIG CLOSE\r\n")
            time.sleep(1.5)     # we read nothing: the backend has closed behind a full client
            got = read_all(f)
            self.assertEqual(len(got), BIG_SENT)
            self.assertTrue(got == b"".join(stream_chunk(i) for i in range(0, BIG_SENT, 64000)),
                            "the stream arrived altered or out of order")
            s.close()
        self.assert_serving()

    def test_slow_reader_gets_the_stream_then_the_reply(self):
        # backpressure both ways on the way: the stream, whole and in order,
        # then the next command's answer (plaintext: the splice(2) path)
        for over_tls in (False, True):
            raw, s, f = self.logged_in(over_tls, 20)
            s.sendall(b"b BIG\r\nc NOOP\r\n")
            time.sleep(1)
            got = bytearray()
            while len(got) < BIG_SENT:
                got += f.read1(min(65536, BIG_SENT - len(got)))
                if len(got) < 2 * 1024 * 1024:
                    time.sleep(0.01)    # slowly at first
            self.assertTrue(bytes(got) == b"".join(stream_chunk(i) for i in range(0, BIG_SENT,
                                                                                  64000)))
            self.assertEqual(f.readline(), b"* ID NIL\r\n")
            self.assertEqual(f.readline(), b"c OK done\r\n")
            s.close()

    def test_busy_session_not_timed_out(self):
        # the door's idle timeout over the splice: a session busy past
        # pop3_timeout stays, one silent past it is closed with the door's words
        g = Gateway("busy", users={"f3@example.com": ["proxy=y", "host=127.0.0.1",
                                                      "port=%d" % self.fast3.port]},
                    pop3_timeout="2")
        try:
            s = socket.create_connection(("127.0.0.1", g.pop3_port), 10)
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"USER f3@example.com\r\nPASS %s\r\n" % PASSWORD.encode())
            self.assertTrue(f.readline().startswith(b"+OK"))
            self.assertTrue(f.readline().startswith(b"+OK"))
            for i in range(6):
                time.sleep(0.8)
                s.sendall(b"NOOP\r\n")
                self.assertEqual(f.readline(), b"+OK\r\n", "command %d" % i)
            s.settimeout(10)
            t0 = time.monotonic()
            self.assertEqual(f.read(), b"-ERR Disconnected for inactivity.\r\n",
                             "closed when silent")
            self.assertLess(time.monotonic() - t0, 5)
            s.close()
        finally:
            g.stop()

    def test_starttls_backend_closes_after_a_stream(self):
        # the backend's close_notify is read in-band by the TLS filter, which
        # may read on the spot when we drain its input or enable its reading:
        # the close then comes in the middle of our own loop
        for _ in range(6):
            for proto in ("imap", "pop3"):
                if proto == "imap":
                    s = socket.create_connection(("127.0.0.1", self.g.imap_port), 10)
                    f = s.makefile("rb")
                    f.readline()
                    s.sendall(b'a LOGIN "st@example.com" "%s"\r\n' % PASSWORD.encode())
                else:
                    s = socket.create_connection(("127.0.0.1", self.g.pop3_port), 10)
                    f = s.makefile("rb")
                    f.readline()
                    s.sendall(b"USER st3@example.com\r\nPASS %s\r\n" % PASSWORD.encode())
                    self.assertTrue(f.readline().startswith(b"+OK"))
                s.settimeout(20)
                self.assertTrue(f.readline()[:4] in (b"a OK", b"+OK "))
                s.sendall(b"b BIG CLOSE\r\n")
                self.assertEqual(len(read_all(f)), BIG_SENT, proto)
                s.close()
        self.assert_serving()


DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


@unittest.skipUnless(os.access(DNSMASQ, os.X_OK), "dnsmasq is not installed")
class T13Names(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from test_smtp_dns import dns_answers
        cls.dc = backend("dc-names", W.wrong, protocols=("imap", "pop3"))
        # as test_smtp_dns: answering before the daemon asks; a port taken
        # between free_port() and dnsmasq's bind: another one
        for _ in range(3):
            cls.dns_port = free_port(kind=socket.SOCK_DGRAM)
            cls.dns = subprocess.Popen(
                [DNSMASQ, "--keep-in-foreground", "--port=%d" % cls.dns_port,
                 "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                 "--no-hosts", "--no-poll", "--pid-file=", "--user=root",
                 "--host-record=mx.good.test,127.0.0.1",     # what dns_answers asks
                 "--host-record=backend.test,127.0.0.1",
                 "--host-record=backend.invalid,127.0.0.1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if dns_answers(cls.dns_port, dns=cls.dns):
                break
            cls.dns.kill()
            cls.dns.wait(5)
        else:
            cls.dc.close()
            raise AssertionError("dnsmasq does not answer (3 ports tried)")
        dc = cls.dc
        users = {
            "nm@example.com": ["proxy=y", "host=backend.test", "port=%d" % dc.imap_port,
                               "destuser=" + USER],
            "nt@example.com": ["proxy=y", "host=backend.invalid", "port=%d" % dc.imaps_port,
                               "tls=yes", "destuser=" + USER],
            "nw@example.com": ["proxy=y", "host=backend.test", "port=%d" % dc.imaps_port,
                               "tls=yes", "destuser=" + USER],
            "nx@example.com": ["proxy=y", "host=nx.test", "port=%d" % dc.imap_port],
            "np@example.com": ["proxy=y", "host=backend.test", "port=%d" % dc.pop3_port,
                               "destuser=" + USER],
        }
        cls.g = Gateway("names", users=users, resolver="127.0.0.1:%d" % cls.dns_port)

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()
        cls.dns.terminate()
        cls.dns.wait(5)
        cls.dc.close()

    def test_imap_and_pop3_by_name(self):
        line = raw_login(self.g.imap_port, "nm@example.com")
        self.assertTrue(line.startswith("a OK [CAPABILITY"), line)
        p = poplib.POP3("127.0.0.1", self.g.pop3_port, timeout=15)
        p.user("np@example.com")
        self.assertTrue(p.pass_(PASSWORD).startswith(b"+OK"))
        p.quit()
        self.assertRegex(self.g.d.log_text(), r"proxy: user=<np@example\.com> client=\S+ "
                         r"backend=backend\.test:%d: logged in" % self.dc.pop3_port)

    def test_tls_checked_against_the_name(self):
        line = raw_login(self.g.imap_port, "nt@example.com")
        self.assertTrue(line.startswith("a OK [CAPABILITY"), line)
        mark = self.g.d.log_mark()
        line = raw_login(self.g.imap_port, "nw@example.com")
        self.assertTrue(line.startswith("a NO [UNAVAILABLE]"), line)
        wait_until(lambda: "user=<nw@example.com>" in self.g.d.log_since(mark), 5,
                   what="the log line")
        self.assertRegex(self.g.d.log_since(mark), r"certificate not accepted")

    def test_silent_resolver_bounded_by_the_timeout(self):
        mute = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)    # answers nothing
        mute.bind(("127.0.0.1", 0))
        g = Gateway("mute-dns", ["proxy=y", "host=backend.test", "port=%d" % self.dc.imap_port],
                    resolver="127.0.0.1:%d" % mute.getsockname()[1], mail_proxy_timeout="2")
        try:
            t0 = time.monotonic()
            line = raw_login(g.imap_port, USER)
            self.assertTrue(line.startswith("a NO [UNAVAILABLE]"), line)
            self.assertLess(time.monotonic() - t0, 4)
            self.assertRegex(g.d.log_text(), r"unavailable: cannot resolve backend\.test")
        finally:
            g.stop()
            mute.close()

    def test_unknown_name_unavailable(self):
        t0 = time.monotonic()
        line = raw_login(self.g.imap_port, "nx@example.com")
        self.assertTrue(line.startswith("a NO [UNAVAILABLE]"), line)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertRegex(self.g.d.log_text(), r"user=<nx@example\.com> client=\S+ "
                         r"backend=nx\.test:%d: unavailable: cannot resolve nx\.test"
                         % self.dc.imap_port)


class T14UserIP(unittest.TestCase):
    def test_proxied_sessions_count(self):
        dc = backend("dc-userip", None, protocols=("imap", "pop3"))
        g = Gateway("userip", users={
            USER: ["proxy=y", "host=127.0.0.1", "port=%d" % dc.imap_port],
            "p3@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % dc.pop3_port,
                               "destuser=" + USER]},
            mail_max_userip_connections="2")
        try:
            a, b = g.login(), g.login()
            line = raw_login(g.imap_port, USER)
            self.assertTrue(line.startswith("a NO [UNAVAILABLE] Maximum number of connections "
                                            "from user+IP exceeded "
                                            "(mail_max_userip_connections=2)"), line)
            self.assertRegex(g.d.log_text(), r"imap: conn=\S+ proxy: user=<%s> client=\S+ "
                             r"backend=\S+: refused: 2 sessions from that address"
                             % re.escape(USER))
            # another address has slots of its own
            c = g.login(source=CLIENT)
            c.logout()
            a.logout()
            wait_until(lambda: raw_login(g.imap_port, USER).startswith("a OK"), 5,
                       what="a slot freed by the logout")
            b.logout()
            # POP3 the same (its door counts its own)
            p1 = poplib.POP3("127.0.0.1", g.pop3_port, timeout=15)
            p1.user("p3@example.com")
            self.assertTrue(p1.pass_(PASSWORD).startswith(b"+OK"))
            p2 = poplib.POP3("127.0.0.1", g.pop3_port, timeout=15)
            p2.user("p3@example.com")
            self.assertTrue(p2.pass_(PASSWORD).startswith(b"+OK"))
            p3 = poplib.POP3("127.0.0.1", g.pop3_port, timeout=15)
            p3.user("p3@example.com")
            with self.assertRaisesRegex(poplib.error_proto, r"-ERR \[IN-USE\] Maximum number "
                                        r"of connections from user\+IP exceeded"):
                p3.pass_(PASSWORD)
            p1.quit()
        finally:
            g.stop()
            dc.close()


class T15Forward(unittest.TestCase):
    def test_client_address_forwarded_or_not(self):
        # mail_proxy_forward_client: ID (IMAP) / XCLIENT (POP3) with the
        # client's address and port before the login when yes (the
        # default), nothing of it when no
        for fwd in ("yes", "no"):
            b, b3 = FakeBackend("imap"), FakeBackend("pop3")
            g = Gateway("fwd-" + fwd, users={
                "f@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % b.port],
                "f3@example.com": ["proxy=y", "host=127.0.0.1", "port=%d" % b3.port]},
                mail_proxy_forward_client=fwd)
            try:
                line = raw_login(g.imap_port, "f@example.com", source=OUTSIDE)
                self.assertTrue(line.startswith("a OK"), line)
                line = pop3_login(g.pop3_port, "f3@example.com", source=OUTSIDE)
                self.assertTrue(line.startswith(b"+OK"), line)
                sent = b"".join(b.lines), b"".join(b3.lines)
                if fwd == "yes":
                    self.assertRegex(sent[0], rb'^I ID \("x-originating-ip" "127\.0\.0\.4" '
                                              rb'"x-originating-port" "\d+" '
                                              rb'"x-connected-ip" "127\.0\.0\.1" '
                                              rb'"x-connected-port" "%d"\)\r\n' % g.imap_port)
                    self.assertRegex(sent[1], rb"^XCLIENT ADDR=127\.0\.0\.4 PORT=\d+\r\n")
                else:
                    self.assertNotIn(b"ID (", sent[0])
                    self.assertNotIn(b"XCLIENT", sent[1])
                self.assertEqual((b.logins, b3.logins), (1, 1))
            finally:
                g.stop()
                b.close()
                b3.close()


if __name__ == "__main__":
    sys.exit(runner.main())
