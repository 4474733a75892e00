#!/usr/bin/env python3
"""The IMAP proxy (issue 12) against straight to the same Dovecot, in the same
run (part of `make bench`, not of CI).

One private Dovecot on loopback (its own store, plaintext IMAP) and
Portcullis' IMAP door in front of it. The users, each with the same password
hash on both sides (the Dovecot passdb holds {CRYPT} and the very hash of
Portcullis' users file), so that "through the proxy" and "direct" check
the same password the same way:

    bench@example.com   proxy=y, yescrypt (Portcullis' default cost)
    cheap@example.com   proxy=y, MD5-crypt ($1$, tens of microseconds)
    bench@bk.example    no line in Portcullis' users file: mail_proxy_auth =
                        backend with mail_proxy_domains = bk.example, the
                        backend's verdict decides (Portcullis checks nothing)
    local@example.com   a local Portcullis user (yescrypt), for comparison

Measured:

    logins/s      LOGIN ... LOGOUT on fresh connections, --procs client
                  processes for --seconds: direct, through the proxy, and a
                  local Portcullis user
    latency       connect -> tagged OK of LOGIN, p50/p99 (one client),
                  direct and proxied in turn (alternated in rounds, so that
                  the host's load falls on both alike); added = proxied -
                  direct for
                    backend  mail_proxy_auth = backend: the proxy's hop alone
                    md5      local check, MD5-crypt on both sides: the hop plus
                             a check too cheap to matter
                    yescrypt local check, yescrypt on both sides: the hop plus
                             Portcullis' own check, whose time is measured in
                             the same run (a refused LOGIN of this user less
                             one of the MD5-crypt user, both refused by
                             Portcullis; and crypt(3) of the same hash in this
                             process): added - check = the hop
    fetch MB/s    BODY.PEEK[] of the big message, direct and proxied in turn,
                  each sample --fetches whole fetches on one logged-in
                  connection (one 20 MB fetch lasts ~15 ms: a sample that
                  short measures the scheduler, not the proxy), --repeats
                  samples each: the median and spread of each and of the
                  per-pair ratio, the CPU per MB of the proxy, of Dovecot
                  and of this client (schedstat, ns), and how many cores
                  the whole pipeline kept busy. Four ways: plaintext and
                  over TLS (imaps at the front; the backend plaintext), and
                  each of the two through the peer, Dovecot's own proxy (a
                  second Dovecot whose passdb says proxy=y) in front of the
                  same backend
    memory        --conns idle connections logged in and SELECTed through the
                  proxy: the growth of the imap worker's PSS per connection

Each of these also through Dovecot's own proxy (its login processes in
Dovecot's high-performance mode, as its documentation advises for a proxy):
logins/s, the added login latency, fetch MB/s, memory (the growth of all of
that Dovecot's processes' PSS per connection).

Targets: fetch >= 0.9x direct, added login latency p50 <= 2 ms (beyond the
password check), <= 32 KiB per idle proxied connection.

    PORTCULLIS_BIN=bin python3 tests/bench/proxy_bench.py [--seconds 3] [--procs 2]
"""
import argparse
import ctypes
import ctypes.util
import multiprocessing
import os
import shutil
import socket
import ssl
import subprocess
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from harness import dovecot  # noqa: E402
from harness.daemon import Daemon  # noqa: E402
from harness.ports import free_port, port_accepts  # noqa: E402
from harness.util import pss_kib, wait_until  # noqa: E402

USER, LOCAL, PASSWORD = "bench@example.com", "local@example.com", "Bench pass 1"
CHEAP, BACKEND = "cheap@example.com", "bench@bk.example"

_libcrypt = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
_libcrypt.crypt.restype = ctypes.c_char_p
_libcrypt.crypt.argtypes = (ctypes.c_char_p, ctypes.c_char_p)


def crypt(password, setting):
    return _libcrypt.crypt(password.encode(), setting.encode()).decode()


