#!/usr/bin/env python3
"""Postfix throughput with and without a milter (part of `make bench`).

A private Postfix (its own config, queue and ports, loopback only) relays
everything to an `smtp-sink` that keeps nothing (no dump directory, so the
sink is never the bottleneck).  `smtp-source` injects the load: N messages
of --size body bytes, one message per SMTP session, --sessions sessions in
parallel, sender@example.org -> user@example.com.

Three configurations, measured in one run with identical Postfix settings:

    no milter      smtpd_milters empty
    null-milter    bin/null-milter: every stage, every reply CONTINUE (the
                   price of the milter protocol itself)
    portcullisd    bin/portcullisd -f, log_level = warn

The configurations are interleaved (a b c a b c ...) --repeats times; each
run gets a freshly started Postfix and milter and a small untimed warm-up.
The clock starts when smtp-source starts and stops when the sink has counted
every message and the Postfix queue is empty again, so the figure is
end-to-end (accepted by smtpd, through the milter, queued, delivered).  Each
run must deliver exactly N messages: anything rejected, deferred, bounced or
lost fails the bench (exit 1).

Printed: one line per run, then a table of medians (messages, seconds,
messages/s, milter CPU seconds) and the ratios portcullisd / null-milter and
null-milter / no-milter.

Needs root (Postfix, smtp-sink -u postfix), the postfix package (smtp-source,
smtp-sink) and bin/null-milter + bin/portcullisd (make all bin/null-milter).

    python3 tests/bench/postfix_throughput.py [--messages 6000] [--sessions 16]
        [--size 1024] [--repeats 3] [--warmup 300] [--latency 100] [--unix]
        [--queue-on-tmpfs] [--keep]

Environment: PORTCULLIS_BIN (default <repo>/bin).  Everything this script
starts is stopped by pid at exit, also on SIGTERM/SIGHUP/SIGINT.
"""

import argparse
import atexit
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import ports  # noqa: E402
from harness import postfix as harness_postfix  # noqa: E402
from harness.util import HarnessError  # noqa: E402
from harness.daemon import BIN  # noqa: E402,F401
from harness.ports import free_port  # noqa: E402,F401
from harness.util import pid_alive, tail  # noqa: E402,F401

POSTFIX = "/usr/sbin/postfix"
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"

SENDER = "sender@example.org"
RCPT = "user@example.com"
CLIENT_HELO = "client.bench.test"
MYHOSTNAME = "mx.bench.test"
CLK_TCK = os.sysconf("SC_CLK_TCK")


BenchError = HarnessError


def log(msg):
    sys.stderr.write("bench: %s\n" % msg)
    sys.stderr.flush()


# ------------------------------------------------------------------ helpers
def port_accepts(port, timeout=0.2):
    return ports.port_accepts("127.0.0.1", port, timeout)


