#!/usr/bin/python3
"""What every network door stands on (service/), driven through the SMTP
gateway with raw sockets from many loopback addresses:

  T19Anvil     smtp_max_per_client holds exactly, also after churn from
               addresses that collided in the old table (same low 10 bits)
  T07Emfile    out of file descriptors the listener pauses instead of
               spinning (few log lines), and serves again afterwards
  T18Orphans   the master SIGKILLed: its workers are gone within ~1.5 s
               and a new start binds the same ports
  T17Timeouts  the per-request deadline, smtp_min_data_rate and the
               stress-adaptive timeout cut slow clients

Each test runs its own portcullisd (services = smtp) on free loopback
ports; at its end the log must hold no sanitizer report.
Run:  PORTCULLIS_BIN=build/asan/bin python3 tests/integration/test_smtp_service.py
Last line printed: "N passed, N failed"; exit status 1 on any failure.
"""

import os
import resource
import signal
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import daemon as hdaemon, runner                 # noqa: E402
from harness.ports import free_port, port_accepts             # noqa: E402
from harness.util import pid_alive, wait_until               # noqa: E402

SVC = (("state_dir", "{dir}/state"), ("services", "smtp"), ("smtp_listen", "127.0.0.1:{port}"),
       ("myhostname", "mx.example.com"), ("mydomains", "example.com"),
       ("relay_networks", "192.0.2.1"), ("log_level", "info"))


class Daemon(hdaemon.Daemon):
    """One portcullisd with services = smtp in a directory of its own."""

    def __init__(self, milter=False, **overrides):
        self.milter_port = free_port() if milter else None
        keys = {}
        if milter:
            keys = {"services": "smtp milter",
                    "milter_listen": "inet:127.0.0.1:%d" % self.milter_port}
        keys.update(overrides)
        super().__init__("svc", SVC, **keys)
        self.log = self.log_path

    def start(self, preexec_fn=None):
        return super().start(ready=lambda: smtp_ready(self.port), timeout=15,
                             preexec_fn=preexec_fn)

    def stop(self):
        super().stop(10)

    def cleanup(self, case):
        self.stop()
        bad = self.sanitizer_lines()
        self.close()
        case.assertEqual(bad, [], "sanitizer report in the daemon log")


def smtp_ready(port):
    """Greeted, and gone again by the time this returns: the server closes
    after 221, so the probe no longer counts toward any limit."""
    try:
        s = socket.create_connection(("127.0.0.1", port), 1)
    except OSError:
        return False
    try:
        s.settimeout(5)
        if not s.recv(512).startswith(b"220"):
            return False
        s.sendall(b"QUIT\r\n")
        while s.recv(512):
            pass
        return True
    except OSError:
        return False
    finally:
        s.close()


def connect(port, source, timeout=10):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def first_line(s):
    buf = b""
    try:
        while not buf.endswith(b"\n"):
            d = s.recv(1024)
            if not d:
                break
            buf += d
    except OSError:
        pass
    return buf.decode("latin-1").strip()


class ServiceCase(unittest.TestCase):
    def daemon(self, **overrides):
        d = Daemon(**overrides)
        self.addCleanup(d.cleanup, self)
        return d


class T19Anvil(ServiceCase):
    def burst(self, port, source, n):
        socks = [connect(port, source) for _ in range(n)]
        lines = [first_line(s) for s in socks]
        return socks, lines

    def greeted(self, port, source):
        s = connect(port, source)
        ok = first_line(s).startswith("220 ")
        s.close()
        return ok

    def count(self, lines):
        ok = sum(1 for l in lines if l.startswith("220 "))
        refused = sum(1 for l in lines if l.startswith("421 4.7.0"))
        return ok, refused

    def test_sixty_from_one_address_limit_twenty(self):
        d = self.daemon(smtp_max_per_client=20, smtp_max_connections=1000).start()
        # (not 127.0.0.1: start() probed the port from there)
        socks, lines = self.burst(d.port, "127.0.1.1", 60)
        self.assertEqual(self.count(lines), (20, 40), lines)
        for s in socks:
            s.close()
        # closed ones are counted out again
        wait_until(lambda: self.greeted(d.port, "127.0.1.1"), 5,
                   what="a new connection after the others closed")

    def test_limit_holds_after_churn(self):
        d = self.daemon(smtp_max_per_client=20, smtp_max_connections=1000).start()
        # 127.0.1.1 shares its low 10 bits with 127.0.4k+1.1: the old table's
        # probe sequence; open and close them in waves, hold 40 open
        neighbours = ["127.0.%d.1" % (4 * k + 1) for k in range(1, 60)]
        for _ in range(3):
            wave = [connect(d.port, a) for a in neighbours]
            for s in wave:
                first_line(s)
            for s in wave[::2]:
                s.close()
            for s in wave[1::2]:
                s.close()
        for i in range(300):        # many others come and go
            s = connect(d.port, "127.%d.%d.%d" % (1 + i % 7, i % 251, 1 + i % 13))
            first_line(s)
            s.close()
        held = [connect(d.port, a) for a in neighbours[:40]]
        self.assertEqual(self.count([first_line(s) for s in held]), (40, 0))
        socks, lines = self.burst(d.port, "127.0.1.1", 60)
        self.assertEqual(self.count(lines), (20, 40), lines)
        for s in socks + held:
            s.close()


