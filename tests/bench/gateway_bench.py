#!/usr/bin/env python3
"""Throughput, memory and latency of the standalone SMTP gateway (not in CI).

One run measures, with smtp-source as the client (N messages of --size body
bytes, one message per session, --sessions sessions in parallel,
a@example.org -> user@example.com):

    (a) ceiling       smtp-source -> smtp-sink -c            (the harness itself)
    (b) pass-through  smtp-source -> portcullisd, delivery = relay:[127.0.0.1]:SINK
    (c) maildir       smtp-source -> portcullisd, delivery = maildir:DIR
                      (fsync of file and new/ before every 250)
    (d) postfix       smtp-source -> a private Postfix 3.7 relaying to smtp-sink
                      (tests/bench/postfix_throughput.py's Postfix: its queue
                      fsyncs before every 250 too)

The four are interleaved (a b c d a b c d ...) --repeats times and the
medians printed.  Each run gets an untimed warm-up and must deliver exactly N (sink
count, or files in new/, or the sink count with an empty Postfix queue):
anything lost or refused fails the bench.  For (a)-(c) the 250 at the end of
DATA means delivered, so the clock stops when smtp-source exits; for Postfix
both figures are printed: accepted (smtp-source exits) and delivered (the
sink has every message and the queue is empty).

Then, against the gateway (log_level = warn for all runs):
    idle memory   --idle connections opened and greeted, the smtp worker's
                  RSS (and RssAnon) growth divided by their number
    latency       --latency-sessions concurrent sessions (python asyncio), each
                  doing --latency-tx full transactions (MAIL, RCPT, DATA, body,
                  final 250) on its connection: p50 / p90 / p99 / max per
                  transaction, for the Maildir and the pass-through gateway.
                  All sessions connect and say EHLO first, then start their
                  transactions together (a burst); the transactions/s figure
                  runs from that start, so connection set-up is not in it.

Targets: pass-through >= 0.5 x ceiling; Maildir >= 2 x Postfix (delivered);
idle connection <= 16 KiB; p99 printed.

Needs root (Postfix, smtp-sink -u postfix), the postfix package (smtp-source,
smtp-sink) and bin/portcullisd + bin/portcullis.

    python3 tests/bench/gateway_bench.py [--messages 5000] [--sessions 20]
        [--size 1024] [--warmup 300] [--repeats 3] [--idle 1000] [--latency-sessions 200]
        [--latency-tx 10] [--skip-postfix] [--keep]

Environment: PORTCULLIS_BIN (default <repo>/bin).  Everything this script
starts is stopped by pid at exit, also on SIGTERM/SIGHUP/SIGINT.
"""

import argparse
import asyncio
import atexit
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import postfix_throughput as pt  # noqa: E402  (Postfix, Sink, helpers; read-only)
from harness import daemon as hdaemon  # noqa: E402  (postfix_throughput put tests/ on the path)
from harness.ports import greets  # noqa: E402

BIN = pt.BIN
SMTP_SOURCE = pt.SMTP_SOURCE
SENDER = "a@example.org"
RCPT = "user@example.com"
HELO = "client.bench.test"


def log(msg):
    pt.log(msg)


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "VmData"):
                out[k] = int(v.split()[0]) * 1024
    return out


def children(pid):
    return [p for p in pt.descendants(pid)]


# ------------------------------------------------------------------ gateway
class Gateway(hdaemon.Daemon):
    def __init__(self, workdir, name, port, delivery, users_file):
        d = os.path.join(workdir, name)
        os.makedirs(d)
        super().__init__(name, (
            ("services", "smtp"), ("smtp_listen", "127.0.0.1:{port}"),
            ("myhostname", "mx.bench.test"), ("mydomains", "example.com"),
            ("relay_networks", "127.0.0.2"), ("state_dir", "{dir}/state"),
            ("users", "file:%s" % users_file), ("delivery", delivery),
            ("smtp_max_connections", "5000"), ("smtp_max_per_client", "5000"),
            ("log_level", "warn")), dir=d, port=port)
        self.log = self.log_path

    def start(self):
        try:
            super().start(ready=lambda: greets(self.port, 1))
        except hdaemon.HarnessError as e:
            raise pt.BenchError("portcullisd %s: %s" % (self.name, e))

    def worker(self):
        kids = children(self.proc.pid)
        if len(kids) != 1:
            raise pt.BenchError("expected one smtp worker, found %r" % kids)
        return kids[0]

    def cpu(self):
        return pt.tree_cpu_seconds(self.proc.pid) if self.proc else 0.0

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            p, self.proc = self.proc, None
            raise pt.BenchError("portcullisd %s died during the run (status %s):\n%s" % (
                self.name, p.returncode, pt.tail(self.log)))
        super().stop(5)
        for k in self.last_left:
            log("%s: worker %d outlived its master; SIGKILL" % (self.name, k))


