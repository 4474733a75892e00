"""Integration lab: a private Postfix, an smtp-sink and (optionally) portcullisd.

What it is: a reusable harness for tests and benchmarks that drive the real
binaries through real peers.  Everything listens on loopback only; nothing
asks DNS; nothing touches the distribution's own Postfix instance.

    Lab(milter=True, ipv6="auto")   build and start the lab (sink + Postfix)
    lab.start_daemon(**overrides)   start portcullisd with the lab config
    lab.ensure_daemon(**overrides)  restart it only if the overrides differ
    lab.stop_daemon()               SIGTERM, then SIGKILL if it lingers
    lab.cli(...), lab.kill_add(...) the admin command, checked
    lab.client(source)              an SmtpClient bound to 127.0.0.N (or ::1)
    lab.send(...)                   one whole transaction, never raises on 4xx/5xx
    lab.wait_for_message(marker)    poll the sink dir (bounded) for a delivery
    lab.assert_never_delivered(m)   after a later known-good message arrived
    lab.sanitizer_reports()         ASan/UBSan/LSan lines in portcullisd.log
    lab.close()                     stop everything; rm the lab unless KEEP_LAB=1

Contract: close() is idempotent and is also run at interpreter exit and on
SIGTERM/SIGHUP, so a failing or interrupted test run leaves no daemon, sink or
Postfix master behind.  Only processes this module started are ever signalled,
by pid.

Environment:
    PORTCULLIS_BIN   directory holding portcullisd and portcullis (<repo>/bin)
    KEEP_LAB=1       keep the lab directory for post-mortem reading
    LAB_VERBOSE=1    print each SMTP step to stderr
"""

import atexit
import errno
import os
import re
import select
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("PORTCULLIS_BIN", os.path.join(REPO, "bin"))
POSTFIX = "/usr/sbin/postfix"
SMTP_SINK = "/usr/sbin/smtp-sink"

LOCAL_HOSTNAME = "client.portcullis.test"   # what smtplib says in EHLO; never resolved
MYHOSTNAME = "mx.portcullis.test"
SANITIZER_RE = re.compile(r"AddressSanitizer|runtime error:|LeakSanitizer")
VERBOSE = os.environ.get("LAB_VERBOSE") == "1"

DAEMON_DEFAULTS = (
    # (key, value) in the order written; LABDIR and PORT are substituted.
    ("milter_listen", "inet:127.0.0.1:{port}"),
    ("mydomains", "example.com .sub.example.com"),
    ("relay_networks", "127.0.0.2 127.0.1.0/24 ::1"),
    ("relay_authenticated", "yes"),
    ("lists", "file:{labdir}/lists"),
    ("state_dir", "{labdir}/state"),
    ("null_sender", "accept"),
    ("relay_require_headers", "From Reply-To"),
    ("max_recipients", "5"),
    ("max_command_length", "512"),
    ("long_command_ban", "3600"),
    ("policy_mode", "enforce"),
    ("log_level", "info"),
)


class LabError(Exception):
    pass


def daemon_config_text(port, labdir, **overrides):
    """portcullisd's config (main.cf syntax) for a lab: DAEMON_DEFAULTS with
    overrides applied; an override of None drops the key."""
    keys = {}
    for k, v in DAEMON_DEFAULTS:
        keys[k] = v.format(port=port, labdir=labdir)
    for k, v in overrides.items():
        if v is None:
            keys.pop(k, None)
        else:
            keys[k] = str(v)
    return "# written by tests/integration/lab.py\n" + "".join(
        "%s = %s\n" % kv for kv in keys.items())


def _log(msg):
    if VERBOSE:
        sys.stderr.write("lab: %s\n" % msg)


def free_port(ipv6_too=False):
    """A TCP port that is free on 127.0.0.1 (and on ::1 when asked)."""
    for _ in range(50):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if not ipv6_too:
            return port
        try:
            s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s6.bind(("::1", port))
            s6.close()
            return port
        except OSError:
            continue
    raise LabError("no free loopback port found")


def ipv6_loopback_usable():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


def port_accepts(host, port, timeout=0.2):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until it returns a true value; return it, or raise."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise LabError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def new_marker(tag="m"):
    return "pcl-%s-%s" % (tag, uuid.uuid4().hex[:12])