def low_fd_limit(n):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return set_limit


class T07Emfile(ServiceCase):
    def test_out_of_descriptors_pauses_then_serves(self):
        d = self.daemon(smtp_max_per_client=1000, smtp_max_connections=1000)
        d.start(preexec_fn=low_fd_limit(64))
        socks = []
        try:
            # far more clients than descriptors: the worker runs out
            for i in range(120):
                socks.append(connect(d.port, "127.0.7.%d" % (1 + i % 200), timeout=0.5))
            time.sleep(4)
            log = d.log_text().splitlines()
            noisy = [l for l in log if "accept" in l.lower()]
            self.assertGreaterEqual(len(noisy), 1, "no word about the failing accepts")
            self.assertLessEqual(len(noisy), 3, "accept failures flood the log:\n%s" %
                                 "\n".join(noisy[:5]))
            self.assertLess(len(log), 40, "\n".join(log[-10:]))
        finally:
            for s in socks:
                s.close()
        # the backlog drains; a new client is served
        def served():
            s = connect(d.port, "127.0.8.1", timeout=3)
            try:
                return first_line(s).startswith("220 ")
            finally:
                s.close()
        wait_until(served, 10, 0.2, what="a greeting after the descriptors came back")
        self.assertTrue(d.proc.poll() is None, "the daemon died")


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


class T18Orphans(ServiceCase):
    def test_master_killed_workers_follow(self):
        d = self.daemon(milter=True).start()
        wait_until(lambda: port_accepts("127.0.0.1", d.milter_port), 10, what="milter port")
        # a session in progress on each door must not hold a worker
        busy = connect(d.port, "127.0.9.1")
        self.assertTrue(first_line(busy).startswith("220 "))
        busy_milter = socket.create_connection(("127.0.0.1", d.milter_port), 5)
        workers = wait_until(lambda: len(children(d.proc.pid)) == 2 and children(d.proc.pid), 10,
                             what="two workers")
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait(5)
        t0 = time.monotonic()
        try:
            wait_until(lambda: not any(pid_alive(p) for p in workers), 1.5, 0.02,
                       what="the workers %s to exit after their master" % workers)
        finally:
            for p in workers:       # never leave one behind
                if pid_alive(p):
                    os.kill(p, signal.SIGKILL)
            busy.close()
            busy_milter.close()
        took = time.monotonic() - t0
        self.assertLess(took, 1.5)
        # a new start binds the same ports
        d.proc = None
        d.start()
        wait_until(lambda: port_accepts("127.0.0.1", d.milter_port), 10, what="milter port")
        s = connect(d.port, "127.0.9.2")
        self.assertTrue(first_line(s).startswith("220 "))
        s.close()
        self.assertNotIn("Address already in use", d.log_text())


def reply_within(s, seconds):
    """The reply lines that arrive within seconds (until one without '-')."""
    s.settimeout(seconds)
    buf = b""
    try:
        while True:
            d = s.recv(4096)
            if not d:
                break
            buf += d
            lines = buf.split(b"\r\n")
            if len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
                break
    except socket.timeout:
        pass
    return buf.decode("latin-1")


def command(s, line):
    s.sendall(line.encode() + b"\r\n")
    return reply_within(s, 5)


