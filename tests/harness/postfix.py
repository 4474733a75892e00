"""Lab: a private Postfix, an smtp-sink and (optionally) portcullisd as its milter.

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
by pid.  The daemon is a harness.daemon.Daemon (its log is scanned by runner).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from . import daemon as _daemon
from . import util as _util
from .client import LOCAL_HOSTNAME, SmtpClient, make_message, new_marker
from .daemon import SANITIZER_RE
from .ports import free_port, ipv6_loopback_usable, port_accepts
from .util import HarnessError as LabError
from .util import log as _log
from .util import read as _read
from .util import read_from as _read_from
from .util import size as _size
from .util import tail as _tail
from .util import pid_alive as _pid_alive
from .util import kill as _kill
from .util import wait_until

POSTFIX = "/usr/sbin/postfix"
SMTP_SINK = "/usr/sbin/smtp-sink"
MYHOSTNAME = "mx.portcullis.test"

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




def daemon_config_text(port, labdir, **overrides):
    """portcullisd's config (main.cf syntax) for a lab: DAEMON_DEFAULTS with
    overrides applied; an override of None drops the key."""
    return _daemon.config_text(DAEMON_DEFAULTS, {"{port}": port, "{labdir}": labdir},
                               "# written by tests/harness/postfix.py\n", **overrides)


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


# The pieces of a private Postfix every lab and bench shares: its main.cf
# (loopback only, no DNS, every transport to one smtp-sink), its master.cf,
# and starting, stopping and watching the instance.
MASTER_CF_SERVICES = (
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
)

QUEUE_SUBDIRS = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")


class Postfix:
    """One private Postfix instance under workdir: postfix/ (config), data/,
    maillog, and its queue (queue_dir, default workdir/queue); smtpd on
    127.0.0.1:smtp_port (and [::1] with ipv6), everything relayed to an
    smtp-sink on 127.0.0.1:sink_port."""

    def __init__(self, workdir, smtp_port, sink_port, queue_dir=None, ipv6=False,
                 relay_domains=("example.com",), myhostname=MYHOSTNAME,
                 mydomain="portcullis.test", syslog_name=None, banner="$myhostname ESMTP lab"):
        self.dir = os.path.join(workdir, "postfix")
        self.queue = queue_dir or os.path.join(workdir, "queue")
        self.data = os.path.join(workdir, "data")
        self.maillog = os.path.join(workdir, "maillog")
        self.smtp_port = smtp_port
        self.sink_port = sink_port
        self.ipv6 = ipv6
        self.relay_domains = relay_domains
        self.myhostname = myhostname
        self.mydomain = mydomain
        self.syslog_name = syslog_name or "postfix-" + os.path.basename(workdir)
        self.banner = banner
        self.running = False
        # queue/ itself must exist; its subdirectories are made by `postfix start`.
        for d in (self.dir, self.queue):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)

    def main_cf(self, milter=None, extra=()):
        """main.cf text; milter: an smtpd_milters value or None; extra:
        (key, value) pairs that override the defaults."""
        sink = "smtp:[127.0.0.1]:%d" % self.sink_port
        c = [
            ("compatibility_level", "3.6"),
            ("config_directory", self.dir),
            ("queue_directory", self.queue),
            ("data_directory", self.data),
            ("mail_owner", "postfix"),
            ("setgid_group", "postdrop"),
            ("syslog_name", self.syslog_name),
            ("maillog_file", self.maillog),
            ("maillog_file_prefixes", "/var, /dev/stdout, /tmp, /dev/shm"),
            ("myhostname", self.myhostname),
            ("mydomain", self.mydomain),
            ("myorigin", "$myhostname"),
            ("mydestination", ""),
            ("inet_interfaces", "127.0.0.1, [::1]" if self.ipv6 else "127.0.0.1"),
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
            ("smtpd_banner", self.banner),
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
        if milter:
            c += [
                ("smtpd_milters", milter),
                ("non_smtpd_milters", ""),
                ("milter_default_action", "tempfail"),
                ("milter_protocol", "6"),
                ("milter_connect_timeout", "5s"),
                ("milter_command_timeout", "10s"),
                ("milter_content_timeout", "10s"),
            ]
        else:
            c += [("smtpd_milters", ""), ("non_smtpd_milters", "")]
        c += list(extra)
        seen = {}
        for k, v in c:
            seen[k] = v          # later entries (extras) win
        return "".join("%s = %s\n" % kv for kv in seen.items())

    def master_cf(self):
        rows = [("127.0.0.1:%d" % self.smtp_port, "inet", "n", "-", "n", "-", "-", "smtpd")]
        if self.ipv6:
            rows.append(("[::1]:%d" % self.smtp_port, "inet", "n", "-", "n", "-", "-", "smtpd"))
        rows += MASTER_CF_SERVICES
        return "".join("%-24s %-10s %-3s %-3s %-3s %-6s %-3s %s\n" % r for r in rows)

    def run(self, *args, check=True):
        """postfix -c DIR ARGS; LabError (with the maillog's tail) on failure"""
        p = subprocess.run([POSTFIX, "-c", self.dir] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, text=True, timeout=60)
        if check and p.returncode != 0:
            raise LabError("postfix %s failed (%d): %s\nmaillog:\n%s" % (
                " ".join(args), p.returncode, p.stdout, _tail(self.maillog)))
        return p

    def start(self, main_cf, master_cf=None):
        """write the config (master_cf None: self.master_cf()), start, wait for the 220"""
        with open(os.path.join(self.dir, "main.cf"), "w") as f:
            f.write(main_cf)
        with open(os.path.join(self.dir, "master.cf"), "w") as f:
            f.write(master_cf if master_cf is not None else self.master_cf())
        self.run("start")
        self.running = True

        def greeted():
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1,
                                              source_address=("127.0.0.1", 0)) as s:
                    return s.recv(512).startswith(b"220")
            except OSError:
                return False
        wait_until(greeted, 15, 0.05, "postfix smtpd on 127.0.0.1:%d" % self.smtp_port)

    def master_pid(self):
        try:
            with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self):
        """postfix stop, and the master's exit (SIGKILL after 15 s)"""
        if not self.running:
            return
        pid = self.master_pid()
        p = self.run("stop", check=False)
        if p.returncode != 0:
            sys.stderr.write("lab: postfix stop: %s\n" % p.stdout.strip())
        if pid:
            try:
                wait_until(lambda: not _pid_alive(pid), 15, 0.05, "postfix master exit")
            except LabError:
                _kill(pid, signal.SIGKILL)
        self.running = False

    def queued(self):
        """queue files in the queues a message can be waiting in"""
        n = 0
        for sub in QUEUE_SUBDIRS:
            for _root, _dirs, files in os.walk(os.path.join(self.queue, sub)):
                n += len(files)
        return n

    def maillog_size(self):
        return _size(self.maillog)

    def maillog_since(self, off):
        try:
            with open(self.maillog, "rb") as f:
                f.seek(off)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


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
        self.daemon = None          # a harness.daemon.Daemon once started
        self.daemon_overrides = None
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
        _util.register(self)
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
        for d in ("sink", "lists", "state"):
            os.mkdir(self.path(d))
            os.chmod(self.path(d), 0o755)
        shutil.chown(self.sink_dir, user="postfix")
        self.pf = Postfix(self.dir, self.smtp_port, self.sink_port, ipv6=self.ipv6,
                          relay_domains=self.relay_domains)
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
        milter = "inet:127.0.0.1:%d" % self.milter_port if self.milter else None
        return self.pf.main_cf(milter, self.main_cf_extra.items())

    def master_cf(self):
        return self.pf.master_cf()

    def _postfix(self, *args, check=True):
        return self.pf.run(*args, check=check)

    def _start_postfix(self):
        self.pf.start(self.main_cf(), self.master_cf())
        self.postfix_started = True

    def _master_pid(self):
        return self.pf.master_pid()

    def _stop_postfix(self):
        if self.postfix_started:
            self.pf.stop()
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
        _util.unregister(self)
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
        if self.daemon is not None and self.daemon.proc is not None:
            raise LabError("daemon already running")
        self.write_daemon_config(**overrides)
        if self.daemon is None:
            self.daemon = _daemon.Daemon("lab", dir=self.dir, port=self.milter_port,
                                         conf=self.conf, log=self.daemon_log)
        self.daemon.start(note="lab: start portcullisd %s" % (
            " ".join("%s=%s" % kv for kv in sorted(overrides.items())) or "(defaults)"))
        self.daemon_overrides = dict(overrides)

    @property
    def daemon_proc(self):
        return self.daemon.proc if self.daemon is not None else None

    def stop_daemon(self, grace=6.0):
        """SIGTERM, wait up to grace seconds (libmilter can take ~5 s), then
        SIGKILL.  Returns (exit status, seconds it took, killed?)."""
        if self.daemon is None or self.daemon.proc is None:
            return None
        self.daemon_overrides = None
        self.last_daemon_stop = self.daemon.stop(grace, note="lab: portcullisd")
        return self.last_daemon_stop

    def restart_daemon(self, **overrides):
        self.stop_daemon()
        self.start_daemon(**overrides)

    def ensure_daemon(self, **overrides):
        """Run the daemon with exactly these overrides; restart only if needed."""
        if self.daemon_alive() and self.daemon_overrides == overrides:
            return
        self.restart_daemon(**overrides)

    def daemon_alive(self):
        return self.daemon is not None and self.daemon.alive()

    # -------------------------------------------------------------------- CLI
    def cli(self, *args, check=True, timeout=20):
        p = _daemon.run_bin("portcullis", "-c", self.conf, *args, timeout=timeout)
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


