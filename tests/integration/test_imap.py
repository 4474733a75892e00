#!/usr/bin/python3
"""The IMAP door (pop-imap-proxy/imap_server.c) driven by real clients.

One portcullisd runs the SMTP gateway and the IMAP door on the same Maildir
store (services = smtp imap): mail goes in with smtplib, comes out with
Python's imaplib, curl and mutt. Asserted, as the client saw it:

    T01Greeting     the banner (no software name or version; imap_banner),
                    CAPABILITY before login, LOGINDISABLED and STARTTLS before
                    TLS, LOGIN refused with [PRIVACYREQUIRED] in plaintext
    T02Login        LOGIN after STARTTLS; AUTHENTICATE PLAIN, CRAM-MD5 and
                    SCRAM-SHA-256 through imaplib's authenticate(); a wrong
                    password NO [AUTHENTICATIONFAILED]; implicit TLS (imaps);
                    pipelined plaintext after STARTTLS is not taken as TLS input
    T03Mechanisms   imap_auth_mechanisms = CRAM-MD5 SCRAM-SHA-256: only those
                    offered, PLAIN and LOGIN refused even over TLS, and
                    LOGINDISABLED said (after STARTTLS, in the imaps greeting)
    T04Mailbox      a message delivered by the SMTP gateway: LIST, SELECT
                    (EXISTS, UIDVALIDITY, UIDNEXT), EXAMINE, a missing folder
    T05Curl         curl imap:// (STARTTLS, --ssl-reqd) and imaps:// list the folders
                    and fetch a message (the bytes imaplib gets); no PLAIN in clear
    T06KillList     a kill-listed client address gets "* BYE" at connect
    T07Penalty      failed logins are answered after the penalty's delay, then
                    the address is banned (kill list, origin auth-ban) and
                    refused at connect
    T09Messages     FETCH (flags, size, the body as delivered, BODY[TEXT] setting
                    \\Seen, ENVELOPE, BODYSTRUCTURE, HEADER.FIELDS), SEARCH and
                    UID SEARCH, STORE, EXPUNGE, seen by the next session
    T14Folders      APPEND with APPENDUID, UID COPY, UID MOVE, STATUS
                    of the target folders from a new session
    T10BigMessage   a 20 MB message (and one stored with bare LFs) fetched
                    whole and byte-identical over TLS and plaintext; the
                    worker's own memory (RssAnon, sampled) grows < 8 MB;
                    message_bytes_total{door="imap"} counts what was sent
    T17Mutt         mutt in batch mode (under script(1) for a terminal) reads the
                    INBOX over imaps: the subjects of every delivered message
    T11Mbsync       mbsync (isync) pulls INBOX over STARTTLS into a local Maildir,
                    then pushes a message written and a flag set locally
                    (APPEND, STORE): both sides equal, byte for byte and flag
                    for flag, after each sync
    T12Dovecot      Portcullis then a private Dovecot on the same store, then
                    Portcullis again: the same UIDVALIDITY, UIDs, flags,
                    keywords and bytes both ways (Dovecot's STORE and APPEND)
    T15UserIp       mail_max_userip_connections = 2: the third login from one
                    address is answered, then * BYE [UNAVAILABLE]; another
                    address, or a session fewer, is let in
    T16Config       portcullisd -t refuses imaps without keys, a relay: store,
                    an unknown imap_auth_mechanisms name, a bad imap_banner,
                    a bad listener, a too short idle timeout (FILE:LINE)
    T18Limits       imap_max_per_client (* BYE [UNAVAILABLE] to one address only),
                    imap_login_timeout on a half-sent request (* BYE
                    Disconnected for inactivity.), openssl s_client -starttls imap
    T19External     AUTHENTICATE EXTERNAL on imaps with a client certificate the
                    CA vouches for (the imaps greeting says so: it waits for the
                    handshake); not offered without one; an unknown user's
                    certificate refused
    T20Concurrency  12 sessions fetching one folder and each flagging a message of
                    its own, some dropping mid-FETCH, 3 idlers, 10 deliveries
                    at once: all OK, every idler told of every delivery, UIDs
                    1..22 and the flags as the last STOREs left them
    T21StoreAllAtOnce  8 sessions each STORE 1:* +/-FLAGS at once: every STORE
                    and FETCH OK (a renamed file is found again), flags as the
                    last STOREs left them
    T22BodyBytes    BODY[] and its partials byte-exact whether the file is sent
                    as it is or converted (a bare LF or NUL at the scan's block
                    edges, first or last octet)
    T23SlowReader   FETCH 1:* BODY.PEEK[] of 40 MB to a client that stops
                    reading: the worker's memory and open files stay bounded,
                    then every byte arrives (plaintext and TLS)
    T13Reload       portcullis reload: a new imap_banner for new connections;
                    the sessions open before it (one in IDLE) get * BYE
                    [UNAVAILABLE] and are closed
    T08Idle         a message delivered by the SMTP gateway reaches an idling
                    client as "* N EXISTS" within 2 s (inotify); two idlers on
                    one folder, one leaves, the other is still told

Run: PORTCULLIS_BIN=build/asan/bin python3 tests/integration/test_imap.py [Class[.test]]
"""
import base64
import hashlib
import hmac
import imaplib
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
from harness import dovecot, runner  # noqa: E402
from harness.daemon import Daemon, run_bin  # noqa: E402
from harness.ports import free_port  # noqa: E402
from harness.util import wait_until  # noqa: E402

USER = "demo@example.com"
PASSWORD = "demo-password"
MYHOSTNAME = "mx.example.com"
OUTSIDE = "127.0.0.2"      # a source address the penalty tests may get banned
CURL = shutil.which("curl")

W = None


def openssl(*args):
    p = subprocess.run(["openssl"] + list(args), capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError("openssl %s: %s" % (" ".join(args), p.stderr))


def client_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Work:
    """A directory with a self-signed certificate for MYHOSTNAME."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pc-imap-")
        os.chmod(self.dir, 0o755)
        self.crt = os.path.join(self.dir, "server.crt")
        self.key = os.path.join(self.dir, "server.key")
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", "/CN=" + MYHOSTNAME, "-addext",
                "subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1" % MYHOSTNAME,
                "-keyout", self.key, "-out", self.crt)

    def close(self):
        if os.environ.get("KEEP_LAB") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)


def setUpModule():
    global W
    W = Work()


def tearDownModule():
    if W is not None:
        W.close()


class Gateway:
    """portcullisd with the SMTP gateway and the IMAP door on one store."""

    def __init__(self, name, users=(USER,), env=None, **conf):
        self.imap_port = free_port()
        self.imaps_port = free_port()
        base = {
            "services": "smtp imap",
            "smtp_listen": "127.0.0.1:{port}",
            "myhostname": MYHOSTNAME,
            "mydomains": "example.com",
            "state_dir": "{dir}/state",
            "delivery": "maildir:{dir}/mail",
            "imap_listen": "127.0.0.1:%d" % self.imap_port,
            "imaps_listen": "127.0.0.1:%d" % self.imaps_port,
            "tls_cert_file": W.crt,
            "tls_key_file": W.key,
            "auth_failure_delay": "0",
        }
        base.update(conf)
        self.d = Daemon(name, base)
        for u in users:     # before the start: no wait for the users file's reload
            self.d.cli("user", "add", u, "--password-stdin", input=PASSWORD + "\n")
        self.d.start(env=env)
        wait_until(lambda: _accepts(self.imap_port), 10, what="the imap door")

    def stop(self):
        self.d.stop()
        self.d.assert_clean()
        self.d.close()

    def send(self, to=USER, subject="hello", body="the demo message\r\n", source="127.0.0.1"):
        msg = ("From: Sender <sender@outside.test>\r\nTo: <%s>\r\nSubject: %s\r\n"
               "Message-ID: <%s@outside.test>\r\n\r\n%s" % (to, subject, time.time(), body))
        with smtplib.SMTP("127.0.0.1", self.d.port, timeout=15,
                          source_address=(source, 0)) as s:
            s.sendmail("sender@outside.test", [to], msg.encode())
        return msg

    def imap(self, source="127.0.0.1"):
        return SrcIMAP4("127.0.0.1", self.imap_port, source=source)

    def imaps(self):
        return imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, ssl_context=client_ctx(),
                                 timeout=15)

    def login(self):
        c = self.imap()
        c.starttls(ssl_context=client_ctx())
        typ, _ = c.login(USER, PASSWORD)
        assert typ == "OK"
        return c


def _accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False


class SrcIMAP4(imaplib.IMAP4):
    """imaplib.IMAP4 from a chosen loopback source address"""

    def __init__(self, host, port, source="127.0.0.1", timeout=15):
        self.source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))


def scram_auth(user, password):
    """an imaplib authenticate() callback for SCRAM-SHA-256 (RFC 5802/7677);
    state.ok is True once the server's signature checked out"""
    class State:
        step = 0
        ok = False
    st = State()
    cnonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = "n=%s,r=%s" % (user, cnonce)

    def cb(challenge):
        if st.step == 0:
            st.step = 1
            return ("n,," + first_bare).encode()
        if st.step == 1:
            st.step = 2
            sf = challenge.decode()
            f = dict(kv.split("=", 1) for kv in sf.split(","))
            assert f["r"].startswith(cnonce)
            salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(f["s"]),
                                         int(f["i"]))
            ckey = hmac.new(salted, b"Client Key", "sha256").digest()
            stored = hashlib.sha256(ckey).digest()
            without = "c=biws,r=" + f["r"]
            st.am = ("%s,%s,%s" % (first_bare, sf, without)).encode()
            sig = hmac.new(stored, st.am, "sha256").digest()
            proof = bytes(a ^ b for a, b in zip(ckey, sig))
            st.skey = hmac.new(salted, b"Server Key", "sha256").digest()
            return (without + ",p=" + base64.b64encode(proof).decode()).encode()
        want = b"v=" + base64.b64encode(hmac.new(st.skey, st.am, "sha256").digest())
        st.ok = challenge == want
        return b""
    return cb, st