def make_message(marker, from_="Sender <sender@outside.test>", to="user@example.com",
                 reply_to=None, subject=None, extra_headers=(), body=None):
    """An RFC 5322 message carrying marker in Message-ID, Subject and a last
    body line END-<marker>, which is how the sink poller knows it is complete.
    from_=None leaves out From:."""
    h = []
    if from_ is not None:
        h.append("From: %s" % from_)
    if reply_to is not None:
        h.append("Reply-To: %s" % reply_to)
    h.append("To: %s" % to)
    h.append("Subject: %s" % (subject or "lab test %s" % marker))
    h.append("Message-ID: <%s@portcullis.test>" % marker)
    h.append("Date: Mon, 01 Jan 2024 00:00:00 +0000")
    h.extend(extra_headers)
    lines = h + [""] + (body or ["Test message body."]) + ["END-%s" % marker]
    return "\r\n".join(lines) + "\r\n"


class Step:
    """One SMTP exchange: the command sent and the reply the client got.
    code is -1 when the server closed the connection (text says so)."""

    def __init__(self, cmd, code, text):
        self.cmd = cmd
        self.code = code
        self.text = text

    def __repr__(self):
        return "%s -> %s %s" % (self.cmd[:80], self.code, self.text)


class SmtpClient:
    """A python smtplib client bound to a chosen loopback source address.

    Every method records a Step and returns (code, text); none raises on a 4xx,
    5xx or a dropped connection, so tests assert on what the client was told.
    """

    def __init__(self, host, port, source, helo=LOCAL_HOSTNAME, timeout=15):
        self.host = host
        self.port = port
        self.source = source
        self.helo = helo
        self.steps = []
        self.closed = False
        self.smtp = smtplib.SMTP(local_hostname=helo, timeout=timeout,
                                 source_address=(source, 0))

    def _record(self, cmd, code, text):
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        text = text.replace("\n", " | ")
        st = Step(cmd, code, text)
        self.steps.append(st)
        _log("%s %r" % (self.source, st))
        return code, text

    def _run(self, cmd, fn):
        if self.closed:
            return self._record(cmd, -1, "not connected")
        try:
            code, text = fn()
        except smtplib.SMTPServerDisconnected as e:
            self.closed = True
            return self._record(cmd, -1, "disconnected: %s" % e)
        except (OSError, smtplib.SMTPException) as e:
            self.closed = True
            try:
                self.smtp.close()
            except Exception:
                pass
            return self._record(cmd, -1, "error: %s" % e)
        if code == 421:
            self.closed = True
        return self._record(cmd, code, text)

    def connect(self):
        return self._run("CONNECT", lambda: self.smtp.connect(self.host, self.port))

    def ehlo(self):
        def go():
            self.smtp.putcmd("ehlo", self.helo)
            return self.smtp.getreply()
        return self._run("EHLO " + self.helo, go)

    def mail(self, sender, params=""):
        arg = "FROM:<%s>%s" % (sender, (" " + params) if params else "")
        return self._run("MAIL " + arg, lambda: self.smtp.docmd("MAIL", arg))

    def rcpt(self, rcpt, params=""):
        arg = "TO:<%s>%s" % (rcpt, (" " + params) if params else "")
        return self._run("RCPT " + arg, lambda: self.smtp.docmd("RCPT", arg))

    def raw(self, line):
        return self._run(line, lambda: self.smtp.docmd(line))

    def data(self, message):
        """DATA; if the server says 354, send message (dot-stuffed) and
        return the end-of-data reply; else return the DATA reply."""
        code, text = self._run("DATA", lambda: self.smtp.docmd("DATA"))
        if code != 354:
            return code, text
        if isinstance(message, str):
            message = message.encode("utf-8")
        lines = re.split(rb"\r?\n", message)
        if lines and lines[-1] == b"":
            lines.pop()
        payload = b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n" for l in lines)
        payload += b".\r\n"

        def go():
            self.smtp.send(payload)
            return self.smtp.getreply()
        return self._run("<message>.", go)

    def rset(self):
        return self._run("RSET", lambda: self.smtp.docmd("RSET"))

    def quit(self):
        if self.closed:
            return -1, "not connected"
        r = self._run("QUIT", lambda: self.smtp.docmd("QUIT"))
        self.closed = True
        try:
            self.smtp.close()
        except Exception:
            pass
        return r

    def close(self):
        self.closed = True
        try:
            self.smtp.close()
        except Exception:
            pass

    def step(self, prefix):
        """The last step whose command starts with prefix (e.g. 'MAIL')."""
        for st in reversed(self.steps):
            if st.cmd.upper().startswith(prefix.upper()):
                return st
        return None

    def transcript(self):
        return "\n".join("  [%s] %r" % (self.source, s) for s in self.steps)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.quit()