def wait_until(pred, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise BenchError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def proc_cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def descendants(pid):
    """pids of all live descendants of pid (portcullisd -f is a master with
    worker processes)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                ppid = int(f.read().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def tree_cpu_seconds(pid):
    return sum(proc_cpu_seconds(p) for p in [pid] + descendants(pid))


def system_cpu():
    """(busy, total) jiffies over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


def stop_process(p, grace=2.0):
    """SIGTERM, then SIGKILL after grace seconds (libmilter can take ~5 s)."""
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


# -------------------------------------------------------------------- sink
class Sink:
    """smtp-sink -c: it prints "sess=N quit=N mesg=N\\r" after every session
    end, QUIT and "."; the last mesg= is the number of messages received."""

    RE = re.compile(rb"mesg=(\d+)")

    def __init__(self, workdir):
        self.port = None
        self.out = os.path.join(workdir, "smtp-sink.out")
        self.proc = None
        self.offset = 0
        self.count = 0

    def start(self, port):
        self.port = port
        fh = open(self.out, "wb")
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-u", "postfix", "-c", "-h", "sink.bench.test",
             "127.0.0.1:%d" % port, "256"],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        fh.close()
        wait_until(lambda: self.proc.poll() is not None or port_accepts(port), 10, "smtp-sink")
        if self.proc.poll() is not None:
            raise BenchError("smtp-sink exited: %s" % tail(self.out))

    def messages(self):
        with open(self.out, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        cut = data.rfind(b"\r")
        if cut >= 0:
            m = self.RE.findall(data[:cut])
            if m:
                self.count = int(m[-1])
            self.offset += cut + 1
        return self.count

    def stop(self):
        stop_process(self.proc)
        self.proc = None


# ----------------------------------------------------------------- postfix
# throughput: Postfix must not be the artificial limit
THROUGHPUT_MAIN_CF = (
    ("default_process_limit", "100"),
    ("default_destination_concurrency_limit", "50"),
    ("smtp_destination_concurrency_limit", "50"),
    ("initial_destination_concurrency", "20"),
    ("default_destination_rate_delay", "0"),
    ("smtp_connection_cache_on_demand", "yes"),
)


class Postfix(harness_postfix.Postfix):
    """the harness's private Postfix, tuned for throughput"""

    def __init__(self, workdir, smtp_port, sink_port, queue_dir):
        super().__init__(workdir, smtp_port, sink_port, queue_dir, myhostname=MYHOSTNAME,
                         mydomain="bench.test", syslog_name="postfix-bench",
                         banner="$myhostname ESMTP bench")

    def start(self, milter):
        super().start(self.main_cf(milter, THROUGHPUT_MAIN_CF))


# ------------------------------------------------------------------ milters
def unix_accepts(path, timeout=0.2):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class Milter:
    """One milter process: null-milter or portcullisd, started per run, on a
    loopback TCP port (the default) or on a UNIX-domain socket."""

    def __init__(self, kind, workdir, port, unix=False):
        self.kind = kind
        self.workdir = workdir
        self.port = port
        self.sock = os.path.join(workdir, "%s.sock" % kind) if unix else None
        self.proc = None
        self.log = os.path.join(workdir, "%s.log" % kind)

    @property
    def postfix_spec(self):
        if self.sock:
            return "unix:" + self.sock
        return "inet:127.0.0.1:%d" % self.port

    def accepts(self):
        if self.sock:
            return unix_accepts(self.sock)
        return port_accepts(self.port)

    def argv(self):
        if self.kind == "null-milter":
            spec = ("unix:" + self.sock) if self.sock else "inet:%d@127.0.0.1" % self.port
            return [os.path.join(BIN, "null-milter"), spec]
        conf = os.path.join(self.workdir, "portcullis.cf")
        lists = os.path.join(self.workdir, "lists")
        state = os.path.join(self.workdir, "state")
        for d in (lists, state):
            os.makedirs(d, exist_ok=True)
        listen = ("unix:" + self.sock) if self.sock else "inet:127.0.0.1:%d" % self.port
        with open(conf, "w") as f:
            f.write("# written by tests/bench/postfix_throughput.py\n"
                    "milter_listen = %s\n"
                    "mydomains = example.com\n"
                    "relay_networks = 127.0.0.0/8\n"
                    "lists = file:%s\n"
                    "state_dir = %s\n"
                    "log_level = warn\n" % (listen, lists, state))
        return [os.path.join(BIN, "portcullisd"), "-c", conf, "-f"]

    def start(self):
        if self.sock:
            if os.path.exists(self.sock):
                os.unlink(self.sock)
        else:
            wait_until(lambda: not port_accepts(self.port), 10,
                       "milter port %d to be free" % self.port)
        fh = open(self.log, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        fh.close()
        wait_until(lambda: self.proc.poll() is not None or self.accepts(), 10,
                   "%s on %s" % (self.kind, self.postfix_spec))
        if self.proc.poll() is not None:
            raise BenchError("%s exited %s at start:\n%s" % (
                self.kind, self.proc.returncode, tail(self.log)))
        if self.sock:
            os.chmod(self.sock, 0o666)      # smtpd runs as user postfix

    def cpu(self):
        """CPU seconds of the milter and its worker processes."""
        return tree_cpu_seconds(self.proc.pid) if self.proc else 0.0

    def stop(self):
        if self.proc is not None and self.proc.poll() is not None:
            p, self.proc = self.proc, None
            raise BenchError("%s died during the run (status %s):\n%s" % (
                self.kind, p.returncode, tail(self.log)))
        kids = descendants(self.proc.pid) if self.proc else []
        stop_process(self.proc)
        self.proc = None
        # workers left behind by a master that had to be SIGKILLed
        deadline = time.monotonic() + 2
        while any(pid_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for k in kids:
            if pid_alive(k):
                log("%s: worker %d outlived its master; SIGKILL" % (self.kind, k))
                try:
                    os.kill(k, signal.SIGKILL)
                except OSError:
                    pass


# -------------------------------------------------------------------- bench
class Bench:
    def __init__(self, args):
        self.args = args
        self.workdir = tempfile.mkdtemp(prefix="portcullis-bench.", dir="/tmp")
        os.chmod(self.workdir, 0o755)
        if args.queue_on_tmpfs:
            qdir = tempfile.mkdtemp(prefix="portcullis-bench-queue.", dir="/dev/shm")
            os.chmod(qdir, 0o755)
            self.extra_dirs = [qdir]
            qdir = os.path.join(qdir, "queue")
        else:
            self.extra_dirs = []
            qdir = os.path.join(self.workdir, "queue")
        ports = set()
        while len(ports) < 4:
            ports.add(free_port())
        smtp_port, sink_port, null_port, pcd_port = sorted(ports)
        self.sink = Sink(self.workdir)
        self.postfix = Postfix(self.workdir, smtp_port, sink_port, qdir)
        self.milters = {
            "null-milter": Milter("null-milter", self.workdir, null_port, args.unix),
            "portcullisd": Milter("portcullisd", self.workdir, pcd_port, args.unix),
        }
        self.closed = False

    def close(self):
        if self.closed:
            return
        self.closed = True
        for fn in [self.postfix.stop, self.sink.stop] + [
                m.stop for m in self.milters.values()]:
            try:
                fn()
            except Exception as e:      # stop everything we can
                log("cleanup: %s" % e)
        if self.args.keep:
            log("kept %s %s" % (self.workdir, " ".join(self.extra_dirs)))
        else:
            for d in [self.workdir] + self.extra_dirs:
                shutil.rmtree(d, ignore_errors=True)

    def source(self, count, sessions=None):
        """Run smtp-source for count messages; raise unless it exits 0."""
        a = self.args
        cmd = [SMTP_SOURCE, "-c", "-s", str(sessions or a.sessions), "-m", str(count),
               "-l", str(a.size), "-M", CLIENT_HELO, "-f", SENDER, "-t", RCPT,
               "127.0.0.1:%d" % self.postfix.smtp_port]
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, text=True, timeout=a.timeout)
        if p.returncode != 0:
            raise BenchError("smtp-source exited %d: %s\nmaillog:\n%s" % (
                p.returncode, p.stderr.strip(), tail(self.postfix.maillog)))
        return " ".join(cmd)

    def drain(self, expect, timeout):
        """Wait until the sink has counted expect messages and the queue is
        empty.  Returns the sink count."""
        def done():
            return self.sink.messages() >= expect and self.postfix.queued() == 0
        try:
            wait_until(done, timeout, "%d messages at the sink and an empty queue" % expect,
                       interval=0.02)
        except BenchError as e:
            raise BenchError("%s (sink has %d, queue holds %d)\nmaillog:\n%s" % (
                e, self.sink.messages(), self.postfix.queued(), tail(self.postfix.maillog)))
        return self.sink.messages()

    def run_one(self, name):
        a = self.args
        milter = self.milters.get(name)
        if milter:
            milter.start()
        self.postfix.start(milter.postfix_spec if milter else None)
        try:
            if a.warmup:
                base = self.sink.messages()
                self.source(a.warmup)
                self.drain(base + a.warmup, 60)
            latency = None
            if a.latency:
                # one session, one message after the other: per-message latency
                base = self.sink.messages()
                t0 = time.monotonic()
                self.source(a.latency, sessions=1)
                latency = (time.monotonic() - t0) / a.latency * 1000.0
                self.drain(base + a.latency, 60)
            base = self.sink.messages()
            # postlogd writes asynchronously: the warm-up's last "status=sent"
            # lines may still come and must not count in the timed run
            quiet_since, size = time.monotonic(), self.postfix.maillog_size()
            while time.monotonic() - quiet_since < 0.5:
                time.sleep(0.1)
                now_size = self.postfix.maillog_size()
                if now_size != size:
                    quiet_since, size = time.monotonic(), now_size
            log_off = self.postfix.maillog_size()
            cpu0 = milter.cpu() if milter else 0.0
            sys0 = system_cpu()
            t0 = time.monotonic()
            self.cmd = self.source(a.messages)
            t_inject = time.monotonic() - t0
            got = self.drain(base + a.messages, a.timeout) - base
            t_end = time.monotonic() - t0
            sys1 = system_cpu()
            cpu = (milter.cpu() - cpu0) if milter else 0.0
            # postlogd writes the maillog asynchronously: let it catch up
            try:
                wait_until(lambda: len(re.findall(r" status=sent ", self.postfix.maillog_since(
                    log_off))) >= a.messages, 10, "maillog", interval=0.2)
            except BenchError:
                pass
            ml = self.postfix.maillog_since(log_off)
        finally:
            self.postfix.stop()
            if milter:
                milter.stop()
        sent = len(re.findall(r" status=sent ", ml))
        bad = {k: len(re.findall(r" status=%s " % k, ml)) for k in ("deferred", "bounced")}
        rejects = len(re.findall(r" (?:reject|milter-reject): ", ml))
        if got != a.messages or sent != a.messages or bad["bounced"] or rejects:
            raise BenchError("%s: sent %d messages, sink counted %d, maillog: %d sent, "
                             "%d deferred, %d bounced, %d rejected" % (
                                 name, a.messages, got, sent, bad["deferred"],
                                 bad["bounced"], rejects))
        busy = 100.0 * (sys1[0] - sys0[0]) / max(1, sys1[1] - sys0[1])
        return {"name": name, "messages": got, "seconds": t_end, "inject": t_inject,
                "rate": got / t_end, "milter_cpu": cpu, "busy": busy,
                "deferred": bad["deferred"], "latency": latency}


def median(rows, key):
    return statistics.median(r[key] for r in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=6000)
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--size", type=int, default=1024, help="body bytes per message")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=300, help="untimed messages per run")
    ap.add_argument("--latency", type=int, default=100,
                    help="messages sent over 1 session per run to measure latency (0: skip)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per run, at most")
    ap.add_argument("--queue-on-tmpfs", action="store_true",
                    help="put the Postfix queue on /dev/shm (no disk fsync cost)")
    ap.add_argument("--unix", action="store_true",
                    help="milters listen on UNIX-domain sockets instead of loopback TCP")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    if os.geteuid() != 0:
        print("postfix_throughput: needs root (private Postfix, smtp-sink -u postfix)",
              file=sys.stderr)
        return 1
    for exe in (POSTFIX, SMTP_SINK, SMTP_SOURCE, os.path.join(BIN, "null-milter"),
                os.path.join(BIN, "portcullisd")):
        if not os.access(exe, os.X_OK):
            print("postfix_throughput: %s is missing (make all bin/null-milter; "
                  "apt-get install postfix)" % exe, file=sys.stderr)
            return 1

    configs = ["no milter", "null-milter", "portcullisd"]
    bench = Bench(args)
    atexit.register(bench.close)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    t_all = time.monotonic()
    results = []
    try:
        bench.sink.start(bench.postfix.sink_port)
        print("Postfix throughput: %d messages x %d B body, %d parallel sessions, "
              "%d repeat(s), milters on %s, queue on %s, %d CPU(s)" % (
                  args.messages, args.size, args.sessions, args.repeats,
                  "unix: sockets" if args.unix else "inet: 127.0.0.1",
                  "tmpfs" if args.queue_on_tmpfs else "disk", os.cpu_count()), flush=True)
        for rep in range(args.repeats):
            for name in configs:
                r = bench.run_one(name)
                r["rep"] = rep + 1
                results.append(r)
                print("  run %d %-12s %5d msgs %7.2f s %8.1f msg/s  (injected in %.2f s, "
                      "milter CPU %.2f s, system CPU busy %.0f%%%s)" % (
                          r["rep"], name, r["messages"], r["seconds"], r["rate"],
                          r["inject"], r["milter_cpu"], r["busy"],
                          ", 1-session latency %.2f ms/msg" % r["latency"]
                          if r["latency"] is not None else "") +
                      ("  WARNING: %d deferral(s), retried" % r["deferred"]
                       if r["deferred"] else ""), flush=True)
    except BenchError as e:
        print("postfix_throughput: FAILED: %s" % e, file=sys.stderr)
        return 1
    finally:
        bench.close()

    print()
    print("client: %s" % bench.cmd)
    print("medians over %d run(s) each (end to end: first message sent -> "
          "last one at the sink, queue empty):" % args.repeats)
    print("  %-13s %9s %9s %10s %14s %14s" % (
        "configuration", "messages", "seconds", "messages/s", "milter CPU s",
        "latency ms/msg"))
    rate = {}
    for name in configs:
        rows = [r for r in results if r["name"] == name]
        rate[name] = median(rows, "rate")
        print("  %-13s %9d %9.2f %10.1f %14s %14s" % (
            name, rows[0]["messages"], median(rows, "seconds"), rate[name],
            "-" if name == "no milter" else "%.2f" % median(rows, "milter_cpu"),
            "%.2f" % median(rows, "latency") if args.latency else "-"))
    print("  ratio portcullisd / null-milter: %.3f" % (rate["portcullisd"] / rate["null-milter"]))
    print("  ratio null-milter / no milter:   %.3f" % (rate["null-milter"] / rate["no milter"]))
    busy = {n: median([r for r in results if r["name"] == n], "busy") for n in configs}
    idle = [n for n in configs[1:] if busy[n] < 75]
    if idle:
        print("  note: CPUs only %s busy in the %s run(s): throughput there is\n"
              "  bound by per-message latency x %d sessions, not by CPU (latency column).\n"
              "  Seen here: a milter that skips the DATA stage (SMFIP_NODATA, e.g. no\n"
              "  xxfi_data) still gets its DATA macros from Postfix with no reply expected;\n"
              "  on an inet: socket Postfix's next write then waits ~40 ms for the delayed\n"
              "  ACK (Nagle).  --unix, or more --sessions, shows the CPU cost instead." % (
                  " / ".join("%.0f%%" % busy[n] for n in idle), " and ".join(idle),
                  args.sessions))
    print("  total bench time %.0f s" % (time.monotonic() - t_all))
    return 0


if __name__ == "__main__":
    sys.exit(main())