def caps(c):
    return set(c.capabilities)


class T01Greeting(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.g = Gateway("greet")

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()

    def test_banner_names_the_host_not_the_software(self):
        c = self.g.imap()
        w = c.welcome.decode()
        self.assertTrue(w.startswith("* OK [CAPABILITY IMAP4rev1 "), w)
        self.assertTrue(w.endswith("] %s ready." % MYHOSTNAME), w)
        self.assertNotRegex(w.lower(), r"portcullis|dovecot|\d+\.\d+\.\d+")
        c.logout()

    def test_logindisabled_before_tls(self):
        c = self.g.imap()
        self.assertIn("LOGINDISABLED", caps(c))
        self.assertIn("STARTTLS", caps(c))
        self.assertNotIn("AUTH=PLAIN", caps(c))
        with self.assertRaisesRegex(imaplib.IMAP4.error, r"PRIVACYREQUIRED"):
            c.login(USER, PASSWORD)
        c.starttls(ssl_context=client_ctx())
        self.assertNotIn("LOGINDISABLED", caps(c))
        self.assertNotIn("STARTTLS", caps(c))
        self.assertIn("AUTH=PLAIN", caps(c))
        self.assertEqual(c.login(USER, PASSWORD)[0], "OK")
        c.logout()

    def test_plaintext_allowed_when_the_admin_says_so(self):
        g = Gateway("plain", auth_allow_plaintext="yes", imap_banner="IMAP at your service")
        try:
            c = g.imap()
            self.assertTrue(c.welcome.decode().endswith("] IMAP at your service"), c.welcome)
            self.assertNotIn("LOGINDISABLED", caps(c))
            self.assertEqual(c.login(USER, PASSWORD)[0], "OK")
            c.logout()
        finally:
            g.stop()


class T02Login(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.g = Gateway("login")

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()

    def tls_client(self):
        c = self.g.imap()
        c.starttls(ssl_context=client_ctx())
        return c

    def test_login_after_starttls(self):
        c = self.tls_client()
        typ, data = c.login(USER, PASSWORD)
        self.assertEqual(typ, "OK")
        self.assertIn(b"CAPABILITY", data[0])
        self.assertEqual(c.logout()[0], "BYE")

    def test_wrong_password(self):
        c = self.tls_client()
        with self.assertRaisesRegex(imaplib.IMAP4.error, r"AUTHENTICATIONFAILED"):
            c.login(USER, "guess")
        with self.assertRaisesRegex(imaplib.IMAP4.error, r"AUTHENTICATIONFAILED"):
            c.login("nobody@example.com", PASSWORD)
        self.assertEqual(c.login(USER, PASSWORD)[0], "OK")
        c.logout()

    def test_authenticate_plain(self):
        c = self.tls_client()
        typ, _ = c.authenticate("PLAIN", lambda _: ("\0%s\0%s" % (USER, PASSWORD)).encode())
        self.assertEqual(typ, "OK")
        c.logout()

    def test_authenticate_cram_md5(self):
        c = self.tls_client()
        self.assertEqual(c.login_cram_md5(USER, PASSWORD)[0], "OK")
        c.logout()
        # CRAM-MD5 sends no password: offered before TLS too
        c = self.g.imap()
        self.assertIn("AUTH=CRAM-MD5", caps(c))
        self.assertEqual(c.login_cram_md5(USER, PASSWORD)[0], "OK")
        c.logout()

    def test_authenticate_scram_sha_256(self):
        c = self.tls_client()
        cb, st = scram_auth(USER, PASSWORD)
        typ, _ = c.authenticate("SCRAM-SHA-256", cb)
        self.assertEqual(typ, "OK")
        self.assertTrue(st.ok, "the server's signature did not check out")
        c.logout()
        c = self.tls_client()
        cb, st = scram_auth(USER, "guess")
        with self.assertRaisesRegex(imaplib.IMAP4.error, r"AUTHENTICATIONFAILED"):
            c.authenticate("SCRAM-SHA-256", cb)
        c.logout()

    def test_implicit_tls_on_imaps(self):
        c = self.g.imaps()
        self.assertTrue(c.welcome.startswith(b"* OK [CAPABILITY IMAP4rev1"), c.welcome)
        self.assertNotIn("STARTTLS", caps(c))
        self.assertNotIn("LOGINDISABLED", caps(c))
        self.assertEqual(c.login(USER, PASSWORD)[0], "OK")
        c.logout()

    def test_plaintext_pipelined_after_starttls_is_dropped(self):
        """RFC 2595 §3.1: what came before the handshake is not a command"""
        s = socket.create_connection(("127.0.0.1", self.g.imap_port), 10)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"a STARTTLS\r\nb LOGIN %s %s\r\n" % (USER.encode(), PASSWORD.encode()))
        self.assertTrue(f.readline().startswith(b"a OK"))
        t = client_ctx().wrap_socket(s)
        t.sendall(b"c CAPABILITY\r\n")
        tf = t.makefile("rb")
        got = [tf.readline(), tf.readline()]
        self.assertTrue(got[0].startswith(b"* CAPABILITY"), got)
        self.assertTrue(got[1].startswith(b"c OK"), got)   # no "b" reply came first
        t.close()


class T03Mechanisms(unittest.TestCase):
    def test_admin_requires_cram_or_scram(self):
        g = Gateway("mechs", imap_auth_mechanisms="CRAM-MD5 SCRAM-SHA-256")
        try:
            c = g.imap()
            c.starttls(ssl_context=client_ctx())
            self.assertIn("AUTH=CRAM-MD5", caps(c))
            self.assertIn("AUTH=SCRAM-SHA-256", caps(c))
            self.assertNotIn("AUTH=PLAIN", caps(c))
            self.assertNotIn("AUTH=LOGIN", caps(c))
            # LOGIN is refused without PLAIN: RFC 3501 says so with LOGINDISABLED
            self.assertIn("LOGINDISABLED", caps(c))
            with self.assertRaisesRegex(imaplib.IMAP4.error, r"CANNOT"):
                c.login(USER, PASSWORD)
            with self.assertRaises(imaplib.IMAP4.error):
                c.authenticate("PLAIN", lambda _: ("\0%s\0%s" % (USER, PASSWORD)).encode())
            self.assertEqual(c.login_cram_md5(USER, PASSWORD)[0], "OK")
            c.logout()
            c = g.imaps()
            self.assertIn(b"LOGINDISABLED", c.welcome)
            self.assertIn(b"AUTH=SCRAM-SHA-256", c.welcome)
            c.logout()
        finally:
            g.stop()


class T04Mailbox(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.g = Gateway("mailbox")
        cls.g.send(subject="first")

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()

    def test_list_and_select_inbox(self):
        c = self.g.login()
        typ, data = c.list()
        self.assertEqual(typ, "OK")
        self.assertRegex(b"\n".join(data), rb'(?m)^\(\\HasNoChildren\) "\." "?INBOX"?$')
        typ, data = c.select("INBOX")
        self.assertEqual((typ, data), ("OK", [b"1"]))
        self.assertTrue(int(c.response("UIDVALIDITY")[1][0]) > 0)
        self.assertEqual(c.response("UIDNEXT")[1][0], b"2")
        typ, data = c.select("INBOX", readonly=True)
        self.assertEqual(typ, "OK")
        self.assertEqual(c.response("READ-ONLY")[0], "READ-ONLY")
        typ, data = c.select("No.Such.Folder")
        self.assertEqual(typ, "NO")
        self.assertIn(b"Mailbox doesn't exist", data[0])     # as Dovecot 2.3 says it
        c.logout()


class T08Idle(unittest.TestCase):
    """RFC 2177: mail the SMTP gateway delivers reaches an idling client"""
    @classmethod
    def setUpClass(cls):
        cls.g = Gateway("idle")
        cls.g.send(subject="before")

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()

    def idle(self, c):
        tag = c._new_tag()
        c.send(tag + b" IDLE\r\n")
        self.assertTrue(c.readline().startswith(b"+ "))
        return tag

    def exists(self, c, limit=5.0):
        """the next "* N EXISTS" (other untagged lines such as RECENT skipped)"""
        c.sock.settimeout(limit)
        seen = []
        while True:
            line = c.readline()
            seen.append(line)
            m = re.match(rb"\* (\d+) EXISTS", line)
            if m:
                return int(m.group(1))
            self.assertTrue(line.startswith(b"* "), seen)

    def done(self, c, tag):
        c.send(b"DONE\r\n")
        while True:
            line = c.readline()
            if line.startswith(tag):
                self.assertIn(b" OK ", line)
                return

    def test_delivery_reaches_idling_client(self):
        c = self.g.login()
        typ, data = c.select("INBOX")
        n = int(data[0])
        tag = self.idle(c)
        t0 = time.monotonic()
        self.g.send(subject="while idling")
        self.assertEqual(self.exists(c), n + 1)
        took = time.monotonic() - t0
        self.assertLess(took, 2.0, "EXISTS came %.2f s after the SMTP 250" % took)
        self.done(c, tag)
        self.assertEqual(c.noop()[0], "OK")
        c.logout()

    def test_two_idlers_on_one_folder(self):
        a, b = self.g.login(), self.g.login()
        n = int(a.select("INBOX")[1][0])
        b.select("INBOX")
        ta, tb = self.idle(a), self.idle(b)
        self.g.send(subject="for both")
        self.assertEqual(self.exists(a), n + 1)
        self.assertEqual(self.exists(b), n + 1)
        self.done(a, ta)
        a.logout()
        # b goes on idling with the watch a shared: still told
        self.g.send(subject="for b")
        self.assertEqual(self.exists(b), n + 2)
        self.done(b, tb)
        b.logout()


class T09Messages(unittest.TestCase):
    """FETCH, STORE, EXPUNGE on what the SMTP gateway delivered"""
    @classmethod
    def setUpClass(cls):
        cls.g = Gateway("messages")
        cls.sent = [cls.g.send(subject="message %d" % i, body="body %d\r\n" % i)
                    for i in range(3)]

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()

    def test_fetch_store_expunge(self):
        c = self.g.login()
        self.assertEqual(c.select("INBOX")[1], [b"3"])
        typ, data = c.fetch("1:3", "(UID FLAGS RFC822.SIZE)")
        self.assertEqual(typ, "OK")
        self.assertEqual(len(data), 3)
        for i, line in enumerate(data):
            self.assertRegex(line, rb"^%d \(UID %d FLAGS \(.*\) RFC822.SIZE \d+\)$"
                             % (i + 1, i + 1))
        # the body as delivered: our message, under the gateway's trace headers
        typ, data = c.fetch("2", "(BODY.PEEK[])")
        body = data[0][1]
        self.assertTrue(body.endswith(self.sent[1].split("\r\n\r\n", 1)[1].encode()), body)
        self.assertIn(b"Subject: message 1\r\n", body)
        size = int(re.search(rb"RFC822.SIZE (\d+)", c.fetch("2", "(RFC822.SIZE)")[1][0]).group(1))
        self.assertEqual(size, len(body))
        typ, data = c.fetch("2", "(BODY[TEXT])")     # not PEEK: sets \Seen
        self.assertEqual(data[0][1], b"body 1\r\n")
        self.assertIn(b"\\Seen", c.fetch("2", "(FLAGS)")[1][0])
        # SEARCH, ENVELOPE and BODYSTRUCTURE from the MIME parser
        self.assertEqual(c.search(None, "SUBJECT", '"message 1"'), ("OK", [b"2"]))
        self.assertEqual(c.uid("SEARCH", "BODY", "body"), ("OK", [b"1 2 3"]))
        self.assertEqual(c.search(None, "FROM", "sender@outside.test", "NOT", "SUBJECT",
                                  '"message 0"'), ("OK", [b"2 3"]))
        env = c.fetch("3", "(ENVELOPE)")[1][0]
        self.assertIn(b'"message 2"', env)
        self.assertIn(b'(("Sender" NIL "sender" "outside.test"))', env)
        bs = c.fetch("3", "(BODYSTRUCTURE)")[1][0]
        self.assertRegex(bs, rb'BODYSTRUCTURE \("text" "plain"')
        hdr = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1][0][1]
        self.assertEqual(hdr, b"Subject: message 0\r\n\r\n")
        # STORE, then EXPUNGE of the \Deleted one
        typ, data = c.store("1", "+FLAGS", "(\\Flagged)")
        self.assertEqual(typ, "OK")
        self.assertIn(b"\\Flagged", data[0])
        self.assertEqual(c.store("3", "+FLAGS", "(\\Deleted)")[0], "OK")
        typ, data = c.expunge()
        self.assertEqual((typ, data), ("OK", [b"3"]))
        c.logout()
        # another session sees what this one left
        c = self.g.login()
        self.assertEqual(c.select("INBOX")[1], [b"2"])
        flags = c.fetch("1:2", "(FLAGS)")[1]
        self.assertIn(b"\\Flagged", flags[0])
        self.assertIn(b"\\Seen", flags[1])
        c.logout()


class T14Folders(unittest.TestCase):
    """APPEND (UIDPLUS), COPY, MOVE between folders, seen by a new session"""
    @classmethod
    def setUpClass(cls):
        cls.g = Gateway("folders")
        for i in range(3):
            cls.g.send(subject="folder test %d" % i)

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()

    def test_append_copy_move(self):
        c = self.g.login()
        uv = select_uv(c)
        msg = b"From: <me@example.com>\r\nSubject: a draft\r\n\r\nappended body\r\n"
        typ, data = c.append("INBOX", "(\\Draft)", None, msg)
        self.assertEqual(typ, "OK")
        self.assertRegex(data[0], rb"^\[APPENDUID %d 4\]" % uv)
        typ, data = c.uid("FETCH", "4", "(FLAGS BODY.PEEK[])")
        self.assertEqual(data[0][1], msg)
        self.assertIn(b"\\Draft", data[0][0])
        typ, data = c.uid("COPY", "1:2", "Trash")
        self.assertEqual(typ, "OK")
        typ, data = c.uid("MOVE", "3", "Junk")
        self.assertEqual(typ, "OK")
        self.assertEqual(sorted(uid_flags(c)), [1, 2, 4])    # 3 moved out
        c.logout()
        c = self.g.login()
        self.assertEqual(c.status("Trash", "(MESSAGES)")[1][0], b"Trash (MESSAGES 2)")
        self.assertEqual(c.status("Junk", "(MESSAGES)")[1][0], b"Junk (MESSAGES 1)")
        select_uv(c, "Junk")
        body = c.fetch("1", "(BODY.PEEK[])")[1][0][1]
        self.assertIn(b"Subject: folder test 2\r\n", body)
        self.assertEqual(int(c.select("INBOX")[1][0]), 3)
        c.logout()


class T10BigMessage(unittest.TestCase):
    """a 20 MB message fetched whole and byte-identical, the worker's
    memory staying small: it goes out from the file, never held"""
    SIZE = 20 * 1024 * 1024

    @classmethod
    def setUpClass(cls):
        cls.g = Gateway("big", message_size_limit=str(2 * cls.SIZE),
                        env={"ASAN_OPTIONS": "detect_leaks=1:quarantine_size_mb=4"})
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_=+.,%d\n"
        body = b"".join(line % i for i in range(cls.SIZE // 70))
        crlf = b"From: <a@outside.test>\r\nTo: <%s>\r\nSubject: big\r\n\r\n" % USER.encode() \
            + body.replace(b"\n", b"\r\n")
        with smtplib.SMTP("127.0.0.1", cls.g.d.port, timeout=60) as s:
            s.sendmail("a@outside.test", [USER], crlf)
        cls.crlf_body = crlf
        # and one stored with bare LF (as some delivery agents write): served as CRLF
        md = os.path.join(cls.g.d.dir, "mail", "example.com", "demo", "Maildir")
        lf = b"From: <b@outside.test>\nSubject: big lf\n\n" + body
        name = "%d.M1P1Q1.test" % int(time.time())
        with open(os.path.join(md, "tmp", name), "wb") as f:
            f.write(lf)
        os.rename(os.path.join(md, "tmp", name), os.path.join(md, "new", name))
        cls.lf_as_crlf = lf.replace(b"\n", b"\r\n")

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()

    def worker_pid(self):
        return int(re.findall(r"portcullisd/imap\[(\d+)\]", self.g.d.log_text())[-1])

    @staticmethod
    def rss_anon(pid):
        """the worker's own memory (heap, stacks): RssAnon. VmHWM would also
        count the pages of the message file the MIME parser maps (page
        cache, shared, dropped with the mapping)"""
        with open("/proc/%d/status" % pid) as f:
            return int(re.search(r"RssAnon:\s+(\d+) kB", f.read()).group(1)) * 1024

    def sampled(self, fn):
        """fn() while a thread samples RssAnon every 2 ms: (result, peak growth)"""
        pid = self.worker_pid()
        base = self.rss_anon(pid)
        peak = [base]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], self.rss_anon(pid))
                time.sleep(0.002)
        t = threading.Thread(target=sample)
        t.start()
        try:
            r = fn()
        finally:
            done.set()
            t.join()
        return r, peak[0] - base

    def fetch_all(self, c):
        c.select("INBOX")
        got = {}
        for i in (1, 2):
            t0 = time.monotonic()
            typ, data = c.fetch(str(i), "(BODY.PEEK[])")
            self.assertEqual(typ, "OK")
            msg = data[0][1]
            got["lf" if b"Subject: big lf\r\n" in msg[:4096] else "crlf"] = (
                msg, time.monotonic() - t0)
        return got

    def check(self, c, how):
        got, grew = self.sampled(lambda: self.fetch_all(c))
        self.assertTrue(got["crlf"][0].endswith(self.crlf_body), "%s: the message differs" % how)
        self.assertEqual(got["lf"][0], self.lf_as_crlf, "%s: the LF message differs" % how)
        # 16 MB (under the 22.7 MB message): under ASan the shadow of the mapped
        # message pages that libc's interceptors check (TLS sends from a
        # mapping) counts as anonymous memory too, 1-4 MB; the release build
        # grows < 1 MB
        self.assertLess(grew, 16 * 1024 * 1024, "%s: the worker grew by %d bytes" % (how, grew))
        print("\n  %s: 2 x %.1f MB in %.2f + %.2f s, worker's anonymous RSS peak +%d KiB" % (
            how, len(got["crlf"][0]) / 1e6, got["crlf"][1], got["lf"][1], grew // 1024),
            file=sys.stderr)

    def test_over_tls(self):
        c = self.g.login()
        self.check(c, "STARTTLS")
        c.logout()

    def test_plain(self):
        c = self.g.imap()
        self.assertEqual(c.login_cram_md5(USER, PASSWORD)[0], "OK")
        self.check(c, "plaintext")
        c.logout()

    def test_zz_counters(self):
        """(runs last in the class) the octets the fetches above sent are counted"""
        before = self.counters().get('message_bytes_total{door="imap",route="fetch"}', 0)
        c = self.g.imap()
        self.assertEqual(c.login_cram_md5(USER, PASSWORD)[0], "OK")
        c.select("INBOX")
        # the gateway's message: its bytes go out from the file as they are
        uid = c.uid("SEARCH", "HEADER", "Subject", "big", "NOT", "SUBJECT", "lf")[1][0]
        n = len(c.uid("FETCH", uid, "(BODY.PEEK[])")[1][0][1])
        c.logout()
        got = self.counters()
        self.assertEqual(got.get('message_bytes_total{door="imap",route="fetch"}', 0) - before, n)
        self.assertGreater(got.get('connections_total{door="imap"}', 0), 0)
        self.assertGreater(got.get('auth_total{door="imap",result="success"}', 0), 0)

    def counters(self):
        out = self.g.d.cli("stats").stdout
        return dict((l.rsplit(None, 1)[0], int(l.rsplit(None, 1)[1]))
                    for l in out.splitlines() if l.strip() and l.split()[-1].isdigit())


MUTT = shutil.which("mutt")
SCRIPT = shutil.which("script")     # util-linux: mutt wants a terminal


@unittest.skipUnless(MUTT and SCRIPT, "mutt (or script) is not installed")
class T17Mutt(unittest.TestCase):
    """mutt in batch mode reads the INBOX over imaps: every subject there"""
    def test_mutt_reads_the_inbox(self):
        g = Gateway("mutt")
        try:
            subjects = ["mutt reads %d" % i for i in range(3)]
            for sub in subjects:
                g.send(subject=sub)
            out = g.d.path("mutt.out")
            rc = g.d.path("muttrc")
            with open(rc, "w") as f:
                f.write('set folder="imaps://%s@127.0.0.1:%d/" spoolfile="+INBOX"\n'
                        'set imap_pass="%s" certificate_file="%s" ssl_verify_host=no\n'
                        'set header_cache="" message_cachedir="" wait_key=no pipe_split=no\n'
                        % (USER, g.imaps_port, PASSWORD, W.crt))
            # "^" would be a control key in push: grep for "Subject:" as is
            keys = ("<tag-pattern>~A<enter><tag-prefix><pipe-message>grep Subject: > %s"
                    "<enter><quit>" % out)
            cmd = "TERM=xterm %s -n -F %s -e 'push \"%s\"'" % (MUTT, rc, keys)
            p = subprocess.run([SCRIPT, "-qec", cmd, "/dev/null"], capture_output=True,
                               timeout=60, env=dict(os.environ, HOME=g.d.dir))
            self.assertEqual(p.returncode, 0, p.stdout[-2000:])
            with open(out) as f:
                got = sorted(line.strip() for line in f)
            self.assertEqual(got, ["Subject: " + sub for sub in subjects])
            self.assertIn("login: user=<%s>" % USER, g.d.log_text())
        finally:
            g.stop()


MBSYNC = shutil.which("mbsync")


@unittest.skipUnless(MBSYNC, "isync (mbsync) is not installed")
class T11Mbsync(unittest.TestCase):
    """mbsync copies the mailbox to a local Maildir: both sides equal"""
    @classmethod
    def setUpClass(cls):
        cls.g = Gateway("mbsync")
        for i in range(3):
            cls.g.send(subject="sync %d" % i, body="sync body %d\r\n" % i)

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()

    LETTERS = {"F": "\\Flagged", "S": "\\Seen", "R": "\\Answered", "T": "\\Deleted",
               "D": "\\Draft"}

    def server_side(self):
        """{body with LF line ends: flags} of the INBOX as the IMAP door shows it"""
        c = self.g.login()
        c.select("INBOX")
        out = {}
        for uid in sorted(uid_flags(c)):
            data = c.uid("FETCH", str(uid), "(FLAGS BODY.PEEK[])")[1][0]
            flags = re.search(rb"FLAGS \(([^)]*)\)", data[0]).group(1).split()
            # mbsync keeps local files with LF line ends, as Maildir readers expect
            body = data[1].replace(b"\r\n", b"\n")
            body = re.sub(rb"\nX-TUID: [^\n]*", b"", body, count=1)   # on what mbsync uploads
            out[body] = set(f.decode() for f in flags) - {"\\Recent"}
        c.logout()
        return out

    def near_side(self):
        near = {}
        for sub in ("cur", "new"):
            d = os.path.join(self.local, "INBOX", sub)
            for n in os.listdir(d):
                with open(os.path.join(d, n), "rb") as f:
                    body = f.read()
                info = n.split(":2,", 1)[1] if ":2," in n else ""
                body = re.sub(rb"\nX-TUID: [^\n]*", b"", body, count=1)   # mbsync's own mark
                near[body] = set(self.LETTERS[ch] for ch in info if ch in self.LETTERS)
        return near

    def mbsync(self, sync):
        rc = os.path.join(self.local, "rc")
        with open(rc, "w") as f:
            f.write("""IMAPAccount pc
Host localhost
Port %d
User %s
Pass %s
SSLType STARTTLS
CertificateFile %s

IMAPStore remote
Account pc

MaildirStore near
Path %s/
Inbox %s/INBOX

Channel pc
Far :remote:
Near :near:
Patterns INBOX
Sync %s
Create Near
SyncState *
""" % (self.g.imap_port, USER, PASSWORD, W.crt, self.local, self.local, sync))
        p = subprocess.run([MBSYNC, "-c", rc, "pc"], capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_sync_both_ways(self):
        c = self.g.login()
        c.select("INBOX")
        self.assertEqual(c.store("2", "+FLAGS", "(\\Flagged \\Seen)")[0], "OK")
        c.logout()
        self.local = os.path.join(self.g.d.dir, "mbsync")
        os.makedirs(self.local)
        self.maxDiff = None
        # pull: the server's messages and flags land in the local Maildir
        self.mbsync("Pull")
        self.assertEqual(sorted(self.near_side().items()), sorted(self.server_side().items()))
        self.assertEqual(len(self.near_side()), 3)
        # push: a message written locally is APPENDed, a flag set locally is STOREd
        cur = os.path.join(self.local, "INBOX", "cur")
        name = sorted(os.listdir(cur))[0]
        base, info = name.split(":2,", 1)
        os.rename(os.path.join(cur, name), os.path.join(cur, "%s:2,%s" % (
            base, "".join(sorted(set(info) | {"R", "S"})))))
        new = os.path.join(self.local, "INBOX", "new", "%d.local.test" % int(time.time()))
        with open(new, "wb") as f:
            f.write(b"From: <me@example.com>\nSubject: written offline\n\nsent later\n")
        self.mbsync("All")
        server = self.server_side()
        self.assertEqual(len(server), 4)
        self.assertEqual(sorted(self.near_side().items()), sorted(server.items()))
        self.assertIn({"\\Answered", "\\Seen"}, [f & {"\\Answered", "\\Seen"}
                                                     for f in server.values()])


def uid_flags(c):
    """{uid: flags} of the selected folder, \\Recent left out"""
    typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
    assert typ == "OK", data
    out = {}
    for line in data:
        if not isinstance(line, bytes):
            continue
        m = re.search(rb"UID (\d+)", line)
        f = re.search(rb"FLAGS \(([^)]*)\)", line)
        if m and f:
            out[int(m.group(1))] = set(f.group(1).decode().split()) - {"\\Recent"}
    return out


def select_uv(c, folder="INBOX"):
    typ, data = c.select(folder)
    assert typ == "OK", data
    return int(c.response("UIDVALIDITY")[1][0])


@unittest.skipUnless(dovecot.installed(("imap",)), "dovecot-imapd is not installed")
class T12Dovecot(unittest.TestCase):
    """Portcullis and a private Dovecot serve one store in turn: the same
    UIDVALIDITY, UIDs, flags and keywords either way"""
    def test_handover_both_ways(self):
        g = Gateway("dovecot", run_user="nobody", delivery="maildir:{dir}/state/mail")
        dc = None
        try:
            for i in range(3):
                g.send(subject="handover %d" % i)
            c = g.login()
            uv = select_uv(c)
            self.assertEqual(c.store("1", "+FLAGS", "(\\Flagged $Label1)")[0], "OK")
            self.assertEqual(c.store("2", "+FLAGS", "(\\Seen)")[0], "OK")
            ours = uid_flags(c)
            bodies = {u: c.uid("FETCH", str(u), "(BODY.PEEK[])")[1][0][1] for u in ours}
            c.logout()
            self.assertEqual(sorted(ours), [1, 2, 3])
            self.assertEqual(ours[1], {"\\Flagged", "$Label1"})

            dc = dovecot.Dovecot(g.d.dir, store=g.d.path("state", "mail"),
                                 users={USER: "{PLAIN}" + PASSWORD}).start()
            d = dc.imap(USER, PASSWORD)
            self.assertEqual(select_uv(d), uv)
            self.assertEqual(uid_flags(d), ours)
            for u, body in bodies.items():
                self.assertEqual(d.uid("FETCH", str(u), "(BODY.PEEK[])")[1][0][1], body)
            # and back: Dovecot flags, appends; Portcullis shows the same
            self.assertEqual(d.uid("STORE", "3", "+FLAGS", "(\\Answered Junk)")[0], "OK")
            self.assertEqual(d.uid("STORE", "1", "-FLAGS", "(\\Flagged)")[0], "OK")
            appended = b"From: <d@outside.test>\r\nSubject: from dovecot\r\n\r\nhi\r\n"
            self.assertEqual(d.append("INBOX", "(\\Seen)", None, appended)[0], "OK")
            theirs = uid_flags(d)
            d.logout()
            dc.stop()
            self.assertEqual(sorted(theirs), [1, 2, 3, 4])

            c = g.login()
            self.assertEqual(select_uv(c), uv)
            self.assertEqual(uid_flags(c), theirs)
            self.assertEqual(c.uid("FETCH", "4", "(BODY.PEEK[])")[1][0][1], appended)
            c.logout()
        finally:
            if dc is not None:
                dc.close()
            g.stop()


class T15UserIp(unittest.TestCase):
    """mail_max_userip_connections: the one session too many is told * BYE"""
    def test_third_session_from_one_address(self):
        g = Gateway("userip", mail_max_userip_connections="2")
        try:
            a, b = g.login(), g.login()
            c = g.imap()
            c.starttls(ssl_context=client_ctx())
            self.assertEqual(c.login(USER, PASSWORD)[0], "OK")    # as Dovecot: in, then BYE
            with self.assertRaises((imaplib.IMAP4.abort, OSError)):
                c.select("INBOX")
            self.assertIn(b"Maximum number of connections from user+IP exceeded",
                          b" ".join(x for x in c.untagged_responses.get("BYE", [])))
            # from another address, and once a session left, it is fine
            d = g.imap(source=OUTSIDE)
            self.assertEqual(d.login_cram_md5(USER, PASSWORD)[0], "OK")
            self.assertEqual(d.select("INBOX")[0], "OK")
            d.logout()
            a.logout()
            time.sleep(0.2)
            e = g.login()
            self.assertEqual(e.select("INBOX")[0], "OK")
            e.logout()
            b.logout()
        finally:
            g.stop()


class T16Config(unittest.TestCase):
    """portcullisd -t refuses what the IMAP door cannot run, naming FILE:LINE"""
    CASES = [
        ("imaps without keys", {"imaps_listen": "127.0.0.1:1993", "tls_cert_file": None,
                                "tls_key_file": None},
         r"imaps_listen needs tls_cert_file and tls_key_file"),
        ("a store the door cannot read", {"delivery": "relay:[127.0.0.1]:25"},
         r"delivery: the imap service reads the Maildir store"),
        ("an unknown mechanism", {"imap_auth_mechanisms": "PLAIN DIGEST-MD5"},
         r"imap_auth_mechanisms: \"DIGEST-MD5\" is not"),
        ("a banner with a control character", {"imap_banner": "hello\x01"},
         r"imap_banner.*control characters"),
        ("a banner too long", {"imap_banner": "x" * 301}, r"imap_banner.*300"),
        ("a listener that is not one", {"imap_listen": "localhost"}, r"imap_listen"),
        ("an idle timeout under a minute", {"imap_idle_timeout": "30"}, r"imap_idle_timeout"),
    ]

    def test_check_refuses(self):
        base = {"services": "smtp imap", "smtp_listen": "127.0.0.1:{port}",
                "state_dir": "{dir}/state", "delivery": "maildir:{dir}/mail",
                "myhostname": MYHOSTNAME, "mydomains": "example.com",
                "tls_cert_file": W.crt, "tls_key_file": W.key}
        for name, over, want in self.CASES:
            d = Daemon("conf", base, **over)
            try:
                p = run_bin("portcullisd", "-c", d.conf, "-t")
                self.assertEqual(p.returncode, 1, "%s: %s" % (name, p.stderr))
                self.assertRegex(p.stderr, want, name)
                self.assertRegex(p.stderr, re.escape(d.conf) + r":\d+|default", name)
            finally:
                d.close()
        d = Daemon("conf-ok", base)
        try:
            p = run_bin("portcullisd", "-c", d.conf, "-t")
            self.assertEqual(p.returncode, 0, p.stderr)
        finally:
            d.close()


class T18Limits(unittest.TestCase):
    """per-address limit, the login timeout, openssl s_client -starttls imap"""
    @classmethod
    def setUpClass(cls):
        cls.g = Gateway("limits", imap_max_per_client="3", imap_login_timeout="2")

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()

    def test_per_client_limit(self):
        held = [self.g.imap(source=OUTSIDE) for _ in range(3)]
        with self.assertRaisesRegex(imaplib.IMAP4.error, r"BYE \[UNAVAILABLE\] Too many "
                                    r"connections from your address"):
            self.g.imap(source=OUTSIDE)
        c = self.g.imap()     # another address
        self.assertEqual(c.noop()[0], "OK")
        c.logout()
        for h in held:
            h.logout()

    def test_login_timeout(self):
        s = socket.create_connection(("127.0.0.1", self.g.imap_port), 10)
        f = s.makefile("rb")
        self.assertTrue(f.readline().startswith(b"* OK "))
        t0 = time.monotonic()
        s.sendall(b"a NOOP\r\nb LOG")    # a request begun, never ended
        self.assertTrue(f.readline().startswith(b"a OK"))
        self.assertEqual(f.readline(), b"* BYE Disconnected for inactivity.\r\n")
        self.assertEqual(f.readline(), b"")
        self.assertLess(time.monotonic() - t0, 5)
        s.close()

    def test_login_timeout_on_a_handshake_never_begun(self):
        # imaps: the greeting waits for the TLS handshake; a client that never
        # starts one is closed at the login timeout all the same (2 s here, and
        # the 5 s service/conn gives the "* BYE" it cannot send)
        s = socket.create_connection(("127.0.0.1", self.g.imaps_port), 20)
        t0 = time.monotonic()
        self.assertEqual(s.recv(100), b"")
        self.assertLess(time.monotonic() - t0, 9)
        s.close()

    @unittest.skipUnless(shutil.which("openssl"), "openssl is not installed")
    def test_openssl_starttls(self):
        p = subprocess.run(["openssl", "s_client", "-quiet", "-starttls", "imap", "-connect",
                            "127.0.0.1:%d" % self.g.imap_port],
                           input=b"a LOGIN %s %s\r\nb LOGOUT\r\n" % (USER.encode(),
                                                                      PASSWORD.encode()),
                           capture_output=True, timeout=30)
        self.assertIn(b"a OK [CAPABILITY", p.stdout, p.stderr)
        self.assertIn(b"b OK Logout completed.", p.stdout)


class T19External(unittest.TestCase):
    """AUTHENTICATE EXTERNAL with a client certificate the CA vouches for
    (tls_verify_client = optional): offered only then (in the imaps greeting
    too: it waits for the handshake), the user is the certificate's"""
    @classmethod
    def setUpClass(cls):
        d = os.path.join(W.dir, "ext")
        os.makedirs(d, exist_ok=True)
        cls.ca_crt, cls.ca_key = os.path.join(d, "ca.crt"), os.path.join(d, "ca.key")
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                "/CN=ca.imap.test", "-keyout", cls.ca_key, "-out", cls.ca_crt)
        cls.certs = {}
        for name, cn in (("user", USER), ("nobody", "nobody@example.com")):
            key, csr, crt = (os.path.join(d, "%s.%s" % (name, x)) for x in ("key", "csr", "crt"))
            openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + cn,
                    "-keyout", key, "-out", csr)
            openssl("x509", "-req", "-in", csr, "-CA", cls.ca_crt, "-CAkey", cls.ca_key,
                    "-CAcreateserial", "-days", "2", "-out", crt)
            cls.certs[name] = (crt, key)
        cls.g = Gateway("external", tls_client_ca_file=cls.ca_crt, tls_verify_client="optional",
                        imap_auth_mechanisms="PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256 EXTERNAL")

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()

    def imaps(self, who=None):
        ctx = client_ctx()
        if who:
            ctx.load_cert_chain(*self.certs[who])
        return imaplib.IMAP4_SSL("127.0.0.1", self.g.imaps_port, ssl_context=ctx, timeout=15)

    def test_external_with_a_certificate(self):
        c = self.imaps("user")
        # the greeting waits for the handshake: its list is CAPABILITY's
        self.assertRegex(c.welcome, rb"^\* OK \[CAPABILITY [^]]* AUTH=EXTERNAL[] ]")
        c.capability()
        self.assertIn("AUTH=EXTERNAL", caps(c))
        typ, _ = c.authenticate("EXTERNAL", lambda _: b"")
        self.assertEqual(typ, "OK")
        self.assertEqual(c.select("INBOX")[0], "OK")
        c.logout()

    def test_no_certificate_no_external(self):
        c = self.imaps()
        self.assertRegex(c.welcome, rb"^\* OK \[CAPABILITY [^]]* AUTH=PLAIN[] ]")
        self.assertNotIn(b"AUTH=EXTERNAL", c.welcome)
        c.capability()
        self.assertNotIn("AUTH=EXTERNAL", caps(c))
        with self.assertRaises(imaplib.IMAP4.error):
            c.authenticate("EXTERNAL", lambda _: b"")
        c.logout()

    def test_certificate_of_an_unknown_user(self):
        c = self.imaps("nobody")
        with self.assertRaisesRegex(imaplib.IMAP4.error, r"AUTHENTICATIONFAILED"):
            c.authenticate("EXTERNAL", lambda _: b"")
        c.logout()


class T20Concurrency(unittest.TestCase):
    """many sessions at once on one folder (fetching, flagging, idling, some
    dropping mid-command) while the gateway delivers: every answer OK, every
    idler told of every delivery, the daemon clean (ASan) and still serving"""
    def test_sessions_and_deliveries_at_once(self):
        g = Gateway("concurrency", mail_max_userip_connections="0",
                    imap_max_per_client="200")
        errors = []
        try:
            for i in range(12):
                g.send(subject="seed %d" % i)

            def worker(k):
                try:
                    c = g.login()
                    c.select("INBOX")
                    for r in range(15):
                        typ, d = c.fetch("1:*", "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER])")
                        assert typ == "OK", (typ, d)
                        # each session flags a message of its own (T21StoreAllAtOnce has
                        # every session flag every message)
                        typ, d = c.store(str(k + 1), "+FLAGS" if r % 2 else "-FLAGS",
                                         "(\\Flagged $W%d)" % k)
                        assert typ == "OK", (typ, d)
                        assert c.noop()[0] == "OK"
                    if k % 3 == 0:      # gone mid-FETCH, no LOGOUT
                        c.send(b"x FETCH 1:* (BODY.PEEK[])\r\n")
                        c.sock.close()
                    else:
                        c.logout()
                except Exception as e:     # noqa: BLE001  (reported below)
                    errors.append("worker %d: %r" % (k, e))

            idlers = []
            for _ in range(3):
                c = g.login()
                n = int(c.select("INBOX")[1][0])
                tag = c._new_tag()
                c.send(tag + b" IDLE\r\n")
                assert c.readline().startswith(b"+ ")
                c.sock.settimeout(15)
                idlers.append((c, n))
            threads = [threading.Thread(target=worker, args=(k,)) for k in range(12)]
            for t in threads:
                t.start()
            for i in range(10):
                g.send(subject="during %d" % i)
            for t in threads:
                t.join(120)
            self.assertEqual(errors, [])
            for c, n in idlers:
                last = n
                while last < n + 10:
                    line = c.readline()
                    m = re.match(rb"\* (\d+) EXISTS", line)
                    if m:
                        last = int(m.group(1))
                    self.assertTrue(line.startswith(b"* "), line)
                self.assertEqual(last, n + 10)
                c.send(b"DONE\r\n")
                c.logout()
            c = g.login()
            self.assertEqual(int(c.select("INBOX")[1][0]), 22)
            flags = uid_flags(c)
            self.assertEqual(sorted(flags), list(range(1, 23)))
            for k in range(12):     # 15 rounds: the last (r = 14) took them off
                self.assertNotIn("$W%d" % k, flags[k + 1])
            c.logout()
        finally:
            g.stop()


class T21StoreAllAtOnce(unittest.TestCase):
    """every session flags every message at once (STORE 1:*): a file renamed by
    another session is found again by its base name, so each STORE and
    FETCH is OK (before: NO [LIMIT] ... it is gone, or [EXPUNGEISSUED], as
    the store looked a renamed file up only once)"""
    def test_store_1_star_from_every_session(self):
        g = Gateway("storeall", mail_max_userip_connections="0",
                    imap_max_per_client="200")
        errors = []
        try:
            for i in range(8):
                g.send(subject="seed %d" % i)

            def worker(k):
                try:
                    c = g.login()
                    c.select("INBOX")
                    for r in range(16):
                        typ, d = c.store("1:*", "+FLAGS" if r % 2 == 0 else "-FLAGS",
                                         "(\\Flagged $W%d)" % k)
                        assert typ == "OK", ("STORE", r, typ, d)
                        typ, d = c.fetch("1:*", "(UID FLAGS)")
                        assert typ == "OK", ("FETCH", r, typ, d)
                    c.logout()
                except Exception as e:     # noqa: BLE001  (reported below)
                    errors.append("worker %d: %r" % (k, e))

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            self.assertEqual(errors, [])
            c = g.login()
            self.assertEqual(int(c.select("INBOX")[1][0]), 8)
            flags = uid_flags(c)
            self.assertEqual(sorted(flags), list(range(1, 9)))
            for uid in flags:       # 16 rounds: the last (r = 15) took them off
                for k in range(8):
                    self.assertNotIn("$W%d" % k, flags[uid])
            c.logout()
        finally:
            g.stop()


class T22BodyBytes(unittest.TestCase):
    """BODY[] is the file's own bytes only when the file has no bare LF and
    no NUL (then it goes out as a file range, partials cut from it); one
    bare LF or NUL anywhere (at a 16-octet or 4 KiB edge of the scan, first
    or last octet) and BODY[] is converted: LF -> CRLF, NUL -> 0x80"""

    @classmethod
    def setUpClass(cls):
        cls.g = Gateway("bodybytes")
        cls.g.send(subject="first")         # makes the Maildir
        md = os.path.join(cls.g.d.dir, "mail", "example.com", "demo", "Maildir")
        head = b"X-Pad: " + b"p" * 60 + b"\r\nSubject: bytes %d\r\n\r\n"
        line = b"the quick brown fox jumps over the lazy dog 0123456789\r\n"
        cls.files = []

        def put(i, data):
            name = "%d.M%dP1Q1.bodybytes" % (int(time.time()), i)
            with open(os.path.join(md, "tmp", name), "wb") as f:
                f.write(data)
            os.rename(os.path.join(md, "tmp", name), os.path.join(md, "new", name))
            cls.files.append(data)

        def msg(i):
            m = bytearray(head % i + line * 200)        # ~11 KB, CRLF only
            return m
        cases = [
            ("plain", None),
            ("bare LF at 4097", (4097, b"\n")), ("bare LF at 4096", (4096, b"\n")),
            ("bare LF at 16", (16, b"\n")), ("bare LF at 31", (31, b"\n")),
            ("bare LF last", (-1, b"\n")), ("NUL at 4096", (4096, b"\0")),
            ("NUL at 17", (17, b"\0")), ("NUL last", (-1, b"\0")),
        ]
        cls.names = []
        for i, (what, change) in enumerate(cases):
            m = msg(i)
            if change is not None:
                at, c = change
                at = len(m) - 1 if at < 0 else at
                if c == b"\n":      # a bare LF: the CR before it goes (not a CRLF any more)
                    while m[at - 1:at] == b"\r" or m[at:at + 1] == b"\n":
                        at += 1
                    m[at:at + 1] = b"\n"
                else:
                    m[at:at + 1] = c
            put(i, bytes(m))
            cls.names.append(what)
        # a CR at the end of a 16-octet block, its LF opening the next: plain
        m = bytearray(msg(len(cases)))
        k = m.index(b"\r\n", 4000)
        pad = (15 - k % 16) % 16
        m[k - 1:k - 1] = b"x" * pad
        assert m[k + pad:k + pad + 2] == b"\r\n" and (k + pad) % 16 == 15
        put(len(cases), bytes(m))
        cls.names.append("CRLF across a 16-octet edge")

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()

    @staticmethod
    def converted(b):
        out = bytearray()
        for i, c in enumerate(b):
            if c == 10 and (i == 0 or b[i - 1] != 13):
                out += b"\r"
            out.append(0x80 if c == 0 else c)
        return bytes(out)

    def test_whole_and_partial(self):
        c = self.g.imap()
        self.assertEqual(c.login_cram_md5(USER, PASSWORD)[0], "OK")
        c.select("INBOX")
        seqs = {}
        typ, got = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        for d in got:
            if isinstance(d, tuple):
                m = re.search(rb"Subject: bytes (\d+)", d[1])
                if m:
                    seqs[int(m.group(1))] = d[0].split()[0].decode()
        self.assertEqual(len(seqs), len(self.files))
        for k, (data, what) in enumerate(zip(self.files, self.names)):
            seq = seqs[k]
            want = self.converted(data)
            typ, got = c.fetch(seq, "(RFC822.SIZE BODY.PEEK[])")
            self.assertEqual(typ, "OK", what)
            self.assertEqual(got[0][1], want, what)
            self.assertIn(b"RFC822.SIZE %d " % len(want), got[0][0], what)
            if b"\n" in data.replace(b"\r\n", b""):
                continue        # partials of a bare-LF file: the diff test's (Dovecot's cut)
            for off, n in ((0, 10), (4090, 20), (len(want) - 5, 100), (len(want), 10),
                           (len(want) + 7, 10), (0, len(want) + 5)):
                typ, got = c.fetch(seq, "(BODY.PEEK[]<%d.%d>)" % (off, n))
                self.assertEqual(typ, "OK", what)
                part = got[0][1] if isinstance(got[0], tuple) else b""
                self.assertEqual(part, want[off:off + n], "%s <%d.%d>" % (what, off, n))
        c.logout()


class T23SlowReader(unittest.TestCase):
    """FETCH 1:* BODY.PEEK[] of 40 x 1 MB from a client that stops reading:
    the worker's own memory (RssAnon) and open files stay bounded while it
    waits (the socket holds what it takes; the session queues a few batches
    of file ranges); then every byte arrives, plaintext and TLS"""
    N = 40
    SIZE = 1024 * 1024

    @classmethod
    def setUpClass(cls):
        cls.g = Gateway("slowreader", env={"ASAN_OPTIONS": "detect_leaks=1:quarantine_size_mb=4"})
        cls.g.send(subject="first")
        md = os.path.join(cls.g.d.dir, "mail", "example.com", "demo", "Maildir")
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_=+.,%06d\r\n"
        cls.total = 0
        for i in range(cls.N):
            body = b"".join(line % k for k in range(cls.SIZE // len(line % 0)))
            data = b"From: <s@outside.test>\r\nSubject: slow %d\r\n\r\n" % i + body
            if i % 8 == 7:
                data = data.replace(b"\r\n", b"\n")     # bare LF: converted as it goes
            name = "%d.M%dP1Q1.slow" % (int(time.time()), i)
            with open(os.path.join(md, "tmp", name), "wb") as f:
                f.write(data)
            os.rename(os.path.join(md, "tmp", name), os.path.join(md, "new", name))
            cls.total += len(T22BodyBytes.converted(data)) if i % 8 == 7 else len(data)

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()

    def worker_pid(self):
        return int(re.findall(r"portcullisd/imap\[(\d+)\]", self.g.d.log_text())[-1])

    def run_slow(self, c, how):
        pid = self.worker_pid()
        c.select("INBOX", readonly=True)
        base = T10BigMessage.rss_anon(pid)
        fds0 = len(os.listdir("/proc/%d/fd" % pid))
        sock = c.socket()
        sock.sendall(b"S1 FETCH 1:* (BODY.PEEK[])\r\n")
        peak, fds = base, fds0
        t_end = time.monotonic() + 3        # the client reads nothing for 3 s
        while time.monotonic() < t_end:
            peak = max(peak, T10BigMessage.rss_anon(pid))
            fds = max(fds, len(os.listdir("/proc/%d/fd" % pid)))
            time.sleep(0.01)
        self.assertLess(peak - base, 8 * 1024 * 1024, "%s: the worker grew by %d" % (how, peak - base))
        self.assertLess(fds - fds0, 20, "%s: %d files open for one session" % (how, fds - fds0))
        # now read it all
        got, n, sizes = 0, 0, []
        f = c.file
        while True:
            ln = f.readline()
            self.assertTrue(ln, "%s: connection closed" % how)
            if ln.startswith(b"S1 "):
                self.assertTrue(ln.startswith(b"S1 OK"), ln)
                break
            m = re.search(rb"\{(\d+)\}\r\n$", ln)
            if m:
                size = int(m.group(1))
                left = size
                while left:
                    chunk = f.read(min(left, 1 << 20))
                    self.assertTrue(chunk)
                    left -= len(chunk)
                got += size
                n += 1
                sizes.append(size)
        # and the one the SMTP gateway delivered first, a few hundred octets
        sizes.sort()
        self.assertEqual((n, sum(sizes[1:])), (self.N + 1, self.total), how)
        self.assertLess(sizes[0], 1000, how)
        print("\n  %s: %d messages, worker's anonymous RSS peak +%d KiB, %d more files open"
              " while the client did not read" % (how, n, (peak - base) // 1024, fds - fds0),
              file=sys.stderr)

    def test_plain(self):
        c = self.g.imap()
        self.assertEqual(c.login_cram_md5(USER, PASSWORD)[0], "OK")
        self.run_slow(c, "plaintext")
        c.logout()

    def test_tls(self):
        c = self.g.login()
        self.run_slow(c, "STARTTLS")
        c.logout()


class T13Reload(unittest.TestCase):
    """portcullis reload: new connections get the new settings; a session
    open before it is told * BYE and its client may reconnect"""
    def test_reload_banner_and_old_session(self):
        g = Gateway("reload")
        try:
            old = g.login()
            self.assertEqual(old.select("INBOX")[0], "OK")
            idler = g.login()
            self.assertEqual(idler.select("INBOX")[0], "OK")
            idler.send(idler._new_tag() + b" IDLE\r\n")
            self.assertTrue(idler.readline().startswith(b"+ "))
            g.d.write_config(imap_banner="Reloaded and ready")
            p = g.d.cli("reload")
            self.assertIn("reloaded", p.stdout)
            c = g.imap()
            self.assertTrue(c.welcome.decode().endswith("] Reloaded and ready"), c.welcome)
            c.logout()
            # the old worker said BYE to the old session
            old.sock.settimeout(10)
            line = old.readline()
            self.assertRegex(line, rb"^\* BYE \[UNAVAILABLE\] Server shutting down")
            idler.sock.settimeout(10)
            self.assertRegex(idler.readline(), rb"^\* BYE \[UNAVAILABLE\] Server shutting down")
            self.assertEqual(idler.readline(), b"")     # and closed
            wait_until(lambda: "imap: draining" in g.d.log_text(), 10, what="the drain")
        finally:
            g.stop()


@unittest.skipUnless(CURL, "curl is not installed")
class T05Curl(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.g = Gateway("curl")
        cls.g.send(subject="for curl")

    @classmethod
    def tearDownClass(cls):
        cls.g.stop()

    def curl(self, url, *extra):
        p = subprocess.run([CURL, "-sS", "-k", "--max-time", "20", "-u",
                            "%s:%s" % (USER, PASSWORD)] + list(extra) + [url],
                           capture_output=True, timeout=30)
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    def test_list_over_starttls(self):
        rc, out, err = self.curl("imap://127.0.0.1:%d/" % self.g.imap_port, "--ssl-reqd")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r'(?m)^\* LIST \(.*\) "\." "?INBOX"?\r?$')

    def test_list_over_imaps(self):
        rc, out, err = self.curl("imaps://127.0.0.1:%d/" % self.g.imaps_port)
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r'(?m)^\* LIST \(.*\) "\." "?INBOX"?\r?$')

    def test_fetch_a_message(self):
        want = self.g.login()
        want.select("INBOX")
        body = want.fetch("1", "(BODY.PEEK[])")[1][0][1]
        want.logout()
        for url, extra in (("imap://127.0.0.1:%d/INBOX/;UID=1" % self.g.imap_port, ["--ssl-reqd"]),
                           ("imaps://127.0.0.1:%d/INBOX/;UID=1" % self.g.imaps_port, [])):
            p = subprocess.run([CURL, "-sS", "-k", "--max-time", "20", "-u",
                                "%s:%s" % (USER, PASSWORD)] + extra + [url],
                               capture_output=True, timeout=30)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stdout, body, url)
            self.assertIn(b"Subject: for curl\r\n", p.stdout)

    def test_no_password_in_the_clear(self):
        # curl's choice without TLS is a challenge-response mechanism: served
        rc, out, err = self.curl("imap://127.0.0.1:%d/" % self.g.imap_port)
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r'(?m)^\* LIST \(.*\) "\." "?INBOX"?\r?$')
        # a password in the clear is not
        rc, out, err = self.curl("imap://127.0.0.1:%d/" % self.g.imap_port,
                                 "--login-options", "AUTH=PLAIN")
        self.assertNotEqual(rc, 0, out)


class T06KillList(unittest.TestCase):
    def test_kill_listed_address_gets_bye_at_connect(self):
        g = Gateway("kill")
        try:
            g.d.cli("kill", "add", OUTSIDE)
            wait_until(lambda: "lists reloaded" in g.d.log_text(), 10, what="the lists reload")
            time.sleep(0.3)
            with self.assertRaisesRegex(imaplib.IMAP4.error, r"BYE.*kill list"):
                g.imap(source=OUTSIDE)
            c = g.imap()    # 127.0.0.1 is not listed
            self.assertEqual(c.noop()[0], "OK")
            c.logout()
            self.assertIn("reason=kill-ip", g.d.log_text())
        finally:
            g.stop()


class T07Penalty(unittest.TestCase):
    def test_failures_delay_then_ban(self):
        g = Gateway("penalty", auth_allow_plaintext="yes", auth_failure_delay="1s",
                    auth_failure_delay_max="1s", auth_failure_ban="3/10m",
                    auth_failure_ban_time="1h")
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
            self.assertIn("auth-ban", g.d.cli("kill", "list").stdout)
            wait_until(lambda: "lists reloaded" in g.d.log_text(), 10, what="the lists reload")
            time.sleep(0.5)
            with self.assertRaisesRegex(imaplib.IMAP4.error, r"BYE.*kill list"):
                g.imap(source=OUTSIDE)
            # the right password from elsewhere still works
            c = g.imap()
            self.assertEqual(c.login(USER, PASSWORD)[0], "OK")
            c.logout()
        finally:
            g.stop()


if __name__ == "__main__":
    sys.exit(runner.main())
