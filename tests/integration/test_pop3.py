#!/usr/bin/python3
"""The POP3 door (services = pop3) with real clients: Python's poplib, curl
(pop3://, pop3s://), fetchmail, openssl s_client, raw sockets.

Asserted, each on what the client saw (or the store kept):
  - banner "+OK <myhostname> ready." (no software name); CAPA; USER/PASS
    refused before TLS (auth_allow_plaintext = no), accepted after STLS;
    STAT/LIST/RETR/TOP/UIDL, UIDL = Dovecot's %08Xu%08Xv from dovecot-uidlist;
  - AUTH PLAIN and CRAM-MD5 after STLS; pop3_auth_mechanisms = CRAM-MD5
    leaves neither USER nor PLAIN; APOP: a timestamp in the banner only with
    pop3_apop = yes, refused before TLS;
  - pop3s (implicit TLS) with poplib and curl; curl pop3:// with STLS;
  - fetchmail retrieves into an mda and deletes: the store is empty after;
  - DELE is applied only at QUIT; a second session gets -ERR [IN-USE];
    mail_max_userip_connections; a kill-listed address is refused at
    connect; failed logins are delayed, then the address is banned;
  - a 20 MB message comes back byte-identical (after dot-unstuffing) while
    the worker's RSS stays small; live reload (SIGHUP) keeps a session.

Run: PORTCULLIS_BIN=build/asan/bin python3 tests/integration/test_pop3.py
"""
import base64
import hashlib
import hmac
import os
import poplib
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import ports, runner, util  # noqa: E402
from harness.daemon import Daemon  # noqa: E402

USER = "alice@example.com"
PW = "alice-password"
HOST = "127.0.0.1"


def make_cert(d):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=mx.example.com", "-keyout", os.path.join(d, "key.pem"),
                    "-out", os.path.join(d, "crt.pem")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


def tls_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def maildir(d, user):
    local, dom = user.split("@")
    return d.path("mail", dom, local, "Maildir")


_seq = [0]


