#!/usr/bin/python3
"""The standalone SMTP gateway (services = smtp) driven by real clients:
python smtplib where a well-behaved client fits, raw sockets where the test
is about bytes on the wire (pipelining, SMTP smuggling, over-long lines).
Asserts what the client was told, what landed in the Maildir store and what
the daemon logged.  No Postfix, no DNS, loopback only.

Run:  python3 tests/integration/test_smtp_gateway.py [TestClass[.test_name] ...]
Env:  PORTCULLIS_BIN (default <repo>/bin; e.g. build/asan/bin after `make asan`),
      KEEP_LAB=1 keeps each daemon's directory (config, log, lists, mail),
      LAB_VERBOSE=1 prints every SMTP step.
Last line printed: "N passed, N failed"; exit status 1 on any failure.

Each configuration runs its own portcullisd (own port, own directory):
    main       the defaults plus max_recipients = 3, message_size_limit = 100000
    strict     null_sender = reject, smtp_max_per_client = 2, smtp_timeout = 1
    normalize  smtp_bare_newline = normalize
    restart    a throw-away daemon whose smtp worker is SIGKILLed
Every daemon is stopped with SIGTERM at the end of its class; the last class
checks that each exited 0 promptly, left no worker behind and that no log
holds a sanitizer report.

Client addresses (all loopback): 127.0.0.5 is "outside", 127.0.0.2 is in
relay_networks; every other test uses a 127.0.0.N of its own (named in the
test), so per-client limits and list entries never leak between tests, and
list tests delete their entries afterwards.

test_PENDING_RELAYHOST_*: asserts today's 451 4.3.5 "no relayhost is
configured"; update it when pass-through to a relayhost is built.
"""

import os
import re
import signal
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import daemon as hdaemon, runner                # noqa: E402
from harness.client import SmtpClient, make_message, new_marker  # noqa: E402
from harness.daemon import BIN                                # noqa: E402
from harness.ports import port_accepts                        # noqa: E402

MYHOSTNAME = "mx.example.com"
HELO = "client.portcullis.test"
OUTSIDE = "127.0.0.5"
RELAYNET = "127.0.0.2"
USERS = ("alice", "bob", "carol", "dave", "erin")
SIZE_LIMIT = 100000
# A list change must apply within 1 s: the last attempt starts at 1 s.
LIST_DELAY = 1.0
VERBOSE = os.environ.get("LAB_VERBOSE") == "1"

DAEMONS = {}            # name -> Daemon, for the final log check
STOPPED = []            # (name, (rc, took, killed), workers left, sanitizer lines, log path)


def _log(msg):
    if VERBOSE:
        sys.stderr.write("gw: %s\n" % msg)


