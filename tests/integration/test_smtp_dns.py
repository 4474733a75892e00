#!/usr/bin/python3
"""Client host names on the SMTP gateway: forward-confirmed reverse DNS
against a dnsmasq the test starts on loopback (no query leaves the machine).

- 127.0.0.12 has PTR mx.good.test and mx.good.test has A 127.0.0.12: the name
  is verified; good.test is in mydomains and relay_client_domains = yes, so
  it may relay (451 4.3.5: no relayhost here, past the relay check).
- 127.0.0.13 has a PTR (liar.test) with no matching A record: no name, so a
  kill entry host:liar.test does not apply and relaying is refused 550 5.7.1.
- 127.0.0.15 is bad.evil.test, verified: host:.evil.test refuses it at
  connect with 554 5.7.1 naming the host.
Last line: "N passed, N failed".
"""
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import runner  # noqa: E402
from harness.daemon import SANITIZER_RE, SMTP_GATEWAY, Daemon  # noqa: E402
from harness.ports import free_port  # noqa: E402

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def dns_answers(port, timeout=15, dns=None):
    """True once a DNS server on 127.0.0.1:port answers an A query (False
    at once when the process dns has exited)."""
    q = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
         b"\x02mx\x04good\x04test\x00\x00\x01\x00\x01")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if dns is not None and dns.poll() is not None:
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            try:
                s.sendto(q, ("127.0.0.1", port))
                if s.recv(512)[:2] == b"\x12\x34":
                    return True
            except OSError:
                time.sleep(0.05)
    return False


class Dns(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dns = None
        # dnsmasq must answer before the daemon asks: evdns takes a server
        # that refused its first query (port not bound yet, a loaded
        # machine) for down and stops asking it for seconds. A port taken
        # by someone else between free_port() and dnsmasq's bind: another one.
        for attempt in range(3):
            cls.dns_port = free_port(kind=socket.SOCK_DGRAM)
            dlog = tempfile.NamedTemporaryFile("w+", prefix="dnsmasq-", suffix=".log")
            cls.dns = subprocess.Popen(
                [DNSMASQ, "--keep-in-foreground", "--port=%d" % cls.dns_port,
                 "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                 "--no-poll", "--pid-file=", "--user=root",
                 "--host-record=mx.good.test,127.0.0.12",
                 "--host-record=bad.evil.test,127.0.0.15",
                 "--ptr-record=13.0.0.127.in-addr.arpa,liar.test"],
                stdout=subprocess.DEVNULL, stderr=dlog)
            if dns_answers(cls.dns_port, dns=cls.dns):
                break
            cls.dns.kill()
            cls.dns.wait(5)
            dlog.seek(0)
            why = dlog.read()[-600:]
            print("dnsmasq on port %d did not answer (exit %s): %s" %
                  (cls.dns_port, cls.dns.returncode, why), file=sys.stderr)
        else:
            raise AssertionError("dnsmasq does not answer (3 ports tried)")
        cls.d = Daemon("dns", SMTP_GATEWAY, mydomains="example.com good.test",
                       relay_networks="192.0.2.1", relay_client_domains="yes",
                       client_hostname_lookups="yes", resolver="127.0.0.1:%d" % cls.dns_port)
        cls.dir, cls.conf, cls.port = cls.d.dir, cls.d.conf, cls.d.port
        for e in ("host:liar.test", "host:.evil.test"):
            cls.d.cli("kill", "add", e)
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop(10)[0]
        cls.dns.terminate()
        cls.dns.wait(5)
        bad = [l for l in cls.d.log_text().splitlines() if SANITIZER_RE.search(l)]
        cls.d.close()
        assert rc == 0 and not bad, "daemon exit %s; %s" % (rc, bad[:5])

    def relay_from(self, ip):
        s = smtplib.SMTP("127.0.0.1", self.port, local_hostname="c.test",
                         source_address=(ip, 0), timeout=15)
        s.ehlo("c.test")
        s.mail("a@b.example")
        r = s.rcpt("x@other.org")
        s.quit()
        return r

    def test_verified_name_in_mydomains_may_relay(self):
        code, text = self.relay_from("127.0.0.12")
        self.assertEqual(code, 451, text)	# past the relay check: no relayhost here
        self.assertIn(b"4.3.5", text)

    def test_ptr_without_forward_record_is_no_name(self):
        code, text = self.relay_from("127.0.0.13")	# host:liar.test must not apply
        self.assertEqual((code, text[:5]), (550, b"5.7.1"), text)
        self.assertIn(b"Relay access denied", text)

    def test_verified_name_on_the_kill_list_refused_at_connect(self):
        with self.assertRaises(smtplib.SMTPConnectError) as cm:
            smtplib.SMTP("127.0.0.1", self.port, local_hostname="c.test",
                         source_address=("127.0.0.15", 0), timeout=15)
        self.assertEqual(cm.exception.smtp_code, 554)
        self.assertIn(b"bad.evil.test", cm.exception.smtp_error)

    def test_no_name_no_list_plain_client(self):
        code, text = self.relay_from("127.0.0.14")
        self.assertEqual(code, 550, text)


if __name__ == "__main__":
    sys.exit(runner.main(tools=(DNSMASQ,)))
