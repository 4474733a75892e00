"""The one launcher of portcullisd (and the other binaries under PORTCULLIS_BIN).

    d = Daemon("gw", SMTP_GATEWAY, delivery="maildir:{dir}/mail", smtp_timeout=3)
    d.start()                 # waits until d.port accepts (or ready="log text"/callable)
    ... d.port, d.dir, d.conf, d.log_path, d.cli("kill", "list"), d.log_since(mark) ...
    rc, took, killed = d.stop()        # SIGTERM, SIGKILL after grace; workers reaped
    d.assert_clean()          # AssertionError on a sanitizer report (or an exit != 0)

Config text: base keys (an ordered dict or (key, value) pairs) with keyword
overrides applied in order; an override of None drops the key; "{dir}" and
"{port}" in a value become the daemon's directory and port.

Every Daemon made is remembered (DAEMONS): runner.main() stops whatever is
still running at the end and fails the run when any log holds a sanitizer
report (AddressSanitizer, LeakSanitizer, UBSan "runtime error:").

Environment: PORTCULLIS_BIN (default <repo>/bin), KEEP_LAB=1 keeps the
directories, ASAN_OPTIONS defaults to detect_leaks=1.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from . import ports, util
from .util import HarnessError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("PORTCULLIS_BIN", os.path.join(REPO, "bin"))
# AddressSanitizer, LeakSanitizer, UndefinedBehaviorSanitizer ... and UBSan's "runtime error:"
SANITIZER_RE = re.compile(r"Sanitizer|runtime error:")

# the standalone SMTP gateway on its own port, nothing else; callers add delivery
SMTP_GATEWAY = (
    ("services", "smtp"),
    ("smtp_listen", "127.0.0.1:{port}"),
    ("myhostname", "mx.example.com"),
    ("mydomains", "example.com"),
    ("state_dir", "{dir}/state"),
)

DAEMONS = []


def exe(name="portcullisd"):
    return os.path.join(BIN, name)


def missing(names=("portcullisd", "portcullis")):
    """The binaries of names that are not executable under BIN."""
    return [exe(n) for n in names if not os.access(exe(n), os.X_OK)]


def env_for_binaries(extra=None):
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    env.update(extra or {})
    return env


def run_bin(name, *args, input=None, timeout=30, env=None, **kw):
    """Run BIN/name with args; a CompletedProcess with text stdout/stderr."""
    return subprocess.run([exe(name)] + [str(a) for a in args], input=input,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=None if input is not None else subprocess.DEVNULL,
                          text=True, timeout=timeout, env=env_for_binaries(env), **kw)


def sanitizer_lines(text):
    return [l for l in text.splitlines() if SANITIZER_RE.search(l)]


def config_text(base=(), subst=None, header="", **overrides):
    keys = {}
    items = base.items() if isinstance(base, dict) else base
    for k, v in list(items) + list(overrides.items()):
        if v is None:
            keys.pop(k, None)
            continue
        v = str(v)
        for a, b in (subst or {}).items():
            v = v.replace(a, str(b))
        keys[k] = v
    return header + "".join("%s = %s\n" % kv for kv in keys.items())


class Daemon:
    def __init__(self, name="portcullisd", base=(), *, dir=None, port=None, text=None,
                 conf=None, log=None, program="portcullisd", **overrides):
        """A daemon in its own temporary directory (or dir, which it then does
        not remove); port is a free port unless given (0: none wanted)."""
        self.name = name
        self.program = program
        self.own_dir = dir is None
        self.dir = dir or tempfile.mkdtemp(prefix="portcullis-%s." % name, dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.port = ports.free_port() if port is None else port
        self.conf = conf or os.path.join(self.dir, "portcullis.conf")
        self.log_path = log or os.path.join(self.dir, "portcullisd.log")
        self.base = base
        self.overrides = dict(overrides)
        self.proc = None
        self.log_fh = None
        self.last_stop = None
        self.closed = False
        self.write_config(text)
        DAEMONS.append(self)
        util.register(self)

    def path(self, *p):
        return os.path.join(self.dir, *p)

    # ---------------------------------------------------------------- config
    def config_text(self, **overrides):
        ov = dict(self.overrides)
        ov.update(overrides)
        return config_text(self.base, {"{dir}": self.dir, "{port}": self.port},
                           "# written by tests/harness (%s)\n" % self.name, **ov)

    def write_config(self, text=None, **overrides):
        """Write the config file: text as given, or base + overrides."""
        if text is None:
            if self.base == () and not self.overrides and not overrides:
                return          # a caller that writes its own file
            self.overrides.update(overrides)
            text = self.config_text()
        with open(self.conf, "w") as f:
            f.write(text)

    # ------------------------------------------------------------ life cycle
    def start(self, ready="port", timeout=10.0, host="127.0.0.1", args=("-f",), env=None,
              note=None, **popen):
        """Start the program; wait until ready: "port" (self.port accepts),
        a string (appears in the log), a callable, or None (no wait).
        Raises HarnessError (with the log tail) if it exits first or times out."""
        if self.proc is not None:
            raise HarnessError("%s already running" % self.name)
        if not os.access(exe(self.program), os.X_OK):
            raise HarnessError("%s is missing (build with make)" % exe(self.program))
        if ready == "port" and self.port:
            util.wait_until(lambda: not ports.port_accepts(host, self.port), 10,
                            what="port %d to be free" % self.port)
        mark = util.size(self.log_path)
        self.log_fh = open(self.log_path, "ab")
        if note:
            self.log_fh.write(("=== %s\n" % note).encode())
            self.log_fh.flush()
        self.proc = subprocess.Popen([exe(self.program), "-c", self.conf] + list(args),
                                     stdout=self.log_fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env_for_binaries(env),
                                     **popen)
        if ready is None:
            return self
        if ready == "port":
            pred = lambda: ports.port_accepts(host, self.port)     # noqa: E731
        elif isinstance(ready, str):
            pred = lambda: ready in util.read_from(self.log_path, mark)   # noqa: E731
        else:
            pred = ready
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self._closed_log()
                self.proc = None
                raise HarnessError("%s (%s) exited %s at start:\n%s" % (
                    self.program, self.name, rc, self.log_tail()))
            if pred():
                return self
            if time.monotonic() >= deadline:
                self.stop()
                raise HarnessError("%s (%s) not ready within %.0f s:\n%s" % (
                    self.program, self.name, timeout, self.log_tail()))
            time.sleep(0.03)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def workers(self):
        return util.proc_children(self.proc.pid) if self.alive() else []

    def _closed_log(self):
        if self.log_fh:
            self.log_fh.close()
            self.log_fh = None

    def stop(self, grace=6.0, sig=signal.SIGTERM, note=None):
        """sig (SIGTERM), wait up to grace seconds, then SIGKILL; workers
        still alive 2 s later are SIGKILLed by pid.  Returns (exit status,
        seconds it took, killed?) or None when it was not running; also kept
        in last_stop (and the leftover workers in last_left)."""
        p = self.proc
        if p is None:
            return None
        workers = self.workers()
        t0 = time.monotonic()
        killed = False
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                killed = True
                p.kill()
                p.wait(5)
        took = time.monotonic() - t0
        deadline = time.monotonic() + 2
        while any(util.pid_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.last_left = [w for w in workers if util.pid_alive(w)]
        for w in self.last_left:
            util.kill(w, signal.SIGKILL)
        if self.log_fh and note:
            self.log_fh.write(("=== %s exit %s after %.2fs%s\n" % (
                note, p.returncode, took, " (SIGKILL)" if killed else "")).encode())
        self._closed_log()
        self.proc = None
        self.last_stop = (p.returncode, took, killed)
        return self.last_stop

    def restart(self, **start_kw):
        self.stop()
        return self.start(**start_kw)

    def close(self, keep=False):
        """Stop it and remove its directory (if it made it) unless KEEP_LAB=1."""
        if self.closed:
            return
        self.closed = True
        self.stop()
        util.unregister(self)
        if self.own_dir and not (keep or util.KEEP):
            shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------ logs
    def log_text(self):
        if self.log_fh:
            self.log_fh.flush()
        return util.read(self.log_path)

    def log_tail(self, n=30):
        return "\n".join(self.log_text().splitlines()[-n:])

    def log_mark(self):
        return util.size(self.log_path)

    def log_since(self, mark):
        return util.read_from(self.log_path, mark)

    def sanitizer_lines(self):
        return sanitizer_lines(self.log_text())

    def assert_clean(self, rc=0):
        """AssertionError if the log holds a sanitizer report, or (rc not None)
        if the last stop's exit status was not rc."""
        bad = self.sanitizer_lines()
        got = self.last_stop[0] if self.last_stop else None
        if bad or (rc is not None and self.last_stop is not None and got != rc):
            raise AssertionError("%s: exit %s; sanitizer: %s\n%s" % (
                self.name, got, bad[:5], self.log_tail(40)))

    # ------------------------------------------------------------------- CLI
    def cli(self, *args, check=True, input=None, timeout=30, env=None):
        """portcullis -c CONF args...; raises HarnessError on exit != 0 if check."""
        p = run_bin("portcullis", "-c", self.conf, *args, input=input, timeout=timeout,
                    env=env)
        util.log("cli %s -> %d %s %s" % (" ".join(map(str, args)), p.returncode,
                                         p.stdout.strip(), p.stderr.strip()))
        if check and p.returncode != 0:
            raise HarnessError("portcullis %s exited %d\nstdout: %s\nstderr: %s" % (
                " ".join(map(str, args)), p.returncode, p.stdout, p.stderr))
        return p


def sweep():
    """Stop every Daemon still running; return [(name, sanitizer lines)] for
    every daemon whose log has a report."""
    out = []
    for d in DAEMONS:
        if d.proc is not None:
            try:
                d.stop()
            except Exception:
                pass
        bad = d.sanitizer_lines()
        if bad:
            out.append((d.name, d.log_path, bad))
    return out
