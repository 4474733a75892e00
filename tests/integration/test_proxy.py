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
    T09Master       CRAM-MD5 and SCRAM-SHA-256 (IMAP and POP3; the server's
                    signature checked by the client) through the backend master
                    user (USER*MASTER);
                    without one, NO [UNAVAILABLE]
    T10BackendAuth  mail_proxy_auth = backend: unknown users of
                    mail_proxy_domains checked by mail_proxy_default (IMAP
                    and POP3), its NO a failed login with the penalty delay
    T11Clients      mbsync (STARTTLS) and fetchmail (STLS) through the proxy

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
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import dovecot, runner  # noqa: E402
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


def backend(name, tls, protocols=("imap",), users=None):
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
                                    "  args = %s\n}\n" % masters)
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
            for args, err in ((["host=backend.example"], "numeric IPv4 or IPv6"),
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
        ("a default that is no address", {"mail_proxy_default": "backend.example:143"},
         r"mail_proxy_default = backend.example:143: expected ADDRESS\[:PORT\]"),
        ("a default port out of range", {"mail_proxy_default": "192.0.2.1:0"},
         r"mail_proxy_default.*1-65535"),
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
        port = free_port()
        g = Gateway("down", ["proxy=y", "host=127.0.0.1", "port=%d" % port])
        try:
            t0 = time.monotonic()
            line = raw_login(g.imap_port, USER)
            self.assertTrue(line.startswith("a NO [UNAVAILABLE]"), line)
            self.assertLess(time.monotonic() - t0, 3)
            self.assertRegex(g.d.log_text(), r"proxy: user=<%s> client=\[127\.0\.0\.1\] "
                             r"backend=127\.0\.0\.1:%d: unavailable: " % (re.escape(USER), port))
        finally:
            g.stop()

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
        g = Gateway("backend", [], mail_proxy_auth="backend",
                    mail_proxy_default="127.0.0.1:%d" % dc.imap_port,
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
            # POP3 the same way (mail_proxy_default names one port: a gateway of its own)
            g2 = Gateway("backend-pop3", [], mail_proxy_auth="backend",
                         mail_proxy_default="127.0.0.1:%d" % dc.pop3_port,
                         mail_proxy_domains="far.example")
            try:
                p = poplib.POP3("127.0.0.1", g2.pop3_port, timeout=15)
                p.user(far)
                self.assertTrue(p.pass_("Far pass 2").startswith(b"+OK"))
                self.assertEqual(p.stat()[0], 0)
                p.quit()
                p = poplib.POP3("127.0.0.1", g2.pop3_port, timeout=15)
                p.user(far)
                with self.assertRaisesRegex(poplib.error_proto, r"-ERR \[AUTH\]"):
                    p.pass_("wrong")
                p.quit()
            finally:
                g2.stop()
            # users of our own file are still checked here
            c = g.login(LOCAL)
            self.assertEqual(c.select("INBOX")[0], "OK")
            c.logout()
        finally:
            g.stop()
            dc.close()


class T11Clients(unittest.TestCase):
    """mbsync (IMAP, STARTTLS to Portcullis) and fetchmail (POP3, STLS) through the proxy"""

    @classmethod
    def setUpClass(cls):
        cls.dc = backend("dc-clients", None, protocols=("imap", "pop3"))
        for i in range(3):
            put_message(cls.dc, b"From: far@example.org\r\nSubject: client %d\r\n\r\n"
                        b"body %d\r\n" % (i, i), "170000001%d.M%dP9.backend" % (i, i))
        cls.gi = Gateway("clients-imap", ["proxy=y", "host=127.0.0.1",
                                          "port=%d" % cls.dc.imap_port])
        cls.gp = Gateway("clients-pop3", ["proxy=y", "host=127.0.0.1",
                                          "port=%d" % cls.dc.pop3_port])

    @classmethod
    def tearDownClass(cls):
        cls.gi.stop()
        cls.gp.stop()
        cls.dc.close()

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


if __name__ == "__main__":
    sys.exit(runner.main())