class Wire:
    """The server side of a test downstream: CRLF lines and DATA bodies read
    from a socket, what the peer already sent (without waiting), its EOF."""

    def __init__(self, c):
        self.c = c
        self.buf = bytearray()
        self.pos = 0

    def _fill(self):
        d = self.c.recv(262144)
        if not d:
            return False
        if self.pos > 262144:
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += d
        return True

    def line(self):
        """The next CRLF-terminated line, or None at end of stream."""
        start = self.pos
        while True:
            i = self.buf.find(b"\r\n", start)
            if i >= 0:
                l = bytes(self.buf[self.pos:i + 2])
                self.pos = i + 2
                return l
            start = max(self.pos, len(self.buf) - 1)
            base = self.pos
            if not self._fill():
                return None
            start -= base - self.pos     # _fill may have moved the buffer

    def body(self):
        """(raw body up to and including the CRLF before the final dot, True)
        or (what arrived before the stream ended, False)."""
        start = self.pos
        while True:
            if self.buf[self.pos:self.pos + 3] == b".\r\n":   # an empty message
                self.pos += 3
                return b"", True
            i = self.buf.find(b"\r\n.\r\n", start)
            if i >= 0:
                raw = bytes(self.buf[self.pos:i + 2])
                self.pos = i + 5
                return raw, True
            start = max(self.pos, len(self.buf) - 4)
            base = self.pos
            if not self._fill():
                return bytes(self.buf[self.pos:]), False
            start -= base - self.pos     # _fill may have moved the buffer

    def pending(self):
        """Whatever the peer has sent that we have not consumed (no waiting)."""
        while True:
            r, _, _ = select.select([self.c], [], [], 0)
            if not r:
                break
            try:
                d = self.c.recv(262144, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not d:
                break
            self.buf += d
        return bytes(self.buf[self.pos:])

    def wait_eof(self, limit):
        """Read and drop until the peer hangs up (True) or limit seconds pass."""
        self.c.settimeout(limit)
        try:
            while self.c.recv(65536):
                pass
            return True
        except OSError:
            return False


class Delivered:
    """One sink dump file: envelope (X-Mail-Args, X-Rcpt-Args) and message."""

    def __init__(self, path, text):
        self.path = path
        self.text = text
        self.mail_args = re.findall(r"^X-Mail-Args: (.*)$", text, re.M)
        self.rcpts = [re.sub(r"^(?:TO:)?<(.*?)>.*$", r"\1", a, flags=re.I)
                      for a in re.findall(r"^X-Rcpt-Args: (.*)$", text, re.M)]
        self.client_addr = (re.findall(r"^X-Client-Addr: (.*)$", text, re.M) or [None])[0]

    def __repr__(self):
        return "<Delivered %s rcpts=%s>" % (os.path.basename(self.path), self.rcpts)


class Lab:
    def __init__(self, milter=True, ipv6="auto", relay_domains=("example.com", "sub.example.com"),
                 main_cf_extra=None, name="portcullis-lab"):
        self.milter = milter
        self.want_ipv6 = ipv6
        self.relay_domains = relay_domains
        self.main_cf_extra = dict(main_cf_extra or {})
        self.name = name
        self.dir = None
        self.ipv6 = False
        self.sink_proc = None
        self.postfix_started = False
        self.daemon_proc = None
        self.daemon_overrides = None
        self.daemon_log_fh = None
        self._closed = False
        self._sink_cache = {}
        self.start()

    # ------------------------------------------------------------------ paths
    def path(self, *p):
        return os.path.join(self.dir, *p)

    @property
    def sink_dir(self):
        return self.path("sink")

    @property
    def pf_dir(self):
        return self.path("postfix")

    @property
    def maillog(self):
        return self.path("maillog")

    @property
    def daemon_log(self):
        return self.path("portcullisd.log")

    @property
    def conf(self):
        return self.path("portcullis.cf")

    # ------------------------------------------------------------ life cycle
    def start(self):
        _install_cleanup(self)
        self.dir = tempfile.mkdtemp(prefix=self.name + ".", dir="/tmp")
        os.chmod(self.dir, 0o755)
        if self.want_ipv6 == "auto":
            self.ipv6 = ipv6_loopback_usable()
        else:
            self.ipv6 = bool(self.want_ipv6)
        self.smtp_port = free_port(ipv6_too=self.ipv6)
        self.sink_port = free_port()
        self.milter_port = free_port()
        while len({self.smtp_port, self.sink_port, self.milter_port}) < 3:
            self.sink_port = free_port()
            self.milter_port = free_port()
        # queue/ itself must exist; its subdirectories are made by `postfix start`.
        for d in ("sink", "postfix", "lists", "state", "queue"):
            os.mkdir(self.path(d))
            os.chmod(self.path(d), 0o755)
        shutil.chown(self.sink_dir, user="postfix")
        try:
            self._start_sink()
            self._start_postfix()
        except BaseException:
            self.close()
            raise
        _log("lab %s: smtp %d sink %d milter %d ipv6 %s" % (
            self.dir, self.smtp_port, self.sink_port, self.milter_port, self.ipv6))

    def _start_sink(self):
        log = open(self.path("smtp-sink.log"), "ab")
        self.sink_proc = subprocess.Popen(
            [SMTP_SINK, "-u", "postfix", "-h", "sink.portcullis.test",
             "-d", self.sink_dir + "/%M.", "127.0.0.1:%d" % self.sink_port, "256"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_until(lambda: self.sink_proc.poll() is not None or
                   port_accepts("127.0.0.1", self.sink_port), 10, what="smtp-sink")
        if self.sink_proc.poll() is not None:
            raise LabError("smtp-sink exited: %s" % _read(self.path("smtp-sink.log")))

    def main_cf(self):
        sink = "smtp:[127.0.0.1]:%d" % self.sink_port
        inet_if = "127.0.0.1, [::1]" if self.ipv6 else "127.0.0.1"
        c = [
            ("compatibility_level", "3.6"),
            ("config_directory", self.pf_dir),
            ("queue_directory", self.path("queue")),
            ("data_directory", self.path("data")),
            ("mail_owner", "postfix"),
            ("setgid_group", "postdrop"),
            ("syslog_name", "postfix-" + os.path.basename(self.dir)),
            ("maillog_file", self.maillog),
            ("maillog_file_prefixes", "/var, /dev/stdout, /tmp"),
            ("myhostname", MYHOSTNAME),
            ("mydomain", "portcullis.test"),
            ("myorigin", "$myhostname"),
            ("mydestination", ""),
            ("inet_interfaces", inet_if),
            ("inet_protocols", "all" if self.ipv6 else "ipv4"),
            ("mynetworks", "127.0.0.0/8" + (" [::1]/128" if self.ipv6 else "")),
            ("relay_domains", " ".join(self.relay_domains)),
            ("smtpd_relay_restrictions", "permit_mynetworks, reject_unauth_destination"),
            ("smtpd_recipient_restrictions", ""),
            ("default_transport", sink),
            ("relay_transport", sink),
            ("local_transport", sink),
            ("virtual_transport", sink),
            ("alias_maps", ""),
            ("alias_database", ""),
            ("smtpd_peername_lookup", "no"),
            ("smtp_dns_support_level", "disabled"),
            ("smtp_host_lookup", "native"),
            ("local_header_rewrite_clients", ""),
            ("smtpd_banner", "$myhostname ESMTP lab"),
            ("smtpd_error_sleep_time", "0"),
            ("smtpd_soft_error_limit", "1000"),
            ("smtpd_hard_error_limit", "1000"),
            ("smtpd_junk_command_limit", "1000"),
            ("smtpd_recipient_limit", "1000"),
            ("smtpd_client_connection_count_limit", "0"),
            ("smtpd_client_connection_rate_limit", "0"),
            ("biff", "no"),
            ("append_dot_mydomain", "no"),
            ("delay_warning_time", "0"),
            ("queue_run_delay", "1s"),
            ("minimal_backoff_time", "1s"),
            ("maximal_backoff_time", "2s"),
            ("smtp_connect_timeout", "5s"),
            ("notify_classes", ""),
            ("smtputf8_enable", "no"),
            ("in_flow_delay", "0"),
        ]
        if self.milter:
            c += [
                ("smtpd_milters", "inet:127.0.0.1:%d" % self.milter_port),
                ("non_smtpd_milters", ""),
                ("milter_default_action", "tempfail"),
                ("milter_protocol", "6"),
                ("milter_connect_timeout", "5s"),
                ("milter_command_timeout", "10s"),
                ("milter_content_timeout", "10s"),
            ]
        c += list(self.main_cf_extra.items())
        seen = {}
        for k, v in c:
            seen[k] = v          # later entries (extras) win
        return "".join("%s = %s\n" % kv for kv in seen.items())

    def master_cf(self):
        rows = [
            ("127.0.0.1:%d" % self.smtp_port, "inet", "n", "-", "n", "-", "-", "smtpd"),
        ]
        if self.ipv6:
            rows.append(("[::1]:%d" % self.smtp_port, "inet", "n", "-", "n", "-", "-", "smtpd"))
        rows += [
            ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
            ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
            ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
            ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
            ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
            ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
            ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
            ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
            ("relay", "unix", "-", "-", "n", "-", "-", "smtp"),
            ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
            ("error", "unix", "-", "-", "n", "-", "-", "error"),
            ("retry", "unix", "-", "-", "n", "-", "-", "error"),
            ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
            ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
            ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
            ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
        ]
        return "".join("%-24s %-10s %-3s %-3s %-3s %-6s %-3s %s\n" % r for r in rows)

    def _postfix(self, *args, check=True):
        p = subprocess.run([POSTFIX, "-c", self.pf_dir] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, text=True, timeout=60)
        if check and p.returncode != 0:
            raise LabError("postfix %s failed (%d): %s\nmaillog:\n%s" % (
                " ".join(args), p.returncode, p.stdout, _tail(self.maillog)))
        return p

    def _start_postfix(self):
        with open(os.path.join(self.pf_dir, "main.cf"), "w") as f:
            f.write(self.main_cf())
        with open(os.path.join(self.pf_dir, "master.cf"), "w") as f:
            f.write(self.master_cf())
        self._postfix("start")
        self.postfix_started = True
        host = "127.0.0.1"

        def greeted():
            try:
                with socket.create_connection((host, self.smtp_port), timeout=1,
                                              source_address=("127.0.0.1", 0)) as s:
                    return s.recv(512).startswith(b"220")
            except OSError:
                return False
        wait_until(greeted, 15, 0.05, "postfix smtpd on %s:%d" % (host, self.smtp_port))

    def _master_pid(self):
        try:
            with open(self.path("queue", "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _stop_postfix(self):
        if not self.postfix_started:
            return
        pid = self._master_pid()
        p = self._postfix("stop", check=False)
        if p.returncode != 0:
            sys.stderr.write("lab: postfix stop: %s\n" % p.stdout)
        if pid:
            try:
                wait_until(lambda: not _pid_alive(pid), 15, 0.05, "postfix master exit")
            except LabError:
                _kill(pid, signal.SIGKILL)
        self.postfix_started = False

    def close(self):
        if self._closed:
            return
        self._closed = True
        errors = []
        for what, fn in (("daemon", self.stop_daemon), ("postfix", self._stop_postfix),
                         ("sink", self._stop_sink)):
            try:
                fn()
            except Exception as e:       # keep going: stop everything we can
                errors.append("%s: %s" % (what, e))
        if self.dir and os.path.isdir(self.dir):
            if os.environ.get("KEEP_LAB") == "1":
                sys.stderr.write("lab: kept %s\n" % self.dir)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
        _uninstall_cleanup(self)
        if errors:
            sys.stderr.write("lab: close: %s\n" % "; ".join(errors))

    def _stop_sink(self):
        if self.sink_proc and self.sink_proc.poll() is None:
            self.sink_proc.terminate()
            try:
                self.sink_proc.wait(5)
            except subprocess.TimeoutExpired:
                self.sink_proc.kill()
                self.sink_proc.wait(5)
        self.sink_proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----------------------------------------------------------------- daemon
    def daemon_config_text(self, **overrides):
        return daemon_config_text(self.milter_port, self.dir, **overrides)

    def write_daemon_config(self, **overrides):
        with open(self.conf, "w") as f:
            f.write(self.daemon_config_text(**overrides))

    def start_daemon(self, **overrides):
        exe = os.path.join(BIN, "portcullisd")
        if not os.access(exe, os.X_OK):
            raise LabError("%s is missing (build with make)" % exe)
        if self.daemon_proc is not None:
            raise LabError("daemon already running")
        self.write_daemon_config(**overrides)
        wait_until(lambda: not port_accepts("127.0.0.1", self.milter_port), 10,
                   what="milter port %d to be free" % self.milter_port)
        self.daemon_log_fh = open(self.daemon_log, "ab")
        self.daemon_log_fh.write(("=== lab: start portcullisd %s\n" % (
            " ".join("%s=%s" % kv for kv in sorted(overrides.items())) or "(defaults)")).encode())
        self.daemon_log_fh.flush()
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        self.daemon_proc = subprocess.Popen([exe, "-c", self.conf, "-f"],
                                            stdout=self.daemon_log_fh,
                                            stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env)
        self.daemon_overrides = dict(overrides)
        try:
            wait_until(lambda: self.daemon_proc.poll() is not None or
                       port_accepts("127.0.0.1", self.milter_port), 10,
                       what="portcullisd milter port %d" % self.milter_port)
        except LabError:
            self.stop_daemon()
            raise LabError("portcullisd did not listen:\n%s" % _tail(self.daemon_log))
        if self.daemon_proc.poll() is not None:
            rc = self.daemon_proc.returncode
            self.daemon_proc = None
            self.daemon_overrides = None
            raise LabError("portcullisd exited %s at start:\n%s" % (rc, _tail(self.daemon_log)))

    def stop_daemon(self, grace=6.0):
        """SIGTERM, wait up to grace seconds (libmilter can take ~5 s), then
        SIGKILL.  Returns (exit status, seconds it took, killed?)."""
        p = self.daemon_proc
        if p is None:
            return None
        t0 = time.monotonic()
        killed = False
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                killed = True
                p.kill()
                p.wait(5)
        took = time.monotonic() - t0
        if self.daemon_log_fh:
            self.daemon_log_fh.write(("=== lab: portcullisd exit %s after %.2fs%s\n" % (
                p.returncode, took, " (SIGKILL)" if killed else "")).encode())
            self.daemon_log_fh.close()
            self.daemon_log_fh = None
        self.daemon_proc = None
        self.daemon_overrides = None
        self.last_daemon_stop = (p.returncode, took, killed)
        return self.last_daemon_stop

    def restart_daemon(self, **overrides):
        self.stop_daemon()
        self.start_daemon(**overrides)

    def ensure_daemon(self, **overrides):
        """Run the daemon with exactly these overrides; restart only if needed."""
        if (self.daemon_proc is not None and self.daemon_proc.poll() is None
                and self.daemon_overrides == overrides):
            return
        self.restart_daemon(**overrides)

    def daemon_alive(self):
        return self.daemon_proc is not None and self.daemon_proc.poll() is None

    # -------------------------------------------------------------------- CLI
    def cli(self, *args, check=True, timeout=20):
        exe = os.path.join(BIN, "portcullis")
        p = subprocess.run([exe, "-c", self.conf] + [str(a) for a in args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, text=True, timeout=timeout)
        _log("cli %s -> %d %s %s" % (" ".join(map(str, args)), p.returncode,
                                     p.stdout.strip(), p.stderr.strip()))
        if check and p.returncode != 0:
            raise LabError("portcullis %s exited %d\nstdout: %s\nstderr: %s" % (
                " ".join(map(str, args)), p.returncode, p.stdout, p.stderr))
        return p

    def _list_add(self, which, entry, ttl=None, reason=None):
        a = [which, "add", entry]
        if ttl is not None:
            a += ["--ttl", str(ttl)]
        if reason is not None:
            a += ["--reason", reason]
        return self.cli(*a)

    def kill_add(self, entry, ttl=None, reason=None):
        return self._list_add("kill", entry, ttl, reason)

    def kill_del(self, entry, check=True):
        return self.cli("kill", "del", entry, check=check)

    def kill_list(self):
        return self.cli("kill", "list").stdout

    def accept_add(self, entry, ttl=None, reason=None):
        return self._list_add("accept", entry, ttl, reason)

    def accept_del(self, entry, check=True):
        return self.cli("accept", "del", entry, check=check)

    def accept_list(self):
        return self.cli("accept", "list").stdout

    # ------------------------------------------------------------------- SMTP
    def client(self, source="127.0.0.5", helo=LOCAL_HOSTNAME, timeout=15):
        host = "::1" if ":" in source else "127.0.0.1"
        return SmtpClient(host, self.smtp_port, source, helo, timeout)

    def send(self, source, sender, rcpts, message=None, helo=LOCAL_HOSTNAME,
             stop_on_reject=True):
        """One transaction: CONNECT, EHLO, MAIL, RCPT..., DATA (if message is
        not None and some RCPT got 2xx), QUIT.  Returns the SmtpClient (see
        .steps / .step('RCPT')).  With stop_on_reject, a MAIL refusal ends it."""
        if isinstance(rcpts, str):
            rcpts = [rcpts]
        c = self.client(source, helo)
        c.connect()
        c.ehlo()
        code, _ = c.mail(sender)
        if code // 100 == 2 or not stop_on_reject:
            ok = 0
            for r in rcpts:
                rc, _ = c.rcpt(r)
                if rc // 100 == 2:
                    ok += 1
            if message is not None and ok:
                c.data(message)
        c.quit()
        return c

    # ------------------------------------------------------------------- sink
    def sink_messages(self):
        out = []
        try:
            names = sorted(os.listdir(self.sink_dir))
        except FileNotFoundError:
            return out
        for n in names:
            p = os.path.join(self.sink_dir, n)
            try:
                st = os.stat(p)
                key = (st.st_size, st.st_mtime_ns)
                cached = self._sink_cache.get(p)
                if cached and cached[0] == key:
                    text = cached[1]
                else:
                    with open(p, "rb") as f:
                        text = f.read().decode("utf-8", "replace")
                    self._sink_cache[p] = (key, text)
            except OSError:
                continue
            out.append(Delivered(p, text))
        return out

    def find_delivered(self, marker, complete=True):
        found = []
        for d in self.sink_messages():
            if marker in d.text:
                if complete and not re.search(r"END-%s\r?\n" % re.escape(marker), d.text):
                    continue
                found.append(d)
        return found

    def wait_for_message(self, marker, timeout=10.0):
        """Poll the sink until a complete dump carrying marker exists; return
        the list of Delivered (Postfix may split a message across transactions)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find_delivered(marker)
            if found:
                time.sleep(0.05)      # let any sibling transaction land too
                return self.find_delivered(marker)
            if time.monotonic() >= deadline:
                raise LabError("message %s did not reach the sink within %.0fs; "
                               "maillog tail:\n%s" % (marker, timeout, _tail(self.maillog, 15)))
            time.sleep(0.05)

    def probe(self, source="127.0.0.2", timeout=10.0):
        """Send a known-good message and wait until the sink has it."""
        m = new_marker("probe")
        c = self.send(source, "probe@example.com", ["probe@example.com"],
                      make_message(m, from_="probe@example.com", to="probe@example.com"))
        last = c.step("<message>")
        if last is None or last.code != 250:
            raise LabError("probe message was not accepted:\n%s" % c.transcript())
        return self.wait_for_message(m, timeout)

    def assert_never_delivered(self, marker, timeout=10.0):
        """Raise unless marker is absent from the sink after a later probe
        message has been delivered (the queue is drained by then)."""
        self.probe(timeout=timeout)
        found = self.find_delivered(marker, complete=False)
        if found:
            raise AssertionError("message %s reached the sink: %s" % (marker, found))

    # ------------------------------------------------------------------- logs
    def log_mark(self):
        return {"daemon": _size(self.daemon_log), "maillog": _size(self.maillog)}

    def daemon_log_since(self, mark):
        return _read_from(self.daemon_log, mark["daemon"])

    def maillog_since(self, mark):
        return _read_from(self.maillog, mark["maillog"])

    def sanitizer_reports(self):
        txt = _read(self.daemon_log)
        return [l for l in txt.splitlines() if SANITIZER_RE.search(l)]


# ------------------------------------------------------------------ helpers
def _size(p):
    try:
        return os.path.getsize(p)
    except OSError:
        return 0


def _read(p):
    try:
        with open(p, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _read_from(p, off):
    try:
        with open(p, "rb") as f:
            f.seek(off)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(p, n=30):
    return "\n".join(_read(p).splitlines()[-n:])


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    # a zombie is not alive for our purposes
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except OSError:
        pass


_LABS = []
_handlers_installed = False


def _cleanup_all():
    for lab in list(_LABS):
        lab.close()


def _on_signal(signum, frame):
    _cleanup_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_cleanup(lab):
    global _handlers_installed
    _LABS.append(lab)
    if not _handlers_installed:
        _handlers_installed = True
        atexit.register(_cleanup_all)
        for s in (signal.SIGTERM, signal.SIGHUP):
            try:
                signal.signal(s, _on_signal)
            except (ValueError, OSError):   # not the main thread
                pass
        # SIGINT stays KeyboardInterrupt: with-blocks and finally clauses run,
        # and atexit covers the rest.


def _uninstall_cleanup(lab):
    if lab in _LABS:
        _LABS.remove(lab)


def _main(argv):
    """Helpers for shell runners:
        lab.py free-port                       print a free 127.0.0.1 TCP port
        lab.py daemon-config PORT DIR [k=v..]  print a portcullisd config
        lab.py wait-port PORT [SECS [PID]]     exit 0 once 127.0.0.1:PORT accepts;
                                               1 on timeout or if PID exits first
        lab.py sanitizer-scan LOG              print sanitizer lines; exit 1 if any
        lab.py                                 smoke test the lab without a milter
    """
    if argv and argv[0] == "free-port":
        print(free_port())
        return 0
    if argv and argv[0] == "daemon-config":
        ov = dict(a.split("=", 1) for a in argv[3:])
        sys.stdout.write(daemon_config_text(int(argv[1]), argv[2], **ov))
        return 0
    if argv and argv[0] == "wait-port":
        pid = int(argv[3]) if len(argv) > 3 else None
        try:
            wait_until(lambda: port_accepts("127.0.0.1", int(argv[1])) or
                       (pid is not None and not _pid_alive(pid)),
                       float(argv[2]) if len(argv) > 2 else 10.0, what="port " + argv[1])
        except LabError as e:
            print(e, file=sys.stderr)
            return 1
        if pid is not None and not _pid_alive(pid):
            print("process %d exited before listening" % pid, file=sys.stderr)
            return 1
        return 0
    if argv and argv[0] == "sanitizer-scan":
        bad = [l for l in _read(argv[1]).splitlines() if SANITIZER_RE.search(l)]
        for l in bad:
            print(l)
        return 1 if bad else 0
    if argv:
        print(_main.__doc__, file=sys.stderr)
        return 2
    _smoke()
    return 0


def _smoke():
    # Smoke test without a milter: outside client to a relay domain and to a
    # foreign domain (Postfix relays both for mynetworks; the sink gets them).
    t0 = time.monotonic()
    with Lab(milter=False) as lab:
        print("lab %s up in %.2fs (smtp %d, sink %d, ipv6 %s)" % (
            lab.dir, time.monotonic() - t0, lab.smtp_port, lab.sink_port, lab.ipv6))
        for src, rcpt in (("127.0.0.5", "user@example.com"), ("127.0.0.2", "user@other.org")) + (
                (("::1", "user6@other.org"),) if lab.ipv6 else ()):
            m = new_marker()
            c = lab.send(src, "sender@outside.test", [rcpt], make_message(m, to=rcpt))
            print(c.transcript())
            d = lab.wait_for_message(m)
            print("  delivered:", d)
        print("smoke ok in %.2fs" % (time.monotonic() - t0), flush=True)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
