#!/usr/bin/python3
"""Counters as an admin reads them: verdicts by door, stage, action and
reason tag, served on metrics_listen in Prometheus' text format (scraped
with curl and read with prometheus_client's own parser) and printed by
`portcullis stats`; the endpoint answers nothing but GET /metrics.

Run: python3 tests/integration/test_stats.py   (PORTCULLIS_BIN as for the others)
Last line: "N passed, N failed".
"""
import os
import smtplib
import socket
import subprocess
import sys
import time
import unittest

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:     # a python3 other than Debian's: use Debian's package (deps.sh)
    sys.path.append("/usr/lib/python3/dist-packages")
    from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import runner  # noqa: E402
from harness.daemon import BIN, SANITIZER_RE, Daemon  # noqa: E402
from harness.ports import free_port  # noqa: E402


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


class Stats(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.milter = free_port()
        cls.metrics = free_port()
        cls.d = Daemon("stats", (
            ("state_dir", "{dir}/state"), ("services", "milter smtp"),
            ("milter_listen", "inet:127.0.0.1:%d" % cls.milter),
            ("smtp_listen", "127.0.0.1:{port}"),
            ("metrics_listen", "127.0.0.1:%d" % cls.metrics),
            ("mydomains", "example.com"), ("myhostname", "mx.example.com"),
            ("relay_networks", "192.0.2.0/24")))
        cls.dir, cls.conf, cls.smtp = cls.d.dir, cls.d.conf, cls.d.port
        cls.d.start(timeout=15)

    @classmethod
    def tearDownClass(cls):
        cls.d.stop(20)
        text = cls.d.log_text()
        cls.d.close()
        if SANITIZER_RE.search(text):
            raise AssertionError("sanitizer report:\n" + text[-3000:])

    def curl(self, *args):
        return subprocess.run(["curl", "-sS", "--max-time", "10", *args],
                              capture_output=True, text=True, timeout=20)

    def scrape(self):
        r = self.curl("-f", "http://127.0.0.1:%d/metrics" % self.metrics)
        self.assertEqual(r.returncode, 0, r.stderr)
        samples = {}
        for fam in text_string_to_metric_families(r.stdout):
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                samples[key] = s.value
        return r.stdout, samples

    def relay_attempt(self, rcpt):
        s = smtplib.SMTP("127.0.0.1", self.smtp, local_hostname="client.test", timeout=10)
        s.ehlo()
        s.mail("a@outside.test")
        code, _ = s.rcpt(rcpt)
        s.quit()
        return code

    def test_1_relay_refusals_are_counted_by_door_stage_and_reason(self):
        key = ("portcullis_verdicts_total", (("action", "reject"), ("door", "smtp"),
                                             ("reason", "relay"), ("stage", "RCPT")))
        _, before = self.scrape()
        for i in range(3):
            self.assertEqual(self.relay_attempt("v%d@elsewhere.test" % i) // 100, 5)
        _, after = self.scrape()
        self.assertEqual(after.get(key, 0) - before.get(key, 0), 3, after)
        self.assertIn(("portcullis_start_time_seconds", ()), after)

    def test_2_portcullis_stats_prints_the_same_counters(self):
        self.relay_attempt("w@elsewhere.test")
        _, samples = self.scrape()
        r = subprocess.run([os.path.join(BIN, "portcullis"), "-c", self.conf, "stats"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        line = [l for l in r.stdout.splitlines()
                if l.startswith('verdicts_total{door="smtp",stage="RCPT",action="reject",reason="relay"}')]
        self.assertEqual(len(line), 1, r.stdout)
        key = ("portcullis_verdicts_total", (("action", "reject"), ("door", "smtp"),
                                             ("reason", "relay"), ("stage", "RCPT")))
        self.assertEqual(int(line[0].split()[-1]), int(samples[key]))
        r = subprocess.run([os.path.join(BIN, "portcullis"), "-c", self.conf, "stats", "--prometheus"],
                           capture_output=True, text=True, timeout=30)
        self.assertIn("# TYPE portcullis_verdicts_total counter", r.stdout)

    def test_2c_the_smtp_doors_own_refusals_are_counted_verdicts(self):
        """issue 9: unknown user, bare newline, pipelining... are verdicts
        with a reason tag, counted like the engine's own."""
        r = subprocess.run([os.path.join(BIN, "portcullis"), "-c", self.conf, "user", "add",
                            "carol@example.com", "--password-stdin"], input="pw-of-carol\n",
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)

        def rcpt(addr):
            s = smtplib.SMTP("127.0.0.1", self.smtp, local_hostname="client.test", timeout=10)
            s.ehlo()
            s.mail("a@outside.test")
            code = s.rcpt(addr)[0]
            s.quit()
            return code
        wait_for(lambda: rcpt("carol@example.com") == 250, 5, "carol to exist")

        def raw(data):
            c = socket.create_connection(("127.0.0.1", self.smtp), 10)
            f = c.makefile("rb")
            f.readline()                        # 220
            c.sendall(data)
            reply = f.readline()
            c.close()
            return reply
        def key(stage, action, reason):
            return ("portcullis_verdicts_total", (("action", action), ("door", "smtp"),
                                                 ("reason", reason), ("stage", stage)))
        _, before = self.scrape()
        self.assertEqual(rcpt("nobody@example.com"), 550)
        self.assertTrue(raw(b"NOOP\n").startswith(b"500 5.5.2"))
        self.assertTrue(raw(b"HELO client.test\r\nNOOP\r\n").startswith(b"554 5.5.0"))
        _, after = self.scrape()
        for k in (key("RCPT", "reject", "unknown-user"), key("COMMAND", "reject", "bare-newline"),
                  key("HELO", "reject", "pipelining")):
            self.assertEqual(after.get(k, 0) - before.get(k, 0), 1, (k, after))

    def test_2b_connections_messages_and_bytes_of_the_smtp_door(self):
        r = subprocess.run([os.path.join(BIN, "portcullis"), "-c", self.conf, "user", "add",
                            "bob@example.com", "--password-stdin"], input="pw-of-bob\n",
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        body = "From: a@outside.test\r\nSubject: count me\r\n\r\n" + "x" * 1000 + "\r\n"

        def rcpt_ok():      # the worker picks the users file up within a second
            s = smtplib.SMTP("127.0.0.1", self.smtp, local_hostname="client.test", timeout=10)
            s.ehlo()
            s.mail("a@outside.test")
            ok = s.rcpt("bob@example.com")[0] == 250
            s.quit()
            return ok
        wait_for(rcpt_ok, 5, "bob to exist")
        _, before = self.scrape()
        s = smtplib.SMTP("127.0.0.1", self.smtp, local_hostname="client.test", timeout=10)
        s.sendmail("a@outside.test", ["bob@example.com"], body)
        s.quit()
        _, after = self.scrape()

        def delta(name, **labels):
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0) - before.get(key, 0)
        self.assertEqual(delta("portcullis_connections_total", door="smtp"), 1, after)
        self.assertEqual(delta("portcullis_messages_total", door="smtp", route="store"), 1, after)
        self.assertGreaterEqual(delta("portcullis_message_bytes_total", door="smtp", route="store"),
                                len(body))

    def test_3_only_get_metrics_is_served(self):
        r = self.curl("-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:%d/" % self.metrics)
        self.assertEqual(r.stdout, "404")
        r = self.curl("-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", "x",
                      "http://127.0.0.1:%d/metrics" % self.metrics)
        self.assertEqual(r.stdout, "405")
        # garbage on the socket gets an error or a close, and the endpoint keeps serving
        with socket.create_connection(("127.0.0.1", self.metrics), 5) as s:
            s.sendall(b"\x00\xff garbage\r\n\r\n")
            s.settimeout(5)
            try:
                s.recv(4096)
            except OSError:
                pass
        self.scrape()

    def test_4_stats_without_a_running_daemon_says_so(self):
        other = os.path.join(self.dir, "other.conf")
        with open(other, "w") as f:
            f.write("state_dir = %s/nothing\n" % self.dir)
        r = subprocess.run([os.path.join(BIN, "portcullis"), "-c", other, "stats"],
                           capture_output=True, text=True, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("stats", r.stderr)


if __name__ == "__main__":
    sys.exit(runner.main())
