#!/usr/bin/env python3
"""The IMAP proxy (issue 12) against straight to the same Dovecot, in the same
run (part of `make bench`, not of CI).

One private Dovecot on loopback (its own store, {PLAIN} passdb, plaintext
IMAP) holds bench@example.com with a --big-mb MB message; Portcullis' IMAP
door has the same user with proxy=y host=127.0.0.1 port=DOVECOT, and a local
user for comparison. Measured:

    logins/s      LOGIN ... LOGOUT on fresh connections, --procs client
                  processes for --seconds: direct, through the proxy, and a
                  local Portcullis user (the yescrypt check the proxy also pays)
    latency       connect -> tagged OK of LOGIN, p50/p99 (one client); the
                  proxy's added latency = proxied - direct
    fetch MB/s    BODY.PEEK[] of the big message, direct and proxied in turn
                  (--repeats each, on one logged-in connection each): the
                  median of each, and the CPU the proxy's worker spent per MB
                  (schedstat, ns) against Dovecot's own per MB
    memory        --conns idle connections logged in and SELECTed through the
                  proxy: the growth of the imap worker's PSS per connection

Targets: fetch >= 0.9x direct, added login latency p50 <= 2 ms (beyond the
password check), <= 32 KiB per idle proxied connection.

    PORTCULLIS_BIN=bin python3 tests/bench/proxy_bench.py [--seconds 3] [--procs 2]
"""
import argparse
import multiprocessing
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from harness import dovecot  # noqa: E402
from harness.daemon import Daemon  # noqa: E402
from harness.ports import free_port, port_accepts  # noqa: E402
from harness.util import wait_until  # noqa: E402

USER, LOCAL, PASSWORD = "bench@example.com", "local@example.com", "Bench pass 1"


def login_once(port, user, password=PASSWORD, want=b"a OK"):
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), 10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b'a LOGIN "%s" "%s"\r\n' % (user.encode(), password.encode()))
    while True:
        line = f.readline()
        if not line or line.startswith(b"a "):
            break
    dt = time.perf_counter() - t0
    if not line.startswith(want):
        raise RuntimeError("login failed: %r" % line)
    s.sendall(b"z LOGOUT\r\n")
    f.read()
    s.close()
    return dt


def login_loop(args):
    port, user, seconds = args
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        login_once(port, user)
        n += 1
    return n


def logins_per_s(port, user, procs, seconds):
    with multiprocessing.Pool(procs) as p:
        counts = p.map(login_loop, [(port, user, seconds)] * procs)
    return sum(counts) / seconds


def latency(port, user, n):
    v = sorted(login_once(port, user) for _ in range(n))
    return v[len(v) // 2] * 1000, v[min(len(v) - 1, int(len(v) * 0.99))] * 1000


class Fetcher:
    """one logged-in connection that fetches the big message on demand"""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), 30)
        self.f = self.s.makefile("rb")
        self.f.readline()
        self.s.sendall(b'a LOGIN "%s" "%s"\r\nb EXAMINE INBOX\r\n' % (USER.encode(),
                                                                     PASSWORD.encode()))
        while not self.f.readline().startswith(b"b "):
            pass
        self.i = 0

    def mbps(self, size):
        self.i += 1
        t0 = time.perf_counter()
        self.s.sendall(b"f%d FETCH 1 BODY.PEEK[]\r\n" % self.i)
        got = 0
        while True:
            line = self.f.readline()
            if line.startswith(b"f%d " % self.i):
                break
            if line.endswith(b"}\r\n"):
                n = int(line[line.rindex(b"{") + 1:-3])
                left = n
                while left:
                    b = self.f.read(min(left, 1 << 20))
                    left -= len(b)
                got += n
        dt = time.perf_counter() - t0
        assert got >= size
        return got / dt / 1e6

    def close(self):
        self.s.close()