def crypt_ms(h, n):
    """p50 of crypt(3) of the password against hash h: the check's own time"""
    v = []
    for _ in range(n):
        t0 = time.perf_counter()
        crypt(PASSWORD, h)
        v.append(time.perf_counter() - t0)
    v.sort()
    return v[len(v) // 2] * 1000


def users_file_hash(path, user):
    with open(path) as f:
        for line in f:
            if line.split(":", 1)[0] == user:
                h = line.split(":")[1]
                return h[7:] if h.startswith("{CRYPT}") else h
    raise RuntimeError("no %s in %s" % (user, path))


def set_users_file_hash(path, user, h):
    with open(path) as f:
        lines = f.readlines()
    with open(path, "w") as f:
        for line in lines:
            fl = line.split(":")
            if fl[0] == user:
                fl[1] = "{CRYPT}" + h
                line = ":".join(fl)
            f.write(line)


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
        raise RuntimeError("login of %s failed: %r" % (user, line))
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


def pct(v):
    v = sorted(v)
    return v[len(v) // 2] * 1000, v[min(len(v) - 1, int(len(v) * 0.99))] * 1000


def latency_pair(dport, pport, user, n, rounds=5):
    """direct and proxied login latencies, alternated in rounds: (p50, p99) each"""
    d, p = [], []
    for _ in range(rounds):
        d += [login_once(dport, user) for _ in range(n // rounds)]
        p += [login_once(pport, user) for _ in range(n // rounds)]
    return pct(d), pct(p)


class Fetcher:
    """one logged-in connection that fetches the big message on demand"""

    def __init__(self, port, tls=False):
        self.s = socket.create_connection(("127.0.0.1", port), 30)
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            self.s = ctx.wrap_socket(self.s)
        self.f = self.s.makefile("rb")
        self.f.readline()
        self.s.sendall(b'a LOGIN "%s" "%s"\r\nb EXAMINE INBOX\r\n' % (USER.encode(),
                                                                     PASSWORD.encode()))
        while not self.f.readline().startswith(b"b "):
            pass
        self.i = 0

    def mbps(self, size, times=1):
        t0 = time.perf_counter()
        got = 0
        for _ in range(times):
            got += self.fetch(size)
        return got / (time.perf_counter() - t0) / 1e6

    def fetch(self, size):
        self.i += 1
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
        assert got >= size
        return got

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


def memory_per_conn(port, pids, conns):
    before = pss_kib(pids)
    held = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port), 10)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b'a LOGIN "%s" "%s"\r\nb SELECT INBOX\r\n' % (CHEAP.encode(),
                                                               PASSWORD.encode()))
        while not f.readline().startswith(b"b "):
            pass
        held.append((s, f))
    time.sleep(1)
    after = pss_kib(pids)
    for s, _ in held:
        s.close()
    return (after - before) / conns


def fetch_pair(what, dport, pport, tls, msg_len, dc, ppids, a):
    """the big message fetched straight from Dovecot and through the proxy,
    in turn; each sample --fetches whole fetches on one connection (a
    sample of one 20 MB fetch lasts ~15 ms: scheduler noise, not the proxy)"""
    direct, proxied = Fetcher(dport, tls), Fetcher(pport, tls)
    fds, fps, pcpu, dcpu, ccpu, pccpu, dwall, pwall = [], [], 0, 0, 0, 0, 0, 0
    mb = msg_len / 1e6
    for _ in range(a.repeats):
        c0, k0, t0 = cpu_ns(dc.pids()), time.process_time_ns(), time.perf_counter()
        fds.append(direct.mbps(msg_len, a.fetches))
        dcpu += cpu_ns(dc.pids()) - c0
        ccpu += time.process_time_ns() - k0
        dwall += time.perf_counter() - t0
        c0, k0, t0 = cpu_ns(ppids() + dc.pids()), time.process_time_ns(), time.perf_counter()
        p0 = cpu_ns(ppids())
        fps.append(proxied.mbps(msg_len, a.fetches))
        pcpu += cpu_ns(ppids()) - p0
        pccpu += cpu_ns(ppids() + dc.pids()) - c0 + time.process_time_ns() - k0
        pwall += time.perf_counter() - t0
    direct.close()
    proxied.close()
    fd, fp = statistics.median(fds), statistics.median(fps)
    ratios = sorted(p / q for p, q in zip(fps, fds))
    total = mb * a.repeats * a.fetches
    print("fetch %s, %d x %d MB per sample, median of %d in turn: direct %.0f MB/s (%.0f-%.0f), "
          "proxy %.0f MB/s (%.0f-%.0f); ratio %.2fx, per pair %.2f-%.2fx, median %.2fx; "
          "CPU per MB: the proxy %.2f ms, Dovecot (direct) %.2f ms, this client %.2f ms; "
          "cores busy: direct %.2f, proxied %.2f of %d; load %.1f" % (
              what, a.fetches, a.big_mb, a.repeats, fd, min(fds), max(fds), fp, min(fps),
              max(fps), fp / fd, ratios[0], ratios[-1], statistics.median(ratios),
              pcpu / 1e6 / total, dcpu / 1e6 / total, ccpu / 1e6 / total,
              (dcpu + ccpu) / 1e9 / dwall, pccpu / 1e9 / pwall, os.cpu_count(),
              os.getloadavg()[0]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--latency-samples", type=int, default=200)
    ap.add_argument("--big-mb", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--fetches", type=int, default=10,
                    help="fetches of the big message in one timed sample")
    ap.add_argument("--conns", type=int, default=200)
    ap.add_argument("--fetch-only", action="store_true", help="skip the logins and memory")
    a = ap.parse_args()
    if not dovecot.installed(("imap",)):
        print("proxy_bench: dovecot-imapd is not installed; skipped")
        return 0
    work = tempfile.mkdtemp(prefix="pc-proxybench-")
    os.chmod(work, 0o755)
    port, imaps_port = free_port(), free_port()
    cert, key = os.path.join(work, "tls.crt"), os.path.join(work, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=bench", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    os.chmod(key, 0o644)
    d = Daemon("proxybench", {
        "services": "imap", "myhostname": "bench.example.com", "mydomains": "example.com",
        "state_dir": "{dir}/state", "delivery": "maildir:{dir}/mail",
        "imap_listen": "127.0.0.1:%d" % port, "auth_allow_plaintext": "yes",
        "imaps_listen": "127.0.0.1:%d" % imaps_port, "tls_cert_file": cert, "tls_key_file": key,
        "auth_failure_delay": "0", "auth_failure_ban": "0", "mail_max_userip_connections": "0",
        "imap_max_per_client": "100000", "imap_max_connections": "100000",
        "mail_proxy_auth": "backend", "mail_proxy_domains": "bk.example",
        "mail_proxy_default": "127.0.0.1:1",  # the Dovecot's, once it has a port
    })
    dc = dp = None
    try:
        for u in (USER, CHEAP, LOCAL):
            d.cli("user", "add", u, "--password-stdin", input=PASSWORD + "\n")
        users = d.path("state", "users")
        yes = users_file_hash(users, USER)
        md5 = crypt(PASSWORD, "$1$%s$" % os.urandom(6).hex())
        set_users_file_hash(users, CHEAP, md5)
        dc = dovecot.Dovecot(work, protocols=("imap",), tls=(cert, key),
                             users={USER: "{CRYPT}" + yes, CHEAP: "{CRYPT}" + md5,
                                    BACKEND: "{CRYPT}" + md5},
                             extra_conf="login_trusted_networks = 127.0.0.0/8\n"
                                        "mail_max_userip_connections = 10000\n"
                                        "service imap-login {\n  process_min_avail = 2\n}\n")
        md = dc.maildir(USER)
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(md, sub), exist_ok=True)
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.:-+*/\r\n"
        msg = b"Subject: big\r\n\r\n" + line * (a.big_mb * 1024 * 1024 // len(line))
        with open(os.path.join(md, "cur", "1.M1P1.bench,S=%d:2,S" % len(msg)), "wb") as f:
            f.write(msg)
        dc.start()
        # the peer: Dovecot's own proxy (a second Dovecot whose passdb says
        # proxy=y) in front of the same backend, measured the same way; its
        # BACKEND user has nopassword: the backend decides, as with
        # mail_proxy_auth = backend
        far = "host=127.0.0.1 port=%d" % dc.imap_port
        dp = dovecot.Dovecot(work, name="dovecot-proxy", protocols=("imap",), tls=(cert, key),
                             users={USER: "{CRYPT}%s::::::proxy=y %s" % (yes, far),
                                    CHEAP: "{CRYPT}%s::::::proxy=y %s" % (md5, far),
                                    BACKEND: "::::::nopassword proxy=y %s" % far},
                             # Dovecot's advice for a proxy: the
                             # high-performance login processes
                             extra_conf="service imap-login {\n  service_count = 0\n"
                                        "  process_min_avail = 2\n  client_limit = 1000\n}\n")
        dp.start()
        d.write_config(mail_proxy_default="127.0.0.1:%d" % dc.imap_port)
        for u in (USER, CHEAP):
            d.cli("user", "set", u, "proxy=y", "host=127.0.0.1", "port=%d" % dc.imap_port)
        d.start(ready=None)
        wait_until(lambda: port_accepts("127.0.0.1", port), 10, what="the imap door")
        for u in (USER, CHEAP, BACKEND):
            login_once(port, u)
            login_once(dp.imap_port, u)
        print("load average %s" % " ".join("%.1f" % x for x in os.getloadavg()))
        if not a.fetch_only:
            for name, p, u in (("direct", dc.imap_port, USER), ("proxy", port, USER),
                               ("Dovecot's proxy", dp.imap_port, USER), ("local", port, LOCAL)):
                print("%-15s logins/s %7.0f (yescrypt, %d clients)" %
                      (name, logins_per_s(p, u, a.procs, a.seconds), a.procs))
            # Portcullis' own yescrypt check, two ways: crypt(3) of the same
            # hash here, and in the door itself: a refused LOGIN of the
            # yescrypt user less one of the MD5-crypt user (refused by
            # Portcullis, the backend never asked), alternated
            check = crypt_ms(yes, 40)
            ry, rm = [], []
            for _ in range(5):
                ry += [login_once(port, USER, "wrong", b"a NO")
                       for _ in range(a.latency_samples // 10)]
                rm += [login_once(port, CHEAP, "wrong", b"a NO")
                       for _ in range(a.latency_samples // 10)]
            door = pct(ry)[0] - pct(rm)[0]
            for name, u, own in (("backend", BACKEND, None), ("md5", CHEAP, None),
                                 ("yescrypt", USER, door)):
                (d50, d99), (p50, p99) = latency_pair(dc.imap_port, port, u, a.latency_samples)
                print("%-8s login latency p50/p99: direct %6.2f / %6.2f ms, proxied %6.2f / %6.2f "
                      "ms; added p50 %5.2f ms%s" % (
                          name, d50, d99, p50, p99, p50 - d50,
                          "" if own is None else "; Portcullis' own check p50 %.2f ms in the "
                          "door (%.2f ms crypt(3) alone): the hop %.2f ms" % (
                              own, check, p50 - d50 - own)))
                (d50, d99), (p50, p99) = latency_pair(dc.imap_port, dp.imap_port, u,
                                                      a.latency_samples)
                print("%-8s login latency p50/p99: direct %6.2f / %6.2f ms, Dovecot's proxy "
                      "%6.2f / %6.2f ms; added p50 %5.2f ms" % (name, d50, d99, p50, p99,
                                                                 p50 - d50))
        msg_len = len(msg)
        del msg
        fetch_pair("plaintext", dc.imap_port, port, False, msg_len, dc, d.workers, a)
        fetch_pair("TLS (imaps)", dc.imaps_port, imaps_port, True, msg_len, dc, d.workers, a)
        fetch_pair("plaintext, Dovecot's own proxy", dc.imap_port, dp.imap_port, False,
                   msg_len, dc, dp.pids, a)
        fetch_pair("TLS (imaps), Dovecot's own proxy", dc.imaps_port, dp.imaps_port, True,
                   msg_len, dc, dp.pids, a)
        if not a.fetch_only:
            kib = memory_per_conn(port, d.workers(), a.conns)
            print("memory per idle proxied connection (imap worker PSS): %.1f KiB over %d" %
                  (kib, a.conns))
            kib = memory_per_conn(dp.imap_port, dp.pids(), a.conns)
            print("memory per idle connection through Dovecot's proxy (all its processes' PSS): "
                  "%.1f KiB over %d" % (kib, a.conns))
    finally:
        d.stop()
        d.close()
        for x in (dp, dc):
            if x is not None:
                x.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