# ------------------------------------------------------------------ bench
class Bench:
    def __init__(self, args):
        self.args = args
        self.workdir = tempfile.mkdtemp(prefix="portcullis-gwbench.", dir="/tmp")
        os.chmod(self.workdir, 0o755)
        ports = set()
        while len(ports) < 5:
            ports.add(pt.free_port())
        (self.sink_port, self.pf_port, self.pass_port, self.md_port,
         self.spare_port) = sorted(ports)
        self.sink = pt.Sink(self.workdir)
        self.postfix = pt.Postfix(self.workdir, self.pf_port, self.sink_port,
                                  os.path.join(self.workdir, "queue"))
        self.maildir = os.path.join(self.workdir, "mail")
        self.users = os.path.join(self.workdir, "users")
        self.gateways = []
        self.closed = False

    def close(self):
        if self.closed:
            return
        self.closed = True
        for fn in [g.stop for g in self.gateways] + [self.postfix.stop, self.sink.stop]:
            try:
                fn()
            except Exception as e:      # stop everything we can
                log("cleanup: %s" % e)
        if self.args.keep:
            log("kept %s" % self.workdir)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def gateway(self, name, port, delivery):
        g = Gateway(self.workdir, name, port, delivery, self.users)
        self.gateways.append(g)
        g.start()
        return g

    def add_user(self, conf):
        p = subprocess.run([os.path.join(BIN, "portcullis"), "-c", conf, "user", "add", RCPT,
                            "--password-stdin"], input="bench-password\n", text=True,
                           capture_output=True, timeout=30)
        if p.returncode != 0:
            raise pt.BenchError("user add: %s %s" % (p.stdout, p.stderr))

    def source(self, port, count, sessions=None):
        cmd = [SMTP_SOURCE, "-c", "-s", str(sessions or self.args.sessions), "-m", str(count),
               "-l", str(self.args.size), "-M", HELO, "-f", SENDER, "-t", RCPT,
               "127.0.0.1:%d" % port]
        t0 = time.monotonic()
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, text=True, timeout=self.args.timeout)
        took = time.monotonic() - t0
        if p.returncode != 0:
            raise pt.BenchError("smtp-source exited %d: %s" % (p.returncode, p.stderr.strip()))
        self.cmd = " ".join(cmd)
        return took

    def maildir_count(self):
        d = os.path.join(self.maildir, "example.com", "user", "Maildir", "new")
        try:
            return len(os.listdir(d))
        except FileNotFoundError:
            return 0

    def sink_wait(self, expect, timeout=30):
        try:
            pt.wait_until(lambda: self.sink.messages() >= expect, timeout,
                          "%d messages at the sink" % expect, interval=0.01)
        except pt.BenchError:
            pass
        return self.sink.messages()

    # (a) (b) (c): the 250 at the end of DATA means delivered
    def run_direct(self, label, port, counter, cpu=None):
        a = self.args
        if a.warmup:
            base = counter()
            self.source(port, a.warmup)
            got = self.wait_count(counter, base + a.warmup)
            if got != base + a.warmup:
                raise pt.BenchError("%s warm-up: %d of %d delivered" % (
                    label, got - base, a.warmup))
        base = counter()
        cpu0 = cpu() if cpu else 0.0
        took = self.source(port, a.messages)
        cpu1 = cpu() if cpu else 0.0
        got = self.wait_count(counter, base + a.messages, timeout=5) - base
        if got != a.messages:
            raise pt.BenchError("%s: sent %d, delivered %d" % (label, a.messages, got))
        return {"name": label, "seconds": took, "rate": a.messages / took,
                "cpu": cpu1 - cpu0 if cpu else None}

    def wait_count(self, counter, expect, timeout=30):
        try:
            pt.wait_until(lambda: counter() >= expect, timeout, "%d delivered" % expect,
                          interval=0.01)
        except pt.BenchError:
            pass
        return counter()

    def run_postfix(self):
        a = self.args
        self.postfix.start(None)
        try:
            if a.warmup:
                base = self.sink.messages()
                self.source(self.pf_port, a.warmup)
                self.drain(base + a.warmup)
            base = self.sink.messages()
            t0 = time.monotonic()
            took = self.source(self.pf_port, a.messages)
            got = self.drain(base + a.messages) - base
            t_end = time.monotonic() - t0
        finally:
            self.postfix.stop()
        if got != a.messages:
            raise pt.BenchError("postfix: sent %d, sink counted %d" % (a.messages, got))
        return {"name": "(d) postfix", "seconds": t_end, "rate": a.messages / t_end,
                "accept_seconds": took, "accept_rate": a.messages / took, "cpu": None}

    def drain(self, expect, timeout=300):
        def done():
            return self.sink.messages() >= expect and self.postfix.queued() == 0
        pt.wait_until(done, timeout, "%d at the sink, empty queue" % expect, interval=0.02)
        return self.sink.messages()

    # ------------------------------------------------------------ idle memory
    def idle_memory(self, g, n):
        raise_nofile(n + 200)
        worker = g.worker()
        socks = []
        time.sleep(0.2)
        before = proc_status(worker)
        try:
            for i in range(n):
                s = socket.create_connection(("127.0.0.1", g.port), 5)
                socks.append(s)
            for s in socks:
                s.settimeout(5)
                if not s.recv(128).startswith(b"220"):
                    raise pt.BenchError("no greeting on an idle connection")
            time.sleep(0.5)
            after = proc_status(worker)
            # still alive and serving: one more full greeting
            with socket.create_connection(("127.0.0.1", g.port), 5) as s:
                s.settimeout(5)
                if not s.recv(128).startswith(b"220"):
                    raise pt.BenchError("gateway stopped greeting with %d idle connections" % n)
        finally:
            for s in socks:
                s.close()
        return {k: (after[k] - before[k]) / n for k in before}, before, after

    # ------------------------------------------------------------ latency
    def latency(self, port, sessions, per_session):
        body = ("From: <%s>\r\nTo: <%s>\r\nSubject: latency\r\n\r\n" % (SENDER, RCPT) +
                ("x" * 70 + "\r\n") * max(1, self.args.size // 72) + ".\r\n").encode()
        lat = []
        errors = []

        async def reply(r):
            while True:
                line = await r.readline()
                if not line:
                    raise ConnectionError("connection closed")
                if line[3:4] != b"-":
                    return int(line[:3])

        ready = [0]
        go = None
        started = [0.0]

        async def session(i):
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
                if await reply(r) != 220:
                    raise ConnectionError("no greeting")
                w.write(b"EHLO %s\r\n" % HELO.encode())
                await reply(r)
                # every session connected and greeted before the first MAIL:
                # the rate then counts transactions, not connection set-up
                ready[0] += 1
                if ready[0] == sessions:
                    started[0] = time.monotonic()
                    go.set()
                await go.wait()
                for _ in range(per_session):
                    t0 = time.perf_counter()
                    for cmd, want in ((b"MAIL FROM:<%s>\r\n" % SENDER.encode(), 250),
                                      (b"RCPT TO:<%s>\r\n" % RCPT.encode(), 250),
                                      (b"DATA\r\n", 354)):
                        w.write(cmd)
                        code = await reply(r)
                        if code != want:
                            raise ConnectionError("%r -> %d" % (cmd, code))
                    w.write(body)
                    code = await reply(r)
                    if code != 250:
                        raise ConnectionError("end of data -> %d" % code)
                    lat.append(time.perf_counter() - t0)
                w.write(b"QUIT\r\n")
                await reply(r)
                w.close()
            except (OSError, ConnectionError, asyncio.TimeoutError) as e:
                errors.append("session %d: %s" % (i, e))

        async def all_sessions():
            nonlocal go
            go = asyncio.Event()
            await asyncio.gather(*(session(i) for i in range(sessions)))

        asyncio.run(asyncio.wait_for(all_sessions(), self.args.timeout))
        took = time.monotonic() - started[0]
        if errors:
            raise pt.BenchError("latency run: %d sessions failed: %s" % (
                len(errors), "; ".join(errors[:5])))
        lat.sort()

        def pct(p):
            return lat[min(len(lat) - 1, int(round(p / 100.0 * len(lat) + 0.5)) - 1)] * 1000
        return {"n": len(lat), "p50": pct(50), "p90": pct(90), "p99": pct(99),
                "max": lat[-1] * 1000, "mean": statistics.mean(lat) * 1000,
                "rate": len(lat) / took}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=1024, help="body bytes per message")
    ap.add_argument("--warmup", type=int, default=300, help="untimed messages per run")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of (a)-(d)")
    ap.add_argument("--idle", type=int, default=1000, help="idle connections (0: skip)")
    ap.add_argument("--latency-sessions", type=int, default=200)
    ap.add_argument("--latency-tx", type=int, default=10,
                    help="transactions per latency session (0: skip the latency run)")
    ap.add_argument("--skip-postfix", action="store_true")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per step, at most")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    if os.geteuid() != 0:
        print("gateway_bench: needs root (Postfix, smtp-sink -u postfix)", file=sys.stderr)
        return 1
    for exe in (pt.POSTFIX, pt.SMTP_SINK, SMTP_SOURCE, os.path.join(BIN, "portcullisd"),
                os.path.join(BIN, "portcullis")):
        if not os.access(exe, os.X_OK):
            print("gateway_bench: %s is missing (make; apt-get install postfix)" % exe,
                  file=sys.stderr)
            return 1
    raise_nofile(max(4096, args.idle + 500))

    bench = Bench(args)
    atexit.register(bench.close)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    t_all = time.monotonic()
    rows = []
    mem = lat_md = lat_pass = None
    try:
        bench.sink.start(bench.sink_port)
        print("Gateway bench: %d messages x %d B body, %d parallel sessions (one message "
              "per session), warm-up %d, %d CPU(s), disk %s" % (
                  args.messages, args.size, args.sessions, args.warmup, os.cpu_count(),
                  bench.workdir), flush=True)

        gp = bench.gateway("passthrough", bench.pass_port,
                           "relay:[127.0.0.1]:%d" % bench.sink_port)
        bench.add_user(gp.conf)
        gm = bench.gateway("maildir", bench.md_port, "maildir:" + bench.maildir)
        for rep in range(args.repeats):
            # interleaved, so a slow phase of the machine hits every configuration
            for r in (bench.run_direct("(a) ceiling: smtp-sink", bench.sink_port,
                                       bench.sink.messages),
                      bench.run_direct("(b) gateway pass-through", gp.port,
                                       bench.sink.messages, gp.cpu),
                      bench.run_direct("(c) gateway Maildir", gm.port, bench.maildir_count,
                                       gm.cpu)) + (
                    () if args.skip_postfix else (bench.run_postfix(),)):
                r["rep"] = rep + 1
                rows.append(r)
                print("  run %d %-28s %8.2f s %8.0f msg/s%s%s" % (
                    r["rep"], r["name"], r["seconds"], r["rate"],
                    "  (gateway CPU %.2f s)" % r["cpu"] if r["cpu"] is not None else "",
                    "  delivered; accepted in %.2f s = %.0f msg/s" % (
                        r["accept_seconds"], r["accept_rate"]) if "accept_rate" in r else ""),
                    flush=True)

        if args.idle:
            per, before, after = bench.idle_memory(gm, args.idle)
            mem = (per, before, after)
            print("  idle connections: %d; worker VmRSS %.1f -> %.1f MiB, RssAnon %.1f -> %.1f "
                  "MiB" % (args.idle, before["VmRSS"] / 2**20, after["VmRSS"] / 2**20,
                           before["RssAnon"] / 2**20, after["RssAnon"] / 2**20), flush=True)
        if args.latency_tx and args.latency_sessions:
            lat_md = bench.latency(gm.port, args.latency_sessions, args.latency_tx)
            print("  latency Maildir: %d tx, p50 %.1f ms p99 %.1f ms" % (
                lat_md["n"], lat_md["p50"], lat_md["p99"]), flush=True)
            lat_pass = bench.latency(gp.port, args.latency_sessions, args.latency_tx)
            print("  latency pass-through: %d tx, p50 %.1f ms p99 %.1f ms" % (
                lat_pass["n"], lat_pass["p50"], lat_pass["p99"]), flush=True)
        for g in list(bench.gateways):
            g.stop()
    except pt.BenchError as e:
        print("gateway_bench: FAILED: %s" % e, file=sys.stderr)
        return 1
    finally:
        bench.close()

    names = []
    for r in rows:
        if r["name"] not in names:
            names.append(r["name"])
    med = {}
    for n in names:
        rs = [r for r in rows if r["name"] == n]
        med[n] = {k: statistics.median(r[k] for r in rs)
                  for k in ("seconds", "rate", "cpu", "accept_seconds", "accept_rate")
                  if rs[0].get(k) is not None}
    rate = {n[:3]: med[n]["rate"] for n in names}
    print()
    print("client: %s" % bench.cmd)
    print("medians of %d run(s):" % args.repeats)
    print("  %-28s %9s %10s %14s" % ("configuration", "seconds", "messages/s", "gateway CPU s"))
    for n in names:
        m = med[n]
        print("  %-28s %9.2f %10.0f %14s" % (
            n, m["seconds"], m["rate"], "%.2f" % m["cpu"] if "cpu" in m else "-"))
        if "accept_rate" in m:
            print("  %-28s %9.2f %10.0f %14s" % ("    (postfix, accepted only)",
                                                  m["accept_seconds"], m["accept_rate"], "-"))
    print()
    print("  %-52s %8s %8s" % ("measure", "result", "target"))

    def line(what, val, target, ok):
        print("  %-52s %8s %8s  %s" % (what, val, target, "ok" if ok else "MISSED"))
    line("pass-through / ceiling", "%.2f" % (rate["(b)"] / rate["(a)"]), ">= 0.50",
         rate["(b)"] / rate["(a)"] >= 0.5)
    if "(d)" in rate:
        pf = [med[n] for n in names if n.startswith("(d)")][0]
        line("Maildir / Postfix (delivered)", "%.2f" % (rate["(c)"] / rate["(d)"]), ">= 2.00",
             rate["(c)"] / rate["(d)"] >= 2)
        print("  %-52s %8.2f" % ("Maildir / Postfix (accepted only)",
                                 rate["(c)"] / pf["accept_rate"]))
    if mem:
        per = mem[0]
        line("memory per idle connection, VmRSS (KiB)", "%.1f" % (per["VmRSS"] / 1024),
             "<= 16", per["VmRSS"] / 1024 <= 16)
        print("  %-52s %8.1f" % ("memory per idle connection, RssAnon (KiB)",
                                 per["RssAnon"] / 1024))
    for name, lt in (("Maildir", lat_md), ("pass-through", lat_pass)):
        if lt:
            print("  %-52s %8s" % ("latency %s, %d sessions x %d tx: p50 / p90 / p99 / max" % (
                name, args.latency_sessions, args.latency_tx),
                "%.1f / %.1f / %.1f / %.1f ms" % (lt["p50"], lt["p90"], lt["p99"], lt["max"])))
            print("  %-52s %8.0f" % ("  (transactions/s during that run)", lt["rate"]))
    print("  total bench time %.0f s" % (time.monotonic() - t_all))
    return 0


if __name__ == "__main__":
    sys.exit(main())