def binary_is_asan():
    """True when PORTCULLIS_BIN holds an AddressSanitizer build."""
    try:
        with open(os.path.join(BIN, "portcullisd"), "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def vm_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for l in f:
            if l.startswith("VmRSS:"):
                return int(l.split()[1])
    return 0


def poll(attempt, ok, within):
    """Run attempt() until ok(result); the last try starts at or after
    `within` seconds.  Returns (result, seconds-until-ok or None)."""
    t0 = time.monotonic()
    while True:
        started = time.monotonic() - t0
        r = attempt()
        if ok(r):
            return r, started
        if started >= within:
            return r, None
        time.sleep(0.05)


# ---------------------------------------------------------------- the daemon
GW = (("services", "smtp"), ("smtp_listen", "127.0.0.1:{port}"), ("myhostname", MYHOSTNAME),
      ("mydomains", "example.com"), ("relay_networks", RELAYNET), ("state_dir", "{dir}/state"),
      ("lists", "file:{dir}/lists"), ("users", "file:{dir}/users"),
      ("delivery", "maildir:{dir}/mail"), ("log_level", "info"))


class Daemon(hdaemon.Daemon):
    """One portcullisd with services = smtp in its own directory."""

    def __init__(self, name, **overrides):
        super().__init__("gw-%s" % name, GW, **overrides)
        self.name = name
        self.mail_dir = self.path("mail")
        self.users_path = self.path("users")
        self.write_users(USERS)
        DAEMONS[name] = self

    def write_users(self, locals_):
        tmp = self.users_path + ".tmp"
        with open(tmp, "w") as f:
            for u in locals_:
                f.write("%s@example.com:{CRYPT}$y$j9T$notarealhash$%s::::::\n" % (u, "x" * 20))
        os.rename(tmp, self.users_path)

    def start(self):
        return super().start(ready=lambda: "smtp ready on" in self.log_text() and
                             port_accepts("127.0.0.1", self.port))

    def stop(self, grace=5.0):
        """SIGTERM; SIGKILL after grace.  Records (rc, took, killed), the
        workers still alive afterwards and the sanitizer lines."""
        res = super().stop(grace)
        if res is not None:
            STOPPED.append((self.name, res, self.last_left, self.sanitizer_lines(),
                            self.log_path))
        return res

    # admin command
    def cli(self, *args, check=True):
        p = super().cli(*args, check=False, timeout=20)
        if check and p.returncode != 0:
            raise AssertionError("portcullis %s exited %d: %s %s" % (
                " ".join(args), p.returncode, p.stdout, p.stderr))
        return p

    # store
    def maildir(self, local, sub="new"):
        return os.path.join(self.mail_dir, "example.com", local, "Maildir", sub)

    def stored(self, marker, subs=("new", "cur")):
        """[(path, bytes)] of every stored file (any user) holding marker."""
        out = []
        base = os.path.join(self.mail_dir, "example.com")
        if not os.path.isdir(base):
            return out
        for local in sorted(os.listdir(base)):
            for sub in subs:
                d = os.path.join(base, local, "Maildir", sub)
                try:
                    names = sorted(os.listdir(d))
                except OSError:
                    continue
                for n in names:
                    p = os.path.join(d, n)
                    try:
                        with open(p, "rb") as f:
                            data = f.read()
                    except OSError:
                        continue
                    if marker.encode() in data:
                        out.append((p, data))
        return out

    def tmp_files(self):
        out = []
        base = os.path.join(self.mail_dir, "example.com")
        if os.path.isdir(base):
            for local in os.listdir(base):
                d = os.path.join(base, local, "Maildir", "tmp")
                if os.path.isdir(d):
                    out += [os.path.join(d, n) for n in os.listdir(d)]
        return out

    # clients
    def client(self, source=OUTSIDE, helo=HELO, timeout=10):
        return SmtpClient("127.0.0.1", self.port, source, helo, timeout)

    def raw(self, source=OUTSIDE, timeout=5):
        return Raw(self.port, source, timeout)


# ------------------------------------------------------------- raw client
class Raw:
    """A plain TCP client: send bytes, read whole SMTP replies."""

    def __init__(self, port, source, timeout=5):
        self.source = source
        self.sock = socket.create_connection(("127.0.0.1", port), timeout,
                                             source_address=(source, 0))
        self.buf = b""
        self.eof = False
        self.log = []

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.log.append(("C", data))
        _log("%s C: %r" % (self.source, data[:200]))
        self.sock.sendall(data)

    def _fill(self, deadline):
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def reply(self, timeout=5.0):
        """One whole (possibly multi-line) reply: (code, text with lines
        joined by ' | '), or (None, 'closed' / 'timeout') when there is none."""
        deadline = time.monotonic() + timeout
        lines = []
        while True:
            while b"\n" not in self.buf:
                if not self._fill(deadline):
                    if lines or self.buf:
                        self.log.append(("S", b"<partial> " + b"\n".join(lines) + self.buf))
                    return None, ("closed" if self.eof else "timeout")
            line, self.buf = self.buf.split(b"\n", 1)
            line = line.rstrip(b"\r")
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                break
        text = " | ".join(l.decode("utf-8", "replace") for l in lines)
        self.log.append(("S", text.encode()))
        _log("%s S: %s" % (self.source, text))
        m = re.match(r"(\d{3})[ -]?(.*)", lines[-1].decode("utf-8", "replace"))
        if not m:
            return 0, text
        return int(m.group(1)), text

    def replies(self, quiet=0.5, timeout=5.0):
        """Every reply until none arrives for `quiet` seconds (or EOF)."""
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code, text = self.reply(quiet)
            if code is None:
                break
            out.append((code, text))
        return out

    def take(self, n, timeout=5.0):
        """The next n replies (fewer if the connection ends or stalls)."""
        out = []
        for _ in range(n):
            got = self.reply(timeout)
            if got[0] is None:
                break
            out.append(got)
        return out

    def rest(self, timeout=3.0):
        """Every reply until the server closes (after QUIT or a 421/554)."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            got = self.reply(max(0.0, deadline - time.monotonic()))
            if got[0] is None:
                return out
            out.append(got)

    def closed_within(self, timeout):
        """True if the server closes the connection within timeout seconds
        (any bytes still arriving are read and kept)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            if not self._fill(deadline) and not self.eof:
                return False
        return True

    def transcript(self):
        return "\n".join("  %s %s" % (who, d[:300]) for who, d in self.log)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ------------------------------------------------------------- test base
class GatewayCase(unittest.TestCase):
    """A class runs one daemon (DAEMON name with OVERRIDES); failures show
    what the client saw and the daemon log lines written during the test."""
    DAEMON = "main"
    OVERRIDES = {}
    maxDiff = None
    d = None

    @classmethod
    def setUpClass(cls):
        d = DAEMONS.get(cls.DAEMON)
        if d is None or d.proc is None:
            d = Daemon(cls.DAEMON, **cls.OVERRIDES)
            d.start()
        cls.d = d

    @classmethod
    def tearDownClass(cls):
        # the last class using a daemon stops it; see CASES
        if getattr(cls, "STOP_AFTER", False) and cls.d is not None:
            cls.d.stop()

    def setUp(self):
        self.mark = self.d.log_mark()
        self.raws = []

    def tearDown(self):
        for r in self.raws:
            r.close()

    def raw(self, source, read_greeting=True):
        r = self.d.raw(source)
        self.raws.append(r)
        if read_greeting:
            code, text = r.reply()
            self.assertEqual(code, 220, "greeting for %s: %s\n%s" % (
                source, text, self.ctx(r)))
        return r

    def raw_ehlo(self, source):
        """A raw connection past EHLO (its reply read), ready to pipeline."""
        r = self.raw(source)
        r.send("EHLO %s\r\n" % HELO)
        got = r.reply()
        self.assertEqual(got[0], 250, "EHLO: %s\n%s" % (got, self.ctx(r)))
        return r

    def ctx(self, c=None):
        out = []
        if c is not None:
            out.append("client transcript:\n" + c.transcript())
        log = self.d.log_since(self.mark).strip()
        out.append("daemon log during the test (%s):\n%s" % (
            self.d.log_path, log or "(nothing)"))
        return "\n".join(out)

    def assertStep(self, c, prefix, code, text_re=None, what=""):
        st = c.step(prefix)
        self.assertIsNotNone(st, "no %s step\n%s" % (prefix, self.ctx(c)))
        ok = st.code == code and (text_re is None or re.search(text_re, st.text))
        self.assertTrue(ok, "%s: %s got %s %s, want %s %s\n%s" % (
            what or prefix, st.cmd[:80], st.code, st.text, code, text_re or "", self.ctx(c)))

    def assertReply(self, got, code, text_re=None, what="", c=None):
        ok = got[0] == code and (text_re is None or re.search(text_re, got[1] or ""))
        self.assertTrue(ok, "%s: got %s %s, want %s %s\n%s" % (
            what, got[0], got[1], code, text_re or "", self.ctx(c)))

    def assertNotStored(self, marker, c=None):
        found = self.d.stored(marker)
        self.assertEqual(found, [], "message %s was stored: %s\n%s" % (
            marker, [p for p, _ in found], self.ctx(c)))

    def send_local(self, source, rcpts, message, sender="sender@outside.test"):
        c = self.d.client(source)
        c.connect()
        c.ehlo()
        c.mail(sender)
        for r in rcpts:
            c.rcpt(r)
        c.data(message)
        c.quit()
        return c


# ------------------------------------------------------------- main daemon
MAIN = {"max_recipients": 3, "message_size_limit": SIZE_LIMIT,
        "smtp_bare_newline": "reject", "vrfy": "no", "null_sender": "accept"}


class T01Session(GatewayCase):
    OVERRIDES = MAIN

    def test_greeting_exact(self):
        r = self.raw("127.0.0.11", read_greeting=False)
        code, text = r.reply()
        self.assertEqual((code, text), (220, "220 %s ESMTP" % MYHOSTNAME),
                         "greeting\n" + self.ctx(r))
        self.assertNotRegex(text.lower(), r"portcullis|\d+\.\d+",
                            "greeting names the software or a version")

    def test_ehlo_extensions(self):
        c = self.d.client("127.0.0.11")
        c.connect()
        code, text = c.ehlo()
        c.quit()
        self.assertEqual(code, 250, self.ctx(c))
        lines = [l.strip().upper() for l in text.split("|")]
        self.assertEqual(lines[0], MYHOSTNAME.upper(), "first EHLO line\n" + self.ctx(c))
        for ext in ("PIPELINING", "SIZE %d" % SIZE_LIMIT, "ENHANCEDSTATUSCODES", "8BITMIME"):
            self.assertIn(ext, lines, "EHLO does not offer %s\n%s" % (ext, self.ctx(c)))
        self.assertFalse([l for l in lines if l.startswith("VRFY")],
                         "EHLO offers VRFY with vrfy = no\n" + self.ctx(c))

    def test_vrfy_and_expn_disabled(self):
        c = self.d.client("127.0.0.11")
        c.connect()
        c.ehlo()
        c.raw("VRFY alice")
        c.raw("VRFY <alice@example.com>")
        c.raw("EXPN staff")
        c.quit()
        for st in c.steps:
            if st.cmd.startswith(("VRFY", "EXPN")):
                self.assertTrue(st.code == 502 and st.text.startswith("5.5.1"),
                                "%r\n%s" % (st, self.ctx(c)))
        # a disabled VRFY must not tell alice (exists) from nobody (does not)
        self.assertNotIn("alice", " ".join(s.text for s in c.steps if s.cmd.startswith("VRFY")))

    def test_noop_rset_help_quit(self):
        c = self.d.client("127.0.0.11")
        c.connect()
        c.ehlo()
        c.raw("NOOP")
        c.raw("RSET")
        code, text = c.quit()
        self.assertStep(c, "NOOP", 250, r"^2\.0\.0")
        self.assertStep(c, "RSET", 250, r"^2\.0\.0")
        self.assertEqual(code, 221, self.ctx(c))

    def test_command_before_helo_refused(self):
        c = self.d.client("127.0.0.11")
        c.connect()
        c.mail("a@b.org")
        c.quit()
        self.assertStep(c, "MAIL", 503, r"^5\.5\.1", "MAIL before EHLO")


class T02LocalDelivery(GatewayCase):
    OVERRIDES = MAIN

    def test_local_user_delivered_whole(self):
        m = new_marker("local")
        msg = make_message(m, to="alice@example.com",
                           body=["first line", ".x", ".", "..", " .y", "last body line"])
        c = self.send_local("127.0.0.12", ["alice@example.com"], msg)
        self.assertStep(c, "MAIL", 250, r"^2\.1\.0")
        self.assertStep(c, "RCPT", 250, r"^2\.1\.5")
        self.assertStep(c, "DATA", 354)
        self.assertStep(c, "<message>", 250, r"^2\.0\.0 Ok: \S+")
        qid = c.step("<message>").text.split("Ok: ", 1)[1].strip()
        found = self.d.stored(m)
        self.assertEqual(len(found), 1, "want one stored copy, got %s\n%s" % (
            [p for p, _ in found], self.ctx(c)))
        path, data = found[0]
        self.assertEqual(os.path.dirname(path), self.d.maildir("alice", "new"))
        # final delivery: Return-Path: first (RFC 5321 4.4), then our Received:
        self.assertTrue(data.startswith(b"Return-Path: <"), "first header: %r" % data[:80])
        data = data[data.index(b"\r\n") + 2:]
        self.assertTrue(data.startswith(b"Received: "), "second header: %r" % data[:80])
        # the Received header: folded lines up to the first unindented line
        rec_end = re.search(rb"\r\n(?![ \t])", data).end()
        received = data[:rec_end]
        self.assertIn(b"by " + MYHOSTNAME.encode(), received)
        self.assertIn(b"[127.0.0.12]", received)
        self.assertIn(b"<alice@example.com>", received)
        # the rest is exactly what the client sent (stuffing removed)
        self.assertEqual(data[rec_end:], msg.encode(),
                         "stored message differs from the one sent\n" + self.ctx(c))
        # on the wire "..x", "..", "...": stored ".x", ".", ".."
        self.assertIn(b"\r\nfirst line\r\n.x\r\n.\r\n..\r\n .y\r\n", data)
        self.assertIn(qid, self.d.log_since(self.mark), "queue id not in the log\n" + self.ctx(c))

    def test_two_recipients_two_mailboxes_one_unknown(self):
        m = new_marker("two")
        c = self.send_local("127.0.0.12", ["bob@example.com", "nosuchuser@example.com",
                                           "carol@example.com"],
                            make_message(m, to="bob@example.com"))
        rc = [s for s in c.steps if s.cmd.startswith("RCPT")]
        self.assertEqual([s.code for s in rc], [250, 550, 250], self.ctx(c))
        self.assertTrue(rc[1].text.startswith("5.1.1"), self.ctx(c))
        self.assertStep(c, "<message>", 250, r"^2\.0\.0")
        dirs = sorted(os.path.dirname(p) for p, _ in self.d.stored(m))
        self.assertEqual(dirs, sorted([self.d.maildir("bob"), self.d.maildir("carol")]),
                         self.ctx(c))

    def test_unknown_local_user(self):
        c = self.d.client("127.0.0.12")
        c.connect()
        c.ehlo()
        c.mail("sender@outside.test")
        c.rcpt("nosuchuser@example.com")
        code, _ = c.raw("DATA")
        c.quit()
        self.assertStep(c, "RCPT", 550, r"^5\.1\.1 ")
        self.assertEqual(code // 100, 5, "DATA without a valid recipient\n" + self.ctx(c))

    def test_outside_client_relay_denied(self):
        m = new_marker("relay")
        c = self.send_local(OUTSIDE, ["user@other.org"], make_message(m, to="user@other.org"))
        self.assertStep(c, "RCPT", 550, r"^5\.7\.1 <user@other\.org>: Relay access denied")
        self.assertIsNone(c.step("<message>"), "message was sent\n" + self.ctx(c))
        self.assertRegex(self.d.log_since(self.mark), r"reject: RCPT from \S*\[127\.0\.0\.5\].*"
                         r"reason=relay")

    def test_PENDING_RELAYHOST_relaynet_client_to_other_org(self):
        """UPDATE when pass-through lands: today an allowed client's relayed
        recipient gets 451 4.3.5 (no relayhost is configured)."""
        c = self.d.client(RELAYNET)
        c.connect()
        c.ehlo()
        c.mail("sender@example.com")
        c.rcpt("user@other.org")
        c.quit()
        self.assertStep(c, "RCPT", 451, r"^4\.3\.5 .*no relayhost is configured")

    def test_users_file_reload(self):
        """A user added to the users file is known within ~1 s."""
        c0 = self.d.client("127.0.0.13")
        c0.connect()
        c0.ehlo()
        c0.mail("a@b.org")
        c0.rcpt("frank@example.com")
        c0.quit()
        self.assertStep(c0, "RCPT", 550, r"^5\.1\.1", "frank before he is added")
        self.d.write_users(USERS + ("frank",))
        try:
            def attempt():
                c = self.d.client("127.0.0.13")
                c.connect()
                c.ehlo()
                c.mail("a@b.org")
                c.rcpt("frank@example.com")
                c.quit()
                return c
            c, t = poll(attempt, lambda c: c.step("RCPT").code == 250, 1.5)
            self.assertIsNotNone(t, "frank still unknown 1.5 s after the users file changed\n"
                                 + self.ctx(c))
        finally:
            self.d.write_users(USERS)


class T03Lists(GatewayCase):
    OVERRIDES = MAIN

    def test_kill_listed_client_greeting(self):
        ip = "127.0.0.6"
        self.d.cli("kill", "add", ip, "--reason", "gw test")
        try:
            def attempt():
                r = self.d.raw(ip)
                self.raws.append(r)
                return r, r.reply()
            (r, got), t = poll(attempt, lambda x: x[1][0] == 554, LIST_DELAY)
            self.assertIsNotNone(t, "kill-listed client still greeted after %.1fs: %s\n%s" % (
                LIST_DELAY, got, self.ctx(r)))
            self.assertReply(got, 554, r"^554 5\.7\.1 ", "greeting to a kill-listed client", r)
            self.assertTrue(r.closed_within(2), "connection left open after 554\n" + self.ctx(r))
            # another client is still served
            ok = self.raw("127.0.0.14")
            ok.send("QUIT\r\n")
        finally:
            self.d.cli("kill", "del", ip)

    def test_kill_reaches_open_connection(self):
        """Client entries are looked up at every MAIL and RCPT."""
        ip = "127.0.0.17"
        r = self.raw_ehlo(ip)
        self.d.cli("kill", "add", ip)
        try:
            def attempt():
                r.send("MAIL FROM:<a@b.org>\r\n")
                got = r.reply()
                if got[0] == 250:
                    r.send("RSET\r\n")
                    r.reply()
                return got
            got, t = poll(attempt, lambda g: g[0] != 250, LIST_DELAY)
            self.assertIsNotNone(t, "open connection still accepted MAIL %.1fs after the "
                                 "kill entry\n%s" % (LIST_DELAY, self.ctx(r)))
            self.assertReply(got, 550, r"^550 5\.7\.1 ", "MAIL on an open connection", r)
        finally:
            self.d.cli("kill", "del", ip)

    def test_accept_list_beats_kill_list(self):
        ip = "127.0.3.1"
        self.d.cli("accept", "add", ip)
        self.d.cli("kill", "add", "127.0.3.0/30")
        try:
            time.sleep(LIST_DELAY)
            r = self.raw(ip, read_greeting=False)
            self.assertReply(r.reply(), 220, None, "kill-listed CIDR, accept-listed address", r)
            # a neighbour in the CIDR without an accept entry is refused
            n = self.raw("127.0.3.2", read_greeting=False)
            self.assertReply(n.reply(), 554, r"^554 5\.7\.1 ", "kill-listed CIDR", n)
        finally:
            self.d.cli("kill", "del", "127.0.3.0/30")
            self.d.cli("accept", "del", ip)

    def _mail_refused(self, source, sender, entry):
        self.d.cli("kill", "add", entry)
        try:
            def attempt():
                c = self.d.client(source)
                c.connect()
                c.ehlo()
                c.mail(sender)
                c.quit()
                return c
            c, t = poll(attempt, lambda c: c.step("MAIL").code == 550, LIST_DELAY)
            self.assertIsNotNone(t, "MAIL from %s not refused after %.1fs\n%s" % (
                sender, LIST_DELAY, self.ctx(c)))
            self.assertStep(c, "MAIL", 550, r"^5\.7\.1 ")
        finally:
            self.d.cli("kill", "del", entry)

    def test_kill_listed_sender(self):
        self._mail_refused("127.0.0.15", "spammer@bad.example.org", "spammer@bad.example.org")

    def test_kill_listed_sender_domain(self):
        self._mail_refused("127.0.0.15", "anyone@baddomain.org", "@baddomain.org")

    def test_max_recipients(self):
        m = new_marker("maxrcpt")
        c = self.send_local("127.0.0.16", ["alice@example.com", "bob@example.com",
                                           "carol@example.com", "dave@example.com"],
                            make_message(m, to="alice@example.com"))
        rc = [s for s in c.steps if s.cmd.startswith("RCPT")]
        self.assertEqual([s.code for s in rc], [250, 250, 250, 452], self.ctx(c))
        self.assertTrue(rc[3].text.startswith("4.5.3"), self.ctx(c))
        self.assertStep(c, "<message>", 250, r"^2\.0\.0")
        dirs = sorted(os.path.dirname(p) for p, _ in self.d.stored(m))
        self.assertEqual(dirs, sorted(self.d.maildir(u) for u in ("alice", "bob", "carol")),
                         self.ctx(c))

    def test_refused_recipients_do_not_count_toward_max_recipients(self):
        """Postfix counts accepted recipients only: three unknown users (550)
        leave room for three real ones under max_recipients = 3."""
        m = new_marker("maxrcpt-refused")
        rcpts = ["nobody1@example.com", "nobody2@example.com", "nobody3@example.com",
                 "alice@example.com", "bob@example.com", "carol@example.com",
                 "dave@example.com"]
        c = self.send_local("127.0.8.17", rcpts, make_message(m, to="alice@example.com"))
        rc = [s for s in c.steps if s.cmd.startswith("RCPT")]
        self.assertEqual([s.code for s in rc], [550, 550, 550, 250, 250, 250, 452], self.ctx(c))
        self.assertStep(c, "<message>", 250, r"^2\.0\.0")
        dirs = sorted(os.path.dirname(p) for p, _ in self.d.stored(m))
        self.assertEqual(dirs, sorted(self.d.maildir(u) for u in ("alice", "bob", "carol")),
                         self.ctx(c))

    def test_long_command_auto_ban(self):
        ip = "127.0.0.8"
        self.d.cli("kill", "del", ip, check=False)
        try:
            r = self.raw(ip)
            r.send("EHLO %s\r\n" % HELO)
            self.assertEqual(r.reply()[0], 250, self.ctx(r))
            r.send("MAIL FROM:<" + "x" * 600 + "@x.org>\r\n")
            got = r.reply()
            self.assertReply(got, 500, r"^500 5\.5\.2 ", "over-long MAIL", r)
            t_ban = time.monotonic()
            r.send("QUIT\r\n")
            r.rest()

            def attempt():
                n = self.d.raw(ip)
                self.raws.append(n)
                return n, n.reply()
            (n, got2), t = poll(attempt, lambda x: x[1][0] == 554, 1.0)
            self.assertIsNotNone(t, "client not refused at greeting %.1fs after the long "
                                 "command: %s\n%s" % (time.monotonic() - t_ban, got2, self.ctx(n)))
            self.assertReply(got2, 554, r"^554 5\.7\.1 ", "greeting after the ban", n)
            listing = self.d.cli("kill", "list").stdout
            line = [l for l in listing.splitlines() if l.split()[:1] == [ip]]
            self.assertTrue(line and "origin=auto-ban" in line[0],
                            "kill list does not show %s origin=auto-ban:\n%s" % (ip, listing))
        finally:
            self.d.cli("kill", "del", ip, check=False)


class T03bLongCommands(GatewayCase):
    OVERRIDES = MAIN

    def test_long_command_log_names_the_stage(self):
        """The log line for an over-long MAIL names MAIL (as the milter's does),
        like every other verdict line."""
        ip = "127.0.0.9"
        try:
            r = self.raw_ehlo(ip)
            r.send("MAIL FROM:<" + "x" * 600 + "@x.org>\r\n")
            self.assertReply(r.reply(), 500, r"^500 5\.5\.2 ", "over-long MAIL", r)
            r.send("QUIT\r\n")
            r.rest()
            lines = [l for l in self.d.log_since(self.mark).splitlines()
                     if "reason=long-command" in l]
            self.assertTrue(lines, "no long-command log line\n" + self.ctx(r))
            self.assertRegex(lines[0], r"reject: MAIL from \S*\[%s\]" % re.escape(ip),
                             "log line for an over-long MAIL\n" + self.ctx(r))
        finally:
            self.d.cli("kill", "del", ip, check=False)

    def test_long_lines_other_than_helo_mail_rcpt_never_ban(self):
        """max_command_length and its ban are for HELO/EHLO, MAIL and RCPT, as
        documented: a 600-octet NOOP or DATA line is answered, never banned."""
        ip = "127.0.8.16"
        try:
            r = self.raw_ehlo(ip)
            r.send("NOOP " + "n" * 600 + "\r\n")
            self.assertReply(r.reply(), 250, r"^250 ", "600-octet NOOP", r)
            r.send("DATA " + "d" * 600 + "\r\n")
            self.assertEqual(r.reply()[0] // 100, 5, self.ctx(r))
            r.send("NOOP " + "n" * 5000 + "\r\n")
            self.assertReply(r.reply(), 500, r"^500 5\.5\.2 ", "5000-octet NOOP", r)
            r.send("QUIT\r\n")
            r.rest()
            listing = self.d.cli("kill", "list").stdout
            self.assertNotIn(ip, listing, "banned for a long line that is no HELO/MAIL/RCPT")
            n = self.raw_ehlo(ip)	# still welcome
            n.send("QUIT\r\n")
            n.rest()
        finally:
            self.d.cli("kill", "del", ip, check=False)

    def test_tenth_error_a_long_command_still_gets_421(self):
        """Ten errors end the session with 421 4.7.0, whatever the tenth was."""
        ip = "127.0.0.10"
        try:
            r = self.raw_ehlo(ip)
            for i in range(9):
                r.send("BOGUS%d\r\n" % i)
                self.assertEqual(r.reply()[0] // 100, 5, self.ctx(r))
            r.send("NOOP " + "n" * 5000 + "\r\n")	# past any line a command needs
            got = r.rest(timeout=2)
            closed = r.closed_within(0.1)
            self.assertEqual([g[0] for g in got], [500, 421],
                             "replies to the tenth error (an over-long line): %s\n%s" % (
                                 got, self.ctx(r)))
            self.assertRegex(got[-1][1], r"^421 4\.7\.0 .*too many errors")
            self.assertTrue(closed, "not closed after 421\n" + self.ctx(r))
        finally:
            self.d.cli("kill", "del", ip, check=False)

    def test_unterminated_long_line_is_not_buffered(self):
        """4 MB without a line end: the worker's memory stays flat, and the
        line is answered 500 5.5.2 once it ends."""
        ip = "127.0.0.4"
        try:
            w = self.d.workers()
            self.assertEqual(len(w), 1)
            rss0 = vm_rss_kb(w[0])
            r = self.raw_ehlo(ip)
            chunk = b"a" * 65536
            r.send(b"NOOP ")
            for _ in range(64):
                r.sock.sendall(chunk)
            r.send(b"\r\n")
            got = r.reply()
            rss1 = vm_rss_kb(w[0])
            self.assertReply(got, 500, r"^500 5\.5\.2 ", "4 MB line", r)
            # ASan's quarantine keeps freed chunks resident: RSS says nothing there
            if not binary_is_asan():
                self.assertLess(rss1 - rss0, 2048, "worker grew from %d to %d kB while "
                                "reading a 4 MB line" % (rss0, rss1))
        finally:
            self.d.cli("kill", "del", ip, check=False)


class T04Pipelining(GatewayCase):
    OVERRIDES = MAIN

    def test_whole_transaction_pipelined(self):
        m = new_marker("pipe")
        r = self.raw("127.0.0.31")
        r.send("EHLO %s\r\n" % HELO)
        self.assertEqual(r.reply()[0], 250, self.ctx(r))
        r.send("MAIL FROM:<sender@outside.test>\r\nRCPT TO:<alice@example.com>\r\n"
               "RCPT TO:<nobody@example.com>\r\nDATA\r\n")
        got = [r.reply() for _ in range(4)]
        self.assertEqual([g[0] for g in got], [250, 250, 550, 354],
                         "pipelined MAIL/RCPT/RCPT/DATA: %s\n%s" % (got, self.ctx(r)))
        msg = make_message(m, to="alice@example.com", body=["top", "..x", "...", "tail"])
        r.send(msg.encode() + b".\r\nQUIT\r\n")
        got = [r.reply(), r.reply()]
        self.assertReply(got[0], 250, r"^250 2\.0\.0 Ok", "end of data", r)
        self.assertReply(got[1], 221, None, "QUIT", r)
        found = self.d.stored(m)
        self.assertEqual(len(found), 1, self.ctx(r))
        # dot-stuffing removed: "..x" arrives as ".x", "..." as ".."
        self.assertIn(b"\r\n\r\ntop\r\n.x\r\n..\r\ntail\r\nEND-", found[0][1],
                      "stored: %r" % found[0][1][-200:])

    def test_two_transactions_pipelined(self):
        """Pipelining across transactions: RSET and a second MAIL in one write."""
        m1, m2 = new_marker("p1"), new_marker("p2")
        r = self.raw("127.0.0.32")
        r.send("EHLO %s\r\n" % HELO)
        self.assertEqual(r.reply()[0], 250, self.ctx(r))
        r.send("MAIL FROM:<s@outside.test>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
        self.assertEqual([r.reply()[0] for _ in range(3)], [250, 250, 354], self.ctx(r))
        r.send(make_message(m1, to="bob@example.com").encode() + b".\r\n"
               b"MAIL FROM:<s@outside.test>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\n")
        self.assertEqual([r.reply()[0] for _ in range(4)], [250, 250, 250, 354], self.ctx(r))
        r.send(make_message(m2, to="carol@example.com").encode() + b".\r\nQUIT\r\n")
        self.assertEqual([r.reply()[0] for _ in range(2)], [250, 221], self.ctx(r))
        self.assertEqual([os.path.dirname(p) for p, _ in self.d.stored(m1)],
                         [self.d.maildir("bob")], self.ctx(r))
        self.assertEqual([os.path.dirname(p) for p, _ in self.d.stored(m2)],
                         [self.d.maildir("carol")], self.ctx(r))

    def _pipelined_before_ehlo(self, source, data):
        r = self.raw(source)
        r.send(data)
        got = r.rest(timeout=2)
        closed = r.closed_within(0.1)
        codes = [g[0] for g in got]
        self.assertTrue(any(g[0] == 554 and g[1].startswith("554 5.5.0") for g in got),
                        "no 554 5.5.0 for %r: %s\n%s" % (data, got, self.ctx(r)))
        self.assertEqual(codes[-1], 554, "554 is not the last reply: %s" % got)
        self.assertNotIn(b"2.1.0", b"".join(d for w, d in r.log if w == "S"),
                         "MAIL was accepted\n" + self.ctx(r))
        self.assertTrue(closed, "connection not closed after 554 5.5.0\n" + self.ctx(r))

    def test_helo_and_mail_in_one_write(self):
        self._pipelined_before_ehlo("127.0.0.33", "HELO x\r\nMAIL FROM:<a@b.org>\r\n")

    def test_ehlo_and_mail_in_one_write(self):
        self._pipelined_before_ehlo("127.0.0.34", "EHLO x\r\nMAIL FROM:<a@b.org>\r\n")

    def test_bare_lf_command_refused(self):
        c = self.raw("127.0.0.35")
        c.send("EHLO %s\r\n" % HELO)
        self.assertEqual(c.reply()[0], 250)
        c.send("MAIL FROM:<a@b.org>\n")
        got = c.reply()
        self.assertEqual(got[0] // 100, 5, "MAIL ended by a bare LF: %s\n%s" % (got, self.ctx(c)))


# ------------------------------------------------------------- smuggling
SMUGGLED_CMDS = (b"MAIL FROM:<smuggler@evil.example>\r\n"
                 b"RCPT TO:<bob@example.com>\r\n"
                 b"DATA\r\n"
                 b"From: smuggler@evil.example\r\n"
                 b"Subject: smuggled %s\r\n"
                 b"\r\n"
                 b"smuggled body\r\n")


class T05SmugglingReject(GatewayCase):
    OVERRIDES = MAIN

    def _smuggle(self, source, fake_end, lf_cmds=False):
        """A message to alice that holds fake_end followed by a whole second
        transaction (to bob), then the real CRLF.CRLF.  Expect ONE final
        reply, 550 5.5.2; nothing stored; no second transaction."""
        m = new_marker("smug")
        r = self.raw(source)
        r.send("EHLO %s\r\n" % HELO)
        self.assertEqual(r.reply()[0], 250, self.ctx(r))
        r.send("MAIL FROM:<sender@outside.test>\r\n")
        self.assertEqual(r.reply()[0], 250, self.ctx(r))
        r.send("RCPT TO:<alice@example.com>\r\n")
        self.assertEqual(r.reply()[0], 250, self.ctx(r))
        r.send("DATA\r\n")
        self.assertEqual(r.reply()[0], 354, self.ctx(r))
        smuggled = SMUGGLED_CMDS % m.encode()
        if lf_cmds:
            smuggled = smuggled.replace(b"\r\n", b"\n")
        payload = (b"From: sender@outside.test\r\nTo: alice@example.com\r\n"
                   b"Subject: " + m.encode() + b"\r\n\r\nfirst body line" + fake_end
                   + smuggled + b"END-" + m.encode() + b"\r\n.\r\n")
        r.send(payload)
        got = r.take(1)
        self.assertEqual(len(got), 1, "want ONE reply to the message, got %d: %s\n%s" % (
            len(got), got, self.ctx(r)))
        self.assertReply(got[0], 550, r"^550 5\.5\.2 ", "end of a message with %r" % fake_end, r)
        # the session is in sync: the next reply is NOOP's, then QUIT's
        r.send("NOOP\r\nQUIT\r\n")
        after = r.rest()
        self.assertEqual([a[0] for a in after], [250, 221],
                         "replies after the message: %s\n%s" % (after, self.ctx(r)))
        self.assertNotStored(m, r)
        self.assertEqual(self.d.tmp_files(), [], "files left in Maildir/tmp after a 550")
        log = self.d.log_since(self.mark)
        self.assertNotIn("smuggler@evil.example", log,
                         "the smuggled MAIL FROM reached the command parser\n" + self.ctx(r))
        return r

    def test_lf_dot_lf(self):
        self._smuggle("127.0.0.41", b"\n.\n")

    def test_crlf_dot_lf(self):
        self._smuggle("127.0.0.42", b"\r\n.\n")

    def test_lf_dot_crlf(self):
        self._smuggle("127.0.0.43", b"\n.\r\n")

    def test_lf_dot_lf_with_lf_commands(self):
        self._smuggle("127.0.0.44", b"\n.\n", lf_cmds=True)

    def test_cr_dot_cr(self):
        self._smuggle("127.0.0.45", b"\r.\r")

    def test_crlf_dot_cr(self):
        self._smuggle("127.0.0.46", b"\r\n.\r")

    def test_lf_dot_lf_at_start_of_data(self):
        """DATA's own CRLF, then ".\n": the fake end is the first line."""
        r = self._smuggle_raw("127.0.0.50", b".\n")
        del r

    def _smuggle_raw(self, source, prefix):
        m = new_marker("smug0")
        r = self.raw_ehlo(source)
        r.send("MAIL FROM:<sender@outside.test>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        self.assertEqual([g[0] for g in r.take(3)], [250, 250, 354], self.ctx(r))
        r.send(prefix + SMUGGLED_CMDS % m.encode() + b"END-" + m.encode() + b"\r\n.\r\n")
        got = r.take(1)
        self.assertEqual(len(got), 1, "want ONE reply, got %s\n%s" % (got, self.ctx(r)))
        self.assertReply(got[0], 550, r"^550 5\.5\.2 ", "message starting %r" % prefix, r)
        r.send("NOOP\r\nQUIT\r\n")
        self.assertEqual([a[0] for a in r.rest()], [250, 221], self.ctx(r))
        self.assertNotStored(m, r)
        return r

    def test_fake_end_does_not_end_and_real_end_split_across_writes(self):
        """"\n.\n" sent alone and followed by a pause gets no reply (the
        message goes on); the real CRLF.CRLF sent one byte a write ends it."""
        m = new_marker("split")
        r = self.raw_ehlo("127.0.0.39")
        r.send("MAIL FROM:<sender@outside.test>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        self.assertEqual([g[0] for g in r.take(3)], [250, 250, 354], self.ctx(r))
        r.send(b"Subject: " + m.encode() + b"\r\n\r\nbody\n")
        time.sleep(0.1)
        r.send(b".")
        time.sleep(0.1)
        r.send(b"\n")
        early = r.replies(quiet=0.5)
        self.assertEqual(early, [], "a reply to a message not yet ended by CRLF.CRLF\n"
                         + self.ctx(r))
        r.send(SMUGGLED_CMDS % m.encode() + b"END-" + m.encode())
        for b in b"\r\n.\r\n":
            time.sleep(0.05)
            r.send(bytes([b]))
        got = r.take(1)
        self.assertEqual(len(got), 1, "want ONE reply, got %s\n%s" % (got, self.ctx(r)))
        self.assertReply(got[0], 550, r"^550 5\.5\.2 ", "bare LF split across writes", r)
        r.send("NOOP\r\nQUIT\r\n")
        self.assertEqual([a[0] for a in r.rest()], [250, 221], self.ctx(r))
        self.assertNotStored(m, r)

    def test_clean_message_one_byte_per_write(self):
        """The parser keeps its place across reads: a proper message sent a
        byte at a time (CR and LF of each line in separate writes)."""
        m = new_marker("bytewise")
        r = self.raw_ehlo("127.0.0.38")
        r.send("MAIL FROM:<sender@outside.test>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        self.assertEqual([g[0] for g in r.take(3)], [250, 250, 354], self.ctx(r))
        msg = (b"Subject: " + m.encode() + b"\r\n\r\n..dot\r\nx\r\nEND-" + m.encode()
               + b"\r\n.\r\n")
        r.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(msg)):
            r.send(msg[i:i + 1])
            if msg[i:i + 1] in (b"\r", b"\n", b"."):
                time.sleep(0.005)
        got = r.take(1)
        self.assertEqual([g[0] for g in got], [250], "%s\n%s" % (got, self.ctx(r)))
        r.send("NOOP\r\nQUIT\r\n")
        self.assertEqual([a[0] for a in r.rest()], [250, 221], self.ctx(r))
        found = self.d.stored(m)
        self.assertEqual(len(found), 1, self.ctx(r))
        self.assertTrue(found[0][1].endswith(b"\r\n\r\n.dot\r\nx\r\nEND-" + m.encode()
                                             + b"\r\n"), found[0][1][-120:])

    def test_bare_cr_in_body(self):
        m = new_marker("cr")
        r = self.raw_ehlo("127.0.0.47")
        r.send("MAIL FROM:<s@outside.test>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        got = r.take(3)
        self.assertEqual([g[0] for g in got], [250, 250, 354], self.ctx(r))
        r.send(b"Subject: " + m.encode() + b"\r\n\r\nline with a bare\rCR inside\r\n"
               b"END-" + m.encode() + b"\r\n.\r\n")
        got = r.take(1)
        r.send("NOOP\r\nQUIT\r\n")
        got += r.rest()
        self.assertEqual([g[0] for g in got[1:]], [250, 221],
                         "want one reply to the message: %s\n%s" % (got, self.ctx(r)))
        self.assertReply(got[0], 550, r"^550 5\.5\.2 ", "bare CR in the body", r)
        self.assertNotStored(m, r)

    def test_bare_lf_in_body(self):
        m = new_marker("lf")
        r = self.raw_ehlo("127.0.0.48")
        r.send("MAIL FROM:<s@outside.test>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        got = r.take(3)
        self.assertEqual([g[0] for g in got], [250, 250, 354], self.ctx(r))
        r.send(b"Subject: " + m.encode() + b"\r\n\r\none\ntwo\r\nEND-" + m.encode() + b"\r\n.\r\n")
        got = r.take(1)
        r.send("NOOP\r\nQUIT\r\n")
        got += r.rest()
        self.assertEqual([g[0] for g in got[1:]], [250, 221],
                         "want one reply to the message: %s\n%s" % (got, self.ctx(r)))
        self.assertReply(got[0], 550, r"^550 5\.5\.2 ", "bare LF in the body", r)
        self.assertNotStored(m, r)

    def test_clean_message_after_refused_one(self):
        """After a 550 5.5.2 the same session can send a proper message."""
        r = self._smuggle("127.0.0.49", b"\n.\n")
        del r
        m = new_marker("after")
        c = self.send_local("127.0.0.49", ["alice@example.com"],
                            make_message(m, to="alice@example.com"))
        self.assertStep(c, "<message>", 250, r"^2\.0\.0")
        self.assertEqual(len(self.d.stored(m)), 1)


class T06SmugglingNormalize(GatewayCase):
    DAEMON = "normalize"
    OVERRIDES = dict(MAIN, smtp_bare_newline="normalize")
    STOP_AFTER = True

    def test_bare_lf_normalised_and_lf_dot_lf_does_not_end(self):
        m = new_marker("norm")
        r = self.raw("127.0.0.51")
        r.send("EHLO %s\r\n" % HELO)
        self.assertEqual(r.reply()[0], 250, self.ctx(r))
        r.send("MAIL FROM:<sender@outside.test>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        self.assertEqual([r.reply()[0] for _ in range(3)], [250, 250, 354], self.ctx(r))
        payload = (b"From: sender@outside.test\nTo: alice@example.com\n"
                   b"Subject: " + m.encode() + b"\n\nfirst body line\n.\n"
                   + SMUGGLED_CMDS.replace(b"\r\n", b"\n") % m.encode()
                   + b"last\r\nEND-" + m.encode() + b"\r\n.\r\n")
        r.send(payload)
        got = r.take(1)
        self.assertEqual(len(got), 1, "want ONE reply to the message, got %s\n%s" % (
            got, self.ctx(r)))
        self.assertReply(got[0], 250, r"^250 2\.0\.0 Ok", "normalised message", r)
        r.send("NOOP\r\nQUIT\r\n")
        self.assertEqual([a[0] for a in r.rest()], [250, 221], self.ctx(r))
        found = self.d.stored(m)
        self.assertEqual([os.path.dirname(p) for p, _ in found], [self.d.maildir("alice")],
                         "stored copies: %s\n%s" % ([p for p, _ in found], self.ctx(r)))
        data = found[0][1]
        self.assertNotRegex(data, rb"(?<!\r)\n", "a bare LF was stored")
        self.assertNotRegex(data, rb"\r(?!\n)", "a bare CR was stored")
        body = data.split(b"\r\n\r\n", 1)[1]
        want = (b"first body line\r\n.\r\n"
                + SMUGGLED_CMDS % m.encode() + b"last\r\nEND-" + m.encode() + b"\r\n")
        self.assertEqual(body, want, "stored body\n" + self.ctx(r))
        self.assertEqual(self.d.stored("smuggled " + m), [found[0]],
                         "the smuggled text became a message of its own")

    def _fake_end(self, source, fake_end, split=False):
        """Under normalize, fake_end (a dot between bare CR/LF) is content:
        one 250 for the whole message, the smuggled text stored as body.
        split: each byte of fake_end in a write of its own."""
        m = new_marker("normfe")
        r = self.raw_ehlo(source)
        r.send("MAIL FROM:<sender@outside.test>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        self.assertEqual([r.reply()[0] for _ in range(3)], [250, 250, 354], self.ctx(r))
        if split:
            r.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            r.send(b"Subject: " + m.encode() + b"\r\n\r\nfirst")
            for b in fake_end:
                time.sleep(0.05)
                r.send(bytes([b]))
            time.sleep(0.05)
            r.send(SMUGGLED_CMDS % m.encode() + b"END-" + m.encode() + b"\r\n.\r\n")
        else:
            r.send(b"Subject: " + m.encode() + b"\r\n\r\nfirst" + fake_end
                   + SMUGGLED_CMDS % m.encode() + b"END-" + m.encode() + b"\r\n.\r\n")
        got = r.take(1)
        self.assertEqual(len(got), 1, "want ONE reply to the message with %r, got %s\n%s" % (
            fake_end, got, self.ctx(r)))
        self.assertReply(got[0], 250, r"^250 2\.0\.0 Ok", "message with %r" % fake_end, r)
        r.send("NOOP\r\nQUIT\r\n")
        self.assertEqual([a[0] for a in r.rest()], [250, 221], self.ctx(r))
        found = self.d.stored(m)
        self.assertEqual([os.path.dirname(p) for p, _ in found], [self.d.maildir("alice")],
                         "stored copies: %s\n%s" % ([p for p, _ in found], self.ctx(r)))
        data = found[0][1]
        self.assertEqual(self.d.stored("smuggled " + m), [found[0]],
                         "the smuggled text became a message of its own")
        self.assertNotRegex(data, rb"\r(?!\n)", "a bare CR was stored: %r" % data[-300:])
        self.assertNotRegex(data, rb"(?<!\r)\n", "a bare LF was stored: %r" % data[-300:])
        self.assertIn(b"\r\nMAIL FROM:<smuggler@evil.example>\r\n", data)
        self.assertNotIn("from=<smuggler@evil.example>", self.d.log_since(self.mark))

    def test_fake_end_crlf_dot_lf(self):
        self._fake_end("127.0.0.53", b"\r\n.\n")

    def test_fake_end_lf_dot_crlf(self):
        self._fake_end("127.0.0.54", b"\n.\r\n")

    def test_fake_end_cr_dot_cr(self):
        self._fake_end("127.0.0.55", b"\r.\r")

    def test_fake_end_crlf_dot_cr(self):
        self._fake_end("127.0.0.56", b"\r\n.\r")

    def test_fake_end_cr_dot_crlf(self):
        self._fake_end("127.0.0.57", b"\r.\r\n")

    def test_fake_end_lf_dot_crlf_split(self):
        """ "\n", ".", "\r", "\n" in separate writes."""
        self._fake_end("127.0.0.58", b"\n.\r\n", split=True)

    def test_fake_end_crlf_dot_lf_split(self):
        self._fake_end("127.0.0.59", b"\r\n.\n", split=True)

    def test_dot_then_bare_cr_normalised(self):
        """A line starting with "." then a bare CR: the CR becomes CRLF too."""
        m = new_marker("dotcr")
        r = self.raw_ehlo("127.0.0.60")
        r.send("MAIL FROM:<s@outside.test>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        self.assertEqual([r.reply()[0] for _ in range(3)], [250, 250, 354], self.ctx(r))
        r.send(b"Subject: " + m.encode() + b"\r\n\r\nx\r\n.\rabc\r\nEND-" + m.encode()
               + b"\r\n.\r\n")
        got = r.take(1)
        self.assertEqual([g[0] for g in got], [250], "%s\n%s" % (got, self.ctx(r)))
        found = self.d.stored(m)
        self.assertEqual(len(found), 1, self.ctx(r))
        body = found[0][1].split(b"\r\n\r\n", 1)[1]
        self.assertEqual(body, b"x\r\n.\r\nabc\r\nEND-" + m.encode() + b"\r\n",
                         "stored body (normalize: bare CR becomes CRLF)")

    def test_bare_cr_normalised(self):
        m = new_marker("normcr")
        c = self.raw_ehlo("127.0.0.52")
        c.send("MAIL FROM:<s@outside.test>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        self.assertEqual([g[0] for g in c.take(3)], [250, 250, 354], self.ctx(c))
        c.send(b"Subject: " + m.encode() + b"\r\n\r\na\rb\r\nEND-" + m.encode() + b"\r\n.\r\n")
        got = c.take(1)
        self.assertEqual([g[0] for g in got], [250], "%s\n%s" % (got, self.ctx(c)))
        found = self.d.stored(m)
        self.assertEqual(len(found), 1, self.ctx(c))
        self.assertIn(b"\r\n\r\na\r\nb\r\nEND-", found[0][1])


# ------------------------------------------------------------- size
class T07Size(GatewayCase):
    OVERRIDES = MAIN

    def test_declared_size_over_limit(self):
        c = self.d.client("127.0.0.55")
        c.connect()
        c.ehlo()
        c.mail("a@b.org", "SIZE=99999999")
        c.quit()
        self.assertStep(c, "MAIL", 552, r"^5\.3\.4 ")

    def test_declared_size_under_limit(self):
        c = self.d.client("127.0.0.55")
        c.connect()
        c.ehlo()
        c.mail("a@b.org", "SIZE=%d" % (SIZE_LIMIT // 2))
        c.quit()
        self.assertStep(c, "MAIL", 250, r"^2\.1\.0")

    def test_streamed_message_over_limit(self):
        m = new_marker("big")
        body = ["%06d %s" % (i, "y" * 70) for i in range(SIZE_LIMIT // 70 + 200)]
        msg = make_message(m, to="alice@example.com", body=body)
        self.assertGreater(len(msg), SIZE_LIMIT + 10000)
        c = self.d.client("127.0.0.56")
        c.connect()
        c.ehlo()
        c.mail("a@b.org")
        c.rcpt("alice@example.com")
        c.data(msg)
        c.raw("NOOP")
        c.quit()
        self.assertStep(c, "<message>", 552, r"^5\.3\.4 ", "streamed oversize message")
        self.assertNotStored(m, c)
        self.assertStep(c, "NOOP", 250, None, "the session goes on after a 552")
        self.assertEqual(self.d.tmp_files(), [], "files left in Maildir/tmp after a 552")

    def test_message_just_under_limit(self):
        m = new_marker("fits")
        body = ["%06d %s" % (i, "z" * 70) for i in range(SIZE_LIMIT // 78 - 20)]
        msg = make_message(m, to="alice@example.com", body=body)
        self.assertLess(len(msg), SIZE_LIMIT)
        c = self.send_local("127.0.0.57", ["alice@example.com"], msg)
        self.assertStep(c, "<message>", 250, r"^2\.0\.0")
        self.assertEqual(len(self.d.stored(m)), 1)


class T08Errors(GatewayCase):
    OVERRIDES = MAIN
    STOP_AFTER = True

    def test_ten_errors_end_the_session(self):
        r = self.raw("127.0.0.61")
        r.send("EHLO %s\r\n" % HELO)
        self.assertEqual(r.reply()[0], 250)
        got = []
        for i in range(9):
            r.send("BOGUS%d\r\n" % i)
            got.append(r.reply())
        self.assertTrue(all(g[0] in (500, 502) for g in got),
                        "replies to the first 9 bad commands: %s\n%s" % (got, self.ctx(r)))
        r.send("BOGUS9\r\n")
        tail = r.rest(timeout=2)          # the 10th's reply, then 421 and EOF
        closed = r.closed_within(0.1)
        self.assertTrue(tail and tail[-1][0] == 421 and
                        re.match(r"421 4\.7\.0 .*too many errors", tail[-1][1]),
                        "no 421 4.7.0 too many errors after the 10th bad command: %s\n%s" % (
                            tail, self.ctx(r)))
        self.assertTrue(all(g[0] in (500, 502) for g in tail[:-1]), tail)
        self.assertTrue(closed, "not closed after 421\n" + self.ctx(r))

    def test_client_gone_while_replies_are_written(self):
        """A client pipelines 20,000 NOOPs and closes without reading: our
        replies meet a reset connection (EPIPE). The worker must live on:
        no SIGPIPE death, same worker pid, the next client served."""
        before = self.d.workers()
        mark = self.d.log_mark()
        for i in range(5):
            r = self.raw_ehlo("127.0.0.62")
            try:
                r.sock.sendall(b"NOOP\r\n" * 20000)
            except OSError:
                pass
            r.close()
            time.sleep(0.1)
        time.sleep(0.5)
        log = self.d.log_since(mark)
        self.assertNotIn("killed by signal", log, "the worker died on a vanished client:\n" + log)
        self.assertEqual(self.d.workers(), before, "the smtp worker was replaced\n" + log)
        r = self.raw_ehlo("127.0.0.62")
        r.send("NOOP\r\n")
        self.assertReply(r.reply(), 250, None, "NOOP on a new session", r)
        r.close()


# ------------------------------------------------------------- limits
class T09Limits(GatewayCase):
    DAEMON = "strict"
    OVERRIDES = {"null_sender": "reject", "smtp_max_per_client": 2, "smtp_timeout": 1}
    STOP_AFTER = True

    def test_null_sender_rejected(self):
        c = self.d.client("127.0.0.71")
        c.connect()
        c.ehlo()
        c.mail("")
        c.quit()
        self.assertStep(c, "MAIL", 550, r"^5\.7\.1 ")

    def test_max_per_client(self):
        ip = "127.0.0.20"
        a = self.raw(ip)
        b = self.raw(ip)
        third = self.raw(ip, read_greeting=False)
        got = third.reply()
        self.assertReply(got, 421, r"^421 4\.7\.0 ", "third connection from one address", third)
        self.assertTrue(third.closed_within(2), "not closed after 421\n" + self.ctx(third))
        self.assertEqual(third.buf, b"", "bytes after the 421 line\n" + self.ctx(third))
        other = self.raw("127.0.0.21")          # another client is not affected
        other.send("QUIT\r\n")
        a.send("QUIT\r\n")
        self.assertEqual(a.reply()[0], 221, self.ctx(a))
        a.close()
        b.send("QUIT\r\n")
        b.reply()
        b.close()

        # once one of them has gone, the client may connect again
        def attempt():
            n = self.d.raw(ip)
            self.raws.append(n)
            return n.reply()
        got, t = poll(attempt, lambda g: g[0] == 220, 1.0)
        self.assertIsNotNone(t, "still refused after closing: %s\n%s" % (got, self.ctx()))

    def test_idle_timeout(self):
        r = self.raw("127.0.0.72")
        t0 = time.monotonic()
        got = r.reply(timeout=4)
        took = time.monotonic() - t0
        self.assertReply(got, 421, r"^421 4\.4\.2 ", "idle client", r)
        self.assertTrue(r.closed_within(1.0), "not closed after 421 4.4.2\n" + self.ctx(r))
        took_close = time.monotonic() - t0
        self.assertGreaterEqual(took, 0.8, "timed out too early (%.2fs)" % took)
        self.assertLessEqual(took_close, 2.2, "closed only after %.2fs" % took_close)

    def test_reset_connections_release_their_slots(self):
        ip = "127.0.0.22"

        def attempt():
            n = self.d.raw(ip)
            self.raws.append(n)
            got = n.reply()
            if got[0] != 220:
                n.close()
            return got
        for i in range(3):
            # the gateway sees the RSTs of the last round a moment after the
            # client sent them: each slot must come free within a second
            conns = []
            for _ in range(2):
                got, t = poll(attempt, lambda g: g[0] == 220, 1.0)
                self.assertIsNotNone(t, "round %d: slots not released after RST: %s\n%s" % (
                    i, got, self.ctx()))
                conns.append(self.raws[-1])
            for r in conns:     # abortive close: RST, no QUIT
                r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                  b"\x01\x00\x00\x00\x00\x00\x00\x00")
                r.close()
        got, t = poll(attempt, lambda g: g[0] == 220, 1.0)
        self.assertIsNotNone(t, "slots not released after RST: %s\n%s" % (got, self.ctx()))

    def test_timeout_during_data(self):
        m = new_marker("tmo")
        r = self.raw_ehlo("127.0.0.74")
        r.send("MAIL FROM:<a@b.org>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        self.assertEqual([g[0] for g in r.take(3)], [250, 250, 354], self.ctx(r))
        r.send(b"Subject: " + m.encode() + b"\r\n\r\nhalf a message\r\n")
        t0 = time.monotonic()
        got = r.reply(timeout=4)
        self.assertReply(got, 421, r"^421 4\.4\.2 ", "client idle in DATA", r)
        self.assertTrue(r.closed_within(1.0))
        self.assertLessEqual(time.monotonic() - t0, 2.2)
        self.assertNotStored(m, r)
        self.assertEqual(self.d.tmp_files(), [], "files left in Maildir/tmp after a timeout")

    def test_timeout_mid_command_line(self):
        """A partial command line with no CRLF is idle too."""
        r = self.raw_ehlo("127.0.0.73")
        r.send("MAIL FROM:<a@b")
        t0 = time.monotonic()
        got = r.reply(timeout=4)
        self.assertReply(got, 421, r"^421 4\.4\.2 ", "half a command line", r)
        self.assertTrue(r.closed_within(1.0))
        self.assertLessEqual(time.monotonic() - t0, 2.2)


# ------------------------------------------------------------- restart
class T10WorkerRestart(GatewayCase):
    DAEMON = "restart"
    OVERRIDES = {}
    STOP_AFTER = True

    def _session_ok(self, source):
        c = self.d.client(source, timeout=2)
        c.connect()
        c.ehlo()
        c.mail("a@b.org")
        c.rcpt("alice@example.com")
        c.quit()
        return c

    def test_sigkill_worker_is_restarted(self):
        c = self._session_ok("127.0.0.81")
        self.assertStep(c, "RCPT", 250, None, "before the kill")
        master = self.d.proc.pid
        workers = self.d.workers()
        self.assertEqual(len(workers), 1, "want one smtp worker under master %d, got %s" % (
            master, workers))
        old = workers[0]
        os.kill(old, signal.SIGKILL)
        t0 = time.monotonic()
        c, t = poll(lambda: self._session_ok("127.0.0.82"),
                    lambda c: c.step("RCPT") is not None and c.step("RCPT").code == 250, 2.0)
        self.assertIsNotNone(t, "no working SMTP session within 2 s of killing worker %d\n%s"
                             % (old, self.ctx(c)))
        new = self.d.workers()
        self.assertTrue(new and old not in new, "workers now %s (killed %d)" % (new, old))
        self.assertEqual(self.d.proc.poll(), None, "the master died")
        log = self.d.log_since(self.mark)
        self.assertRegex(log, r"smtp worker \(pid %d\) killed by signal 9" % old,
                         "master did not log the dead worker\n" + self.ctx())
        _log("worker %d -> %s in %.2fs" % (old, new, time.monotonic() - t0))


# ------------------------------------------------------------- logs
class T99DaemonLogs(unittest.TestCase):
    """Stops every daemon still running, then: each exited 0 on SIGTERM
    within 2 s, left no worker, and no log holds a sanitizer report."""

    def test_clean_exit_and_no_sanitizer_reports(self):
        for d in list(DAEMONS.values()):
            if d.proc is not None:
                d.stop()
        self.assertTrue(STOPPED, "no daemon ran")
        problems = []
        for name, (rc, took, killed), left, bad, path in STOPPED:
            if killed or rc != 0 or took > 2.0:
                problems.append("%s: exit %s after %.2fs%s (%s)" % (
                    name, rc, took, " (needed SIGKILL)" if killed else "", path))
            if left:
                problems.append("%s: workers %s outlived the master" % (name, left))
            if bad:
                problems.append("%s: sanitizer reports in %s:\n%s" % (
                    name, path, "\n".join(bad[:40])))
        self.assertFalse(problems, "\n".join(problems))


CASES = [T01Session, T02LocalDelivery, T03Lists, T03bLongCommands, T04Pipelining, T05SmugglingReject,
         T07Size, T08Errors, T06SmugglingNormalize, T09Limits, T10WorkerRestart,
         T99DaemonLogs]


if __name__ == "__main__":
    sys.exit(runner.main(cases=CASES, always=(T99DaemonLogs,)))