class T17Timeouts(ServiceCase):
    def test_command_trickler_cut_at_deadline(self):
        # one byte per (timeout - 0.5 s): each read came in time, the request did not
        d = self.daemon(smtp_timeout=2).start()
        s = connect(d.port, "127.0.10.1")
        self.assertTrue(first_line(s).startswith("220 "))
        t0 = time.monotonic()       # the request's clock starts with the greeting
        got = reply_within(s, 1.5)
        for b in b"NOOP\r\n":
            if got:
                break
            s.sendall(bytes([b]))
            got = reply_within(s, 1.5)
        took = time.monotonic() - t0
        s.close()
        self.assertTrue(got.startswith("421 4.4.2"), "got %r after %.1fs" % (got, took))
        self.assertLess(took, 2.9)

    def open_data(self, d, source):
        s = connect(d.port, source)
        self.assertTrue(first_line(s).startswith("220 "))
        self.assertTrue(command(s, "EHLO client.example.net").startswith("250"))
        self.assertTrue(command(s, "MAIL FROM:<a@outside.example.net>").startswith("250"))
        self.assertTrue(command(s, "RCPT TO:<u@example.com>").startswith("250"))
        self.assertTrue(command(s, "DATA").startswith("354"))
        return s

    def test_data_below_min_rate_cut(self):
        d = self.daemon(smtp_timeout=2, smtp_min_data_rate=500, users="").start()
        s = self.open_data(d, "127.0.10.2")
        t0 = time.monotonic()
        got = ""
        while time.monotonic() - t0 < 8 and not got:
            s.sendall(b"X-Slow: 1\r\n")       # 11 bytes every 0.3 s: ~37 B/s
            got = reply_within(s, 0.3)
        took = time.monotonic() - t0
        s.close()
        self.assertTrue(got.startswith("421 4.4.2"), "got %r after %.1fs" % (got, took))
        self.assertLess(took, 4)
        self.assertIn("timeout after 2 s in DATA", d.log_text())

    def test_data_at_min_rate_passes(self):
        # 4 s of message at ~8 kB/s, twice the timeout: the data earns its time
        d = self.daemon(smtp_timeout=2, smtp_min_data_rate=500, users="").start()
        s = self.open_data(d, "127.0.10.3")
        s.sendall(b"Subject: steady\r\n\r\n")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4:
            s.sendall(b"y" * 1998 + b"\r\n")
            self.assertEqual(reply_within(s, 0.25), "")
        self.assertTrue(command(s, ".").startswith("250 "))
        s.close()

    def test_stress_cuts_idle_connections(self):
        d = self.daemon(smtp_max_connections=10, smtp_timeout=60, smtp_stress_timeout=1,
                        smtp_max_per_client=100).start()
        socks = [connect(d.port, "127.0.10.%d" % (10 + i)) for i in range(9)]
        for s in socks:
            self.assertTrue(first_line(s).startswith("220 "))
        t0 = time.monotonic()
        got = reply_within(socks[0], 5)
        took = time.monotonic() - t0
        self.assertTrue(got.startswith("421 4.4.2"), "got %r after %.1fs" % (got, took))
        self.assertLess(took, 3)
        for s in socks:
            s.close()
        wait_until(lambda: "stress over" in d.log_text(), 5, what="the end of stress in the log")
        self.assertIn("stress: 9 of 10 connections in use", d.log_text())
        # no stress, the normal timeout again
        s = connect(d.port, "127.0.10.30")
        self.assertTrue(first_line(s).startswith("220 "))
        self.assertEqual(reply_within(s, 2), "")
        s.close()


    def test_idle_connections_lock_nobody_out(self):
        # the report's 200 idle connections from 10 addresses, scaled down
        d = self.daemon(smtp_max_connections=10, smtp_max_per_client=2, smtp_timeout=60,
                        smtp_stress_timeout=1).start()
        idle = [connect(d.port, "127.0.11.%d" % (1 + i // 2)) for i in range(10)]
        for s in idle:
            self.assertTrue(first_line(s).startswith("220 "))

        def newcomer_served():
            s = connect(d.port, "127.0.11.99")
            try:
                return first_line(s).startswith("220 ")
            finally:
                s.close()
        t0 = time.monotonic()
        wait_until(newcomer_served, 4, 0.2, what="a newcomer greeted")
        self.assertLess(time.monotonic() - t0, 4)
        for s in idle:
            s.close()


if __name__ == "__main__":
    sys.exit(runner.main())