def cpu_ns(pids):
    """CPU nanoseconds of the processes, all threads (schedstat)"""
    total = 0
    for pid in pids:
        try:
            for t in os.listdir("/proc/%d/task" % pid):
                with open("/proc/%d/task/%s/schedstat" % (pid, t)) as f:
                    total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def pss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/smaps_rollup" % pid) as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def memory_per_conn(port, pids, conns):
    before = pss_kib(pids)
    held = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port), 10)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b'a LOGIN "%s" "%s"\r\nb SELECT INBOX\r\n' % (USER.encode(),
                                                               PASSWORD.encode()))
        while not f.readline().startswith(b"b "):
            pass
        held.append((s, f))
    time.sleep(1)
    after = pss_kib(pids)
    for s, _ in held:
        s.close()
    return (after - before) / conns


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--latency-samples", type=int, default=200)
    ap.add_argument("--big-mb", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--conns", type=int, default=200)
    a = ap.parse_args()
    if not dovecot.installed(("imap",)):
        print("proxy_bench: dovecot-imapd is not installed; skipped")
        return 0
    work = tempfile.mkdtemp(prefix="pc-proxybench-")
    os.chmod(work, 0o755)
    dc = dovecot.Dovecot(work, protocols=("imap",), users={USER: "{PLAIN}" + PASSWORD},
                         extra_conf="login_trusted_networks = 127.0.0.0/8\n"
                                    "mail_max_userip_connections = 10000\n"
                                    "service imap-login {\n  process_min_avail = 2\n}\n")
    md = dc.maildir(USER)
    for d in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(md, d), exist_ok=True)
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.:-+*/\r\n"
    msg = b"Subject: big\r\n\r\n" + line * (a.big_mb * 1024 * 1024 // len(line))
    with open(os.path.join(md, "cur", "1.M1P1.bench,S=%d:2,S" % len(msg)), "wb") as f:
        f.write(msg)
    dc.start()
    port = free_port()
    d = Daemon("proxybench", {
        "services": "imap", "myhostname": "bench.example.com", "mydomains": "example.com",
        "state_dir": "{dir}/state", "delivery": "maildir:{dir}/mail",
        "imap_listen": "127.0.0.1:%d" % port, "auth_allow_plaintext": "yes",
        "auth_failure_delay": "0", "auth_failure_ban": "0", "mail_max_userip_connections": "0",
        "imap_max_per_client": "100000", "imap_max_connections": "100000",
    })
    try:
        for u in (USER, LOCAL):
            d.cli("user", "add", u, "--password-stdin", input=PASSWORD + "\n")
        d.cli("user", "set", USER, "proxy=y", "host=127.0.0.1", "port=%d" % dc.imap_port)
        d.start(ready=None)
        wait_until(lambda: port_accepts("127.0.0.1", port), 10, what="the imap door")
        login_once(port, USER)
        rows = []
        for name, p, u in (("direct", dc.imap_port, USER), ("proxy", port, USER),
                           ("local", port, LOCAL)):
            lps = logins_per_s(p, u, a.procs, a.seconds)
            p50, p99 = latency(p, u, a.latency_samples)
            rows.append((name, lps, p50, p99))
            print("%-7s logins/s %7.0f   login latency p50 %6.2f ms  p99 %6.2f ms" %
                  (name, lps, p50, p99))
        v = sorted(login_once(port, LOCAL, "wrong", b"a NO") for _ in range(a.latency_samples))
        c50 = v[len(v) // 2] * 1000
        d50 = rows[1][2] - rows[0][2]
        d99 = rows[1][3] - rows[0][3]
        print("added by the proxy: p50 %.2f ms, p99 %.2f ms; of it Portcullis' password check "
              "(a refused LOGIN) p50 %.2f ms; the proxy itself p50 %.2f ms" %
              (d50, d99, c50, d50 - c50))
        direct, proxied = Fetcher(dc.imap_port), Fetcher(port)
        fds, fps, pcpu, dcpu = [], [], 0, 0
        mb = len(msg) / 1e6
        for _ in range(a.repeats):
            c0 = cpu_ns(dc.pids())
            fds.append(direct.mbps(len(msg)))
            dcpu += cpu_ns(dc.pids()) - c0
            c0 = cpu_ns(d.workers())
            fps.append(proxied.mbps(len(msg)))
            pcpu += cpu_ns(d.workers()) - c0
        direct.close()
        proxied.close()
        fd, fp = statistics.median(fds), statistics.median(fps)
        print("fetch %d MB, median of %d in turn: direct %.0f MB/s, proxy %.0f MB/s (%.2fx); "
              "CPU per MB: the proxy %.2f ms, Dovecot %.2f ms" % (
                  a.big_mb, a.repeats, fd, fp, fp / fd, pcpu / 1e6 / (mb * a.repeats),
                  dcpu / 1e6 / (mb * a.repeats)))
        kib = memory_per_conn(port, d.workers(), a.conns)
        print("memory per idle proxied connection (imap worker PSS): %.1f KiB over %d" %
              (kib, a.conns))
    finally:
        d.stop()
        d.close()
        dc.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