def deliver(d, user, body):
    """A message put into new/ the way the gateway does (,S= and ,W=)."""
    md = maildir(d, user)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(md, sub), exist_ok=True)
    _seq[0] += 1
    w = len(body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    name = "%d.M%dP%d_%d.test,S=%d,W=%d" % (time.time(), _seq[0], os.getpid(), _seq[0],
                                             len(body), w)
    tmp = os.path.join(md, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(body)
    os.rename(tmp, os.path.join(md, "new", name))
    return name


def files(d, user):
    md = maildir(d, user)
    return sorted(os.listdir(os.path.join(md, "cur")) + os.listdir(os.path.join(md, "new")))


def msg(n, extra=b""):
    return (b"From: sender%d@example.org\r\nTo: %s\r\nSubject: message %d\r\n\r\n"
            b"line one of %d\r\n.a line with a leading dot\r\n%s" % (n, USER.encode(), n, n, extra))


def new_daemon(name, **kw):
    d = Daemon("pop3-" + name)
    port_s = ports.free_port()
    make_cert(d.dir)
    base = dict(services="pop3", pop3_listen="127.0.0.1:%d" % d.port,
                pop3s_listen="127.0.0.1:%d" % port_s, myhostname="mx.example.com",
                mydomains="example.com", state_dir=d.path("state"),
                delivery="maildir:" + d.path("mail"), users="file:" + d.path("users"),
                tls_cert_file=d.path("crt.pem"), tls_key_file=d.path("key.pem"),
                auth_failure_delay="0", log_level="info")
    base.update(kw)
    d.port_s = port_s
    d.write_config(**base)
    return d


def add_user(d, user, pw):
    d.cli("user", "add", user, "--password-stdin", input=pw + "\n")


def pop(d, tls=False):
    if tls:
        return poplib.POP3_SSL(HOST, d.port_s, context=tls_ctx(), timeout=20)
    return poplib.POP3(HOST, d.port, timeout=20)


def login(d, user=USER, pw=PW, tls=False):
    p = pop(d, tls)
    if not tls:
        p.stls(context=tls_ctx())
    p.user(user)
    p.pass_(pw)
    return p


def uidlist(d, user):
    """UIDVALIDITY and {base name: UID} from dovecot-uidlist."""
    with open(os.path.join(maildir(d, user), "dovecot-uidlist")) as f:
        head = f.readline().split()
        uv = int([h[1:] for h in head if h.startswith("V")][0])
        m = {}
        for line in f:
            parts = line.split()
            m[parts[-1].lstrip(":")] = int(parts[0])
    return uv, m


def raw_session(port, lines, src=HOST, timeout=20):
    """Send lines one by one, each after the previous reply line; returns
    the replies (first: the greeting) and the time each took."""
    s = socket.create_connection((HOST, port), timeout=timeout, source_address=(src, 0))
    f = s.makefile("rb")
    out = [f.readline().decode().rstrip("\r\n")]
    took = []
    for l in lines:
        t0 = time.monotonic()
        s.sendall(l.encode() + b"\r\n")
        out.append(f.readline().decode().rstrip("\r\n"))
        took.append(time.monotonic() - t0)
    s.close()
    return out, took


def greeting(port, src):
    s = socket.create_connection((HOST, port), timeout=10, source_address=(src, 0))
    try:
        return s.makefile("rb").readline().decode().rstrip("\r\n")
    finally:
        s.close()


def worker_pid(d):
    for pid in d.workers():
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                if b"pop3" in f.read():
                    return pid
        except OSError:
            pass
    ws = d.workers()
    return ws[0] if ws else None


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class T1Basics(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = d = new_daemon("basics", pop3_apop="no")
        add_user(d, USER, PW)
        add_user(d, "bob@example.com", "bob-password")
        add_user(d, "carol@example.com", "carol-password")
        add_user(d, "dave@example.com", "dave-password")
        add_user(d, "erin@example.com", "erin-password")
        add_user(d, "fred@example.com", "fred-password")
        add_user(d, "gina@example.com", "gina-password")
        d.start()

    def test_banner_capa_and_plaintext_refused(self):
        p = pop(self.d)
        self.assertEqual(p.getwelcome(), b"+OK mx.example.com ready.")
        caps = p.capa()
        self.assertIn("STLS", caps)
        self.assertIn("UIDL", caps)
        self.assertNotIn("USER", caps)        # no plaintext before TLS
        with self.assertRaises(poplib.error_proto) as e:
            p.user(USER)
        self.assertIn(b"Plaintext authentication disallowed", e.exception.args[0])
        p.stls(context=tls_ctx())
        caps = p.capa()
        self.assertIn("USER", caps)
        self.assertNotIn("STLS", caps)
        self.assertIn("PLAIN", caps.get("SASL", []))
        p.quit()

    def test_pipelining(self):
        # RFC 2449 PIPELINING: a whole session in one write, answered in order
        u, pw = "frank@example.com", "frank-password"
        add_user(self.d, u, pw)
        bodies = [msg(60), msg(61)]
        for b in bodies:
            deliver(self.d, u, b)

        def session():
            s = socket.create_connection((HOST, self.d.port), timeout=20)
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"STLS\r\n")
            f.readline()
            t = tls_ctx().wrap_socket(s)
            t.sendall(("USER %s\r\nPASS %s\r\nSTAT\r\nLIST\r\nRETR 1\r\nTOP 2 0\r\n"
                       "DELE 1\r\nNOOP\r\nQUIT\r\n" % (u, pw)).encode())
            data = b""
            while True:
                chunk = t.recv(65536)
                if not chunk:
                    break
                data += chunk
            t.close()
            return data
        def can_login():
            try:
                login(self.d, u, pw).quit()
                return True
            except poplib.error_proto:
                return False
        util.wait_until(can_login, 10, what="the users file to be reloaded")
        data = session()
        want = (b"+OK\r\n+OK Logged in.\r\n+OK 2 %d\r\n+OK 2 messages:\r\n1 %d\r\n2 %d\r\n.\r\n"
                b"+OK %d octets\r\n%s.\r\n+OK\r\n" % (
                    len(bodies[0]) + len(bodies[1]), len(bodies[0]), len(bodies[1]),
                    len(bodies[0]), bodies[0].replace(b"\r\n.", b"\r\n..")))
        self.assertTrue(data.startswith(want), data[:300])
        self.assertTrue(data.endswith(b"+OK Marked to be deleted.\r\n+OK\r\n"
                                      b"+OK Logging out, messages deleted.\r\n"), data[-200:])
        self.assertIn(b"\r\n..a line with a leading dot\r\n", data)

    def test_stls_drops_pipelined_plaintext(self):
        s = socket.create_connection((HOST, self.d.port), timeout=20)
        f = s.makefile("rb")
        f.readline()
        # RFC 2595 §4: what came before the handshake must not count inside TLS
        s.sendall(b"STLS\r\nUSER %s\r\n" % USER.encode())
        self.assertTrue(f.readline().startswith(b"+OK Begin TLS"))
        t = tls_ctx().wrap_socket(s)
        tf = t.makefile("rb")
        t.sendall(b"PASS %s\r\n" % PW.encode())
        self.assertEqual(tf.readline(), b"-ERR No username given.\r\n")
        t.sendall(b"QUIT\r\n")
        self.assertTrue(tf.readline().startswith(b"+OK"))
        t.close()

    def test_list_retr_top_uidl_like_dovecot(self):
        u = "carol@example.com"
        bodies = [msg(1), msg(2, b"..two dots\r\nlast line\r\n")]
        for b in bodies:
            deliver(self.d, u, b)
        p = login(self.d, u, "carol-password")
        count, size = p.stat()
        self.assertEqual(count, 2)
        self.assertEqual(size, sum(len(b) for b in bodies))
        resp, lines, _ = p.list()
        self.assertEqual([l.decode() for l in lines],
                         ["%d %d" % (i + 1, len(b)) for i, b in enumerate(bodies)])
        for i, b in enumerate(bodies):
            resp, lines, octets = p.retr(i + 1)
            self.assertEqual(b"\r\n".join(lines) + b"\r\n", b)   # poplib unstuffs the dots
        resp, lines, _ = p.top(1, 0)
        self.assertEqual(lines[-1], b"")
        self.assertIn(b"Subject: message 1", lines)
        self.assertNotIn(b"line one of 1", lines)
        uidls = [l.decode().split() for l in p.uidl()[1]]
        p.quit()
        uv, recs = uidlist(self.d, u)
        names = [n.split(":")[0] for n in files(self.d, u)]
        want = sorted("%08x%08x" % (recs[n], uv) for n in names)
        self.assertEqual(sorted(x[1] for x in uidls), want)

    def test_auth_plain_and_cram_md5(self):
        p = pop(self.d)
        p.stls(context=tls_ctx())
        tok = base64.b64encode(b"\0" + USER.encode() + b"\0" + PW.encode()).decode()
        self.assertTrue(p._shortcmd("AUTH PLAIN " + tok).startswith(b"+OK"))
        self.assertTrue(p.stat()[0] >= 0)
        p.quit()
        p = pop(self.d)
        p.stls(context=tls_ctx())
        r = p._shortcmd("AUTH CRAM-MD5")
        ch = base64.b64decode(r[2:])
        dig = hmac.new(PW.encode(), ch, hashlib.md5).hexdigest()
        self.assertTrue(p._shortcmd(base64.b64encode(
            ("%s %s" % (USER, dig)).encode()).decode()).startswith(b"+OK"))
        p.quit()

    def test_dele_only_at_quit(self):
        u, pw = "bob@example.com", "bob-password"
        deliver(self.d, u, msg(10))
        deliver(self.d, u, msg(11))
        p = login(self.d, u, pw)
        p.dele(1)
        p.sock.shutdown(socket.SHUT_RDWR)   # gone without QUIT: nothing deleted
        p.sock.close()
        p.file.close()
        util.wait_until(lambda: "mailbox in use" not in self._second_login(u, pw), 10,
                        what="the first session to end")
        self.assertEqual(len(files(self.d, u)), 2)
        p = login(self.d, u, pw)
        p.dele(1)
        self.assertEqual(len(files(self.d, u)), 2)
        self.assertTrue(p.quit().startswith(b"+OK Logging out, messages deleted"))
        left = files(self.d, u)
        self.assertEqual(len(left), 1)
        p = login(self.d, u, pw)
        self.assertEqual(p.stat()[0], 1)
        self.assertIn(b"message 11", b"\n".join(p.retr(1)[1]))
        p.quit()
        self.assertTrue(files(self.d, u)[0].endswith(",S") or ":2,S" in files(self.d, u)[0])

    def test_expunged_meanwhile_is_not_an_error(self):
        """P2: an IMAP session expunges messages this POP3 session retrieved or
        is about to: QUIT still +OK (Dovecot's answer; before: -ERR [SYS/TEMP]
        Couldn't delete all messages, logged 'cannot set flags ... it is
        gone'); a RETR of one is -ERR with a response code, logged at info"""
        u, pw = "erin@example.com", "erin-password"
        for n in (20, 21, 22):
            deliver(self.d, u, msg(n))
        p = login(self.d, u, pw)
        self.assertEqual(p.stat()[0], 3)
        p.retr(1)                       # \Seen for it at QUIT
        p.retr(2)
        mark = self.d.log_mark()
        cur = os.path.join(maildir(self.d, u), "cur")
        for f in sorted(os.listdir(cur)):
            if b"message 20" in open(os.path.join(cur, f), "rb").read() or \
                    b"message 22" in open(os.path.join(cur, f), "rb").read():
                os.unlink(os.path.join(cur, f))       # what an IMAP EXPUNGE does
        with self.assertRaises(poplib.error_proto) as e:
            p.retr(3)
        self.assertRegex(e.exception.args[0], rb"^-ERR \[[A-Z/-]+\] ")
        p.dele(2)
        self.assertTrue(p.quit().startswith(b"+OK"))
        self.assertEqual(files(self.d, u), [])
        log = self.d.log_since(mark)
        self.assertNotIn("error:", "\n".join(l for l in log.splitlines() if "erin" in l))
        self.assertRegex(log, r"\]: pop3: conn=\S+ erin@example.com: message \d+: expunged meanwhile")

    def test_retr_after_an_imap_flag_change(self):
        """P1: an IMAP session flags messages this POP3 session is about to
        retrieve (their files renamed for the new flags, new/ to cur/): RETR
        finds them under their new names, and QUIT sets \\Seen on the renamed
        file (before: -ERR [SYS/TEMP] Couldn't read the message.)"""
        u, pw = "gina@example.com", "gina-password"
        bodies = [msg(30), msg(31)]
        for b in bodies:
            deliver(self.d, u, b)
        p = login(self.d, u, pw)
        self.assertEqual(p.stat()[0], 2)
        md = maildir(self.d, u)
        for sub in ("new", "cur"):          # what an IMAP STORE +FLAGS (\\Flagged) does
            for f in os.listdir(os.path.join(md, sub)):
                base = f.split(":")[0]
                os.rename(os.path.join(md, sub, f), os.path.join(md, "cur", base + ":2,F"))
        for i, b in enumerate(bodies):
            self.assertEqual(b"\r\n".join(p.retr(i + 1)[1]) + b"\r\n", b)
        self.assertTrue(p.quit().startswith(b"+OK"))
        self.assertEqual(sorted(f.split(":")[1] for f in files(self.d, u)), ["2,FS", "2,FS"])

    def test_sizes_of_a_bare_lf_file_without_w(self):
        """D1: a bare-LF file whose name and uidlist record have no W= (another
        MDA's file, a UID Dovecot gave): LIST and STAT say what RETR sends
        (before: the file's size, 20 octets short here)"""
        u, pw = "fred@example.com", "fred-password"
        deliver(self.d, u, msg(30))
        login(self.d, u, pw).quit()             # UIDs given, uidlist written
        md = maildir(self.d, u)
        body = b"From: mda@example.org\nSubject: lf\n\n" + b"a line\n" * 17
        base = "%d.M1P1.othermda" % time.time()
        with open(os.path.join(md, "cur", base + ":2,"), "wb") as f:
            f.write(body)
        with open(os.path.join(md, "dovecot-uidlist")) as f:
            lines = f.read().splitlines()
        head = lines[0].split()
        n = int([h[1:] for h in head if h.startswith("N")][0])
        head = [("N%d" % (n + 1)) if h.startswith("N") else h for h in head]
        lines = [" ".join(head)] + lines[1:] + ["%d :%s" % (n, base)]
        with open(os.path.join(md, "dovecot-uidlist"), "w") as f:
            f.write("\n".join(lines) + "\n")
        p = login(self.d, u, pw)
        want = len(body) + body.count(b"\n")
        self.assertEqual(p.list(2).split()[2], str(want).encode())
        resp, _lines, octets = p.retr(2)
        self.assertEqual(resp, b"+OK %d octets" % want)
        self.assertEqual(octets, want)
        count, total = p.stat()
        self.assertEqual(total, sum(int(x.split()[1]) for x in p.list()[1]))
        p.quit()

    def _second_login(self, u, pw):
        try:
            login(self.d, u, pw).quit()
            return "ok"
        except poplib.error_proto as e:
            return "mailbox in use" if b"IN-USE" in e.args[0] else str(e)

    def test_in_use(self):
        p = login(self.d)
        q = pop(self.d)
        q.stls(context=tls_ctx())
        q.user(USER)
        with self.assertRaises(poplib.error_proto) as e:
            q.pass_(PW)
        self.assertIn(b"-ERR [IN-USE]", e.exception.args[0])
        p.quit()
        login(self.d).quit()            # free again

    def test_pop3s_and_curl(self):
        deliver(self.d, USER, msg(20))
        p = login(self.d, tls=True)
        n = p.stat()[0]
        self.assertGreaterEqual(n, 1)
        p.quit()
        for url, extra in (("pop3s://127.0.0.1:%d/" % self.d.port_s, []),
                           ("pop3://127.0.0.1:%d/" % self.d.port, ["--ssl-reqd"])):
            r = subprocess.run(["curl", "-sS", "-k", "--max-time", "20", "-u", "%s:%s" % (USER, PW),
                                url] + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(len(r.stdout.decode().strip().splitlines()), n)
            r = subprocess.run(["curl", "-sS", "-k", "--max-time", "20", "-u", "%s:%s" % (USER, PW),
                                url + str(n)] + extra, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(b"Subject: message 20", r.stdout)

    def test_fetchmail(self):
        if not os.access("/usr/bin/fetchmail", os.X_OK):
            self.skipTest("fetchmail not installed (make deps)")
        u, pw = "dave@example.com", "dave-password"
        for i in range(3):
            deliver(self.d, u, msg(30 + i))
        tmp = tempfile.mkdtemp(prefix="pc-fetchmail.", dir=self.d.dir)
        rc = os.path.join(tmp, "fetchmailrc")
        out = os.path.join(tmp, "mbox")
        with open(rc, "w") as f:
            f.write('poll 127.0.0.1 service %d protocol pop3 uidl\n'
                    '  user "%s" there with password "%s" is "%s" here\n'
                    '  sslproto "tls1.2+" no sslcertck\n'
                    '  mda "/bin/sh -c \'cat >> %s\'"\n' % (self.d.port, u, pw,
                                                           os.environ.get("USER", "root"), out))
        os.chmod(rc, 0o600)
        env = dict(os.environ, HOME=tmp, FETCHMAILHOME=tmp)
        r = subprocess.run(["fetchmail", "-f", rc, "--nodetach", "--nosyslog", "-v"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=60)
        self.assertIn(r.returncode, (0,), r.stdout.decode(errors="replace")[-2000:])
        with open(out, "rb") as f:
            got = f.read()
        for i in range(3):
            self.assertIn(b"Subject: message %d" % (30 + i), got)
        self.assertEqual(files(self.d, u), [])   # fetchmail deleted them at QUIT


    def test_zz_counters(self):
        """(runs last in the class) what the sessions above left in the counters"""
        deliver(self.d, "carol@example.com", msg(90))
        p = login(self.d, "carol@example.com", "carol-password")
        n = p.stat()[0]
        p.retr(n)
        p.dele(n)
        p.quit()
        out = self.d.cli("stats").stdout
        got = dict((l.rsplit(None, 1)[0], int(l.rsplit(None, 1)[1]))
                   for l in out.splitlines() if l.strip() and l.split()[-1].isdigit())
        for k in ('connections_total{door="pop3"}', 'auth_total{door="pop3",result="success"}',
                  'messages_total{door="pop3",route="retr"}',
                  'message_bytes_total{door="pop3",route="retr"}',
                  'messages_total{door="pop3",route="dele"}'):
            self.assertGreater(got.get(k, 0), 0, "%s in:\n%s" % (k, out))


class T2Policy(unittest.TestCase):
    """Kill list, penalties and ban, mail_max_userip_connections, APOP, mechanisms."""
    @classmethod
    def setUpClass(cls):
        cls.d = d = new_daemon("policy", mail_max_userip_connections="1",
                               auth_failure_delay="1s", auth_failure_delay_max="2s",
                               auth_failure_ban="3/10m", pop3_apop="yes",
                               pop3_auth_mechanisms="CRAM-MD5 APOP")
        add_user(d, USER, PW)
        add_user(d, "erin@example.com", "erin-password")
        d.start()

    def test_kill_listed_refused_at_connect(self):
        self.assertTrue(greeting(self.d.port, "127.0.0.2").startswith("+OK"))
        self.d.cli("kill", "add", "127.0.0.2")
        util.wait_until(lambda: greeting(self.d.port, "127.0.0.2").startswith("-ERR"), 10,
                        what="the kill entry to reach the pop3 worker")
        g = greeting(self.d.port, "127.0.0.2")
        self.assertIn("kill list", g)
        self.assertTrue(greeting(self.d.port, "127.0.0.1").startswith("+OK"))

    def test_penalty_then_ban(self):
        src = "127.0.0.3"
        out, took = raw_session(self.d.port, ["STLS"], src=src)
        s = socket.create_connection((HOST, self.d.port), timeout=30, source_address=(src, 0))
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"STLS\r\n")
        f.readline()
        t = tls_ctx().wrap_socket(s)
        tf = t.makefile("rb")
        times = []
        for i in range(3):
            t.sendall(b"AUTH CRAM-MD5\r\n")
            tf.readline()
            t0 = time.monotonic()
            t.sendall(base64.b64encode(b"%s %s" % (USER.encode(), b"0" * 32)) + b"\r\n")
            r = tf.readline()
            times.append(time.monotonic() - t0)
            self.assertTrue(r.startswith(b"-ERR [AUTH]"), r)
        t.close()
        self.assertGreaterEqual(times[0], 0.9)
        self.assertGreaterEqual(times[1], 1.8)
        util.wait_until(lambda: greeting(self.d.port, src).startswith("-ERR"), 10,
                        what="the ban")

    def test_userip_limit(self):
        p = pop(self.d)
        p.stls(context=tls_ctx())
        r = p._shortcmd("AUTH CRAM-MD5")
        dig = hmac.new(PW.encode(), base64.b64decode(r[2:]), hashlib.md5).hexdigest()
        p._shortcmd(base64.b64encode(("%s %s" % (USER, dig)).encode()).decode())
        q = pop(self.d)
        q.stls(context=tls_ctx())
        r = q._shortcmd("AUTH CRAM-MD5")
        dig = hmac.new(PW.encode(), base64.b64decode(r[2:]), hashlib.md5).hexdigest()
        with self.assertRaises(poplib.error_proto) as e:
            q._shortcmd(base64.b64encode(("%s %s" % (USER, dig)).encode()).decode())
        self.assertIn(b"-ERR [IN-USE] Maximum number of connections from user+IP exceeded",
                      e.exception.args[0])
        p.quit()

    def test_many_retr_not_delayed(self):
        # in plaintext each RETR's reply used to wait for the client's delayed
        # ACK (Nagle: 40 ms a message, 6 s for these); conn sets TCP_NODELAY
        u, pw = "erin@example.com", "erin-password"
        for i in range(150):
            deliver(self.d, u, msg(100 + i))
        p = pop(self.d)
        r = p._shortcmd("AUTH CRAM-MD5")       # CRAM-MD5 needs no TLS
        dig = hmac.new(pw.encode(), base64.b64decode(r[2:]), hashlib.md5).hexdigest()
        p._shortcmd(base64.b64encode(("%s %s" % (u, dig)).encode()).decode())
        t0 = time.monotonic()
        for i in range(150):
            p.retr(i + 1)
        took = time.monotonic() - t0
        p.quit()
        util.log("150 RETR in %.2f s" % took)
        self.assertLess(took, 3.0)

    def test_mechanisms_and_apop(self):
        p = pop(self.d)
        self.assertRegex(p.getwelcome(), rb"^\+OK mx\.example\.com ready\. <[^>]+@[^>]+>$")
        with self.assertRaises(poplib.error_proto) as e:
            p.apop(USER, PW)          # APOP only over TLS (fetchmail-SA-2007-01)
        self.assertIn(b"Plaintext authentication disallowed", e.exception.args[0])
        p.stls(context=tls_ctx())
        caps = p.capa()
        self.assertNotIn("USER", caps)
        self.assertEqual(caps.get("SASL"), ["CRAM-MD5"])
        with self.assertRaises(poplib.error_proto):
            p.user(USER)
        with self.assertRaises(poplib.error_proto) as e:
            p.apop(USER, "wrong")
        self.assertIn(b"-ERR [AUTH]", e.exception.args[0])
        p.quit()
        # the right secret (user add kept apop= while pop3_apop = yes)
        p = pop(self.d)
        p.stls(context=tls_ctx())
        self.assertEqual(p.apop(USER, PW), b"+OK Logged in.")
        self.assertGreaterEqual(p.stat()[0], 0)
        p.quit()


class T3Big(unittest.TestCase):
    def test_20mb_message_bounded_memory_and_reload(self):
        d = new_daemon("big")
        add_user(d, USER, PW)
        line = b"x" * 70 + b"\r\n"
        dotline = b".starts with a dot\r\n"
        n = 20 * 1024 * 1024 // len(line)
        body = b"From: big@example.org\r\nSubject: big\r\n\r\n" + \
            b"".join(dotline if i % 1000 == 0 else line for i in range(n))
        deliver(d, USER, body)
        # ASan keeps freed memory in quarantine (256 MB by default): that is not
        # ours to count, so a small one for this daemon
        d.start(env={"ASAN_OPTIONS": "detect_leaks=1:quarantine_size_mb=1"})
        pop(d).quit()                   # the worker serves (the port accepts before)
        util.wait_until(lambda: worker_pid(d) is not None, 10, what="the pop3 worker")
        pid = worker_pid(d)
        before = rss_kb(pid)
        p = login(d)
        self.assertEqual(p.list(1).split()[2], str(len(body)).encode())
        p._putcmd("RETR 1")
        self.assertTrue(p._getresp().startswith(b"+OK"))
        h = hashlib.sha256()
        peak = before
        k = 0
        while True:
            l, _ = p._getline()
            if l == b".":
                break
            if l.startswith(b".."):
                l = l[1:]
            h.update(l + b"\r\n")
            k += 1
            if k % 20000 == 0:
                peak = max(peak, rss_kb(pid))
        self.assertEqual(h.hexdigest(), hashlib.sha256(body).hexdigest())
        grew = peak - before
        util.log("pop3 worker RSS %d kB before, %d kB peak during a %d-byte RETR"
                 % (before, peak, len(body)))
        # held whole, the message alone would be 20 MB (release build: ~4 MB growth)
        self.assertLess(grew * 1024, len(body) // 2, "the worker grew %d kB" % grew)
        # live reload: a new banner for new sessions, the old session goes on
        d.write_config(pop3_banner="reloaded door")
        os.kill(d.proc.pid, 1)
        util.wait_until(lambda: pop(d).getwelcome() == b"+OK reloaded door", 15,
                        what="the new banner")
        self.assertEqual(p.stat()[0], 1)
        self.assertTrue(p.quit().startswith(b"+OK"))
        # a client that leaves in the middle of the message: the session ends
        # (its lock goes), nothing is deleted, the worker goes on
        q = login(d)
        q._putcmd("RETR 1")
        for _ in range(1000):
            q._getline()
        q.sock.shutdown(socket.SHUT_RDWR)
        q.sock.close()
        q.file.close()

        def relogin():
            try:
                login(d).quit()
                return True
            except poplib.error_proto:
                return False
        util.wait_until(relogin, 15, what="the dropped session's lock to go")
        self.assertEqual(len(files(d, USER)), 1)
        d.stop()
        d.assert_clean()


class T4Dovecot(unittest.TestCase):
    """UIDL as a private Dovecot (dovecot-pop3d) gives it for the same store,
    whichever of the two opened the mailbox first."""

    def test_uidl_equals_dovecots(self):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import test_pop3_dovecot as tpd
        tmd = tpd.tmd
        if not os.path.exists(tmd.DOVECOT) or not os.path.exists(tpd.POP3):
            self.skipTest("dovecot-pop3d not installed (make deps)")
        d = new_daemon("dovecot")
        dc = tpd.Pop3Dovecot(d.path("dc"))
        os.makedirs(dc.base)
        d.write_config(delivery="maildir:" + dc.store)
        dc.start()
        self.addCleanup(dc.stop)
        ours_first, theirs_first = tmd.USERS[0], tmd.USERS[1]
        for u in (ours_first, theirs_first):
            add_user(d, u, tmd.PASSWORD)
            local, dom = u.split("@")
            md = os.path.join(dc.store, dom, local, "Maildir")
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(md, sub), exist_ok=True)
            for i in range(3):
                name = "%d.M%dP%d.gw,S=%d,W=%d" % (time.time(), i, os.getpid(),
                                                   len(msg(i)), len(msg(i)))
                with open(os.path.join(md, "new", name), "wb") as f:
                    f.write(msg(i))

        def chown():
            if os.getuid() == 0:
                for dirpath, dirs, fs in os.walk(dc.store):
                    os.chown(dirpath, dc.uid, dc.gid)
                    for f in fs:
                        os.chown(os.path.join(dirpath, f), dc.uid, dc.gid)

        def dovecot_uidl(u):
            p = poplib.POP3(HOST, dc.port, timeout=15)
            p.user(u)
            p.pass_(tmd.PASSWORD)
            r = p.uidl()[1]
            p.quit()
            return r

        def our_uidl(u):
            p = login(d, u, tmd.PASSWORD)
            r = p.uidl()[1]
            p.quit()
            return r

        chown()
        d.start()
        mine = our_uidl(ours_first)          # we give the UIDs
        chown()
        self.assertEqual(len(mine), 3)
        self.assertEqual(dovecot_uidl(ours_first), mine)
        theirs = dovecot_uidl(theirs_first)  # Dovecot gives them
        self.assertEqual(len(theirs), 3)
        self.assertEqual(our_uidl(theirs_first), theirs)


if __name__ == "__main__":
    sys.exit(runner.main(tools=["/usr/bin/curl", "/usr/bin/openssl"]))
