#!/usr/bin/python3
"""The admin's view of portcullisd and portcullis without an MTA: config
errors name FILE:LINE, -n prints what differs from the defaults, bad list
entries are refused with nothing written, hand-edited list files with bad
lines are reported line by line while the good lines are enforced, and the
daemon survives garbage in its list files.

Run: python3 tests/integration/test_cli.py   (PORTCULLIS_BIN as for the others)
Last line: "N passed, N failed".
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import runner  # noqa: E402
from harness.daemon import (BIN, REPO, SANITIZER_RE, SMTP_GATEWAY, Daemon,  # noqa: E402
                            env_for_binaries, exe, run_bin)
from harness.util import HarnessError  # noqa: E402


def run(*args, inp=None):
    return subprocess.run(list(args), capture_output=True, text=True, input=inp, timeout=30)


class Base(unittest.TestCase):
    def setUp(self):
        self.dm = Daemon("cli")       # the directory, port and log; the config is written here
        self.dir, self.port, self.conf = self.dm.dir, self.dm.port, self.dm.conf
        self.write_conf("")
        self.daemon = None

    def tearDown(self):
        if self.daemon is not None:
            self.stop_daemon()
        self.dm.close()

    def write_conf(self, extra):
        with open(self.conf, "w") as f:
            f.write("state_dir = %s/state\n"
                    "milter_listen = inet:127.0.0.1:%d\n"
                    "mydomains = example.com\n%s" % (self.dir, self.port, extra))

    def pd(self, *args):
        return run(os.path.join(BIN, "portcullisd"), "-c", self.conf, *args)

    def pc(self, *args):
        return run(os.path.join(BIN, "portcullis"), "-c", self.conf, *args)

    @property
    def killfile(self):
        return os.path.join(self.dir, "state", "lists", "kill.list")

    def start_daemon(self):
        try:
            self.daemon = self.dm.start().proc
        except HarnessError as e:
            self.fail("daemon did not listen:\n%s" % e)

    def stop_daemon(self):
        rc = self.dm.stop(8)[0]
        self.daemon = None
        text = self.logtext()
        self.assertFalse(SANITIZER_RE.search(text), "sanitizer report:\n" + text)
        self.assertEqual(rc, 0, "daemon exit status on SIGTERM\n" + text)

    def logtext(self):
        return self.dm.log_text()

    def wait_log(self, pattern, within=3.0):
        deadline = time.time() + within
        while time.time() < deadline:
            if re.search(pattern, self.logtext()):
                return True
            time.sleep(0.05)
        return False


class ConfigErrors(Base):
    def test_print_nondefault(self):
        self.write_conf("max_recipients = 7\nrelay_networks = 10.0.0.0/8,\n  192.0.2.0/24\n")
        r = self.pd("-n", "-o", "policy_mode=warn")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertIn("max_recipients = 7", lines)
        self.assertIn("relay_networks = 10.0.0.0/8, 192.0.2.0/24", lines)
        self.assertIn("policy_mode = warn", lines)
        self.assertFalse(any(l.startswith("null_sender") for l in lines), "defaults are not printed")

    def test_errors_name_file_and_line(self):
        cases = [
            ("\nmax_recipent = 5\n", r"portcullis\.conf:5: unknown parameter \"max_recipent\""),
            ("relay_authenticated = perhaps\n", r"portcullis\.conf:4: relay_authenticated: \"perhaps\" is not yes or no"),
            ("relay_networks = 10.0.0.1/8\n", r"portcullis\.conf:4: relay_networks: \"10\.0\.0\.1/8\": host bits set"),
            ("lists = $nope\n", r"portcullis\.conf:4: lists: \$nope is not a known parameter"),
            ("milter_listen = tcp:1\n", r"milter_listen: expected inet:HOST:PORT"),
            ("lists = ftp://x\n", r"unknown store"),
        ]
        for extra, want in cases:
            with self.subTest(extra=extra):
                self.write_conf(extra)
                r = self.pd("-f")
                self.assertEqual(r.returncode, 1, "exit status for %r: %s" % (extra, r.stderr))
                self.assertRegex(r.stderr, want)

    # (extra config lines, line at fault, what the error says): every value is
    # checked when the file is read, so -t, -n and a start refuse the same
    BAD_VALUES = [
        ("resolver = not-an-ip\n", 4, r'resolver: "not-an-ip": expected system, ADDRESS'),
        ("resolver = 192.0.2.1:0\n", 4, r'resolver: "192\.0\.2\.1:0"'),
        ("client_hostname_lookups = yes\nservices = smtp\nsmtp_listen = 127.0.0.1:{port}\n"
         "resolver = dns.example\n", 7, r'resolver: "dns\.example"'),
        ("relayhost = mx.example.com:25\n", 4, r'relayhost: "mx\.example\.com:25": not an IP address'),
        ("delivery = maildir:relative/dir\n", 4, r'delivery: "maildir:relative/dir": expected maildir:/absolute/dir'),
        ("delivery = relay:mx.example:25\n", 4, r'delivery: "relay:mx\.example:25": not an IP address'),
        ("services = smtp\nsmtp_listen = 127.0.0.1:99999\n", 5, r'smtp_listen: "127\.0\.0\.1:99999": the port'),
        ("submission_listen = localhost:587\n", 4, r'submission_listen: "localhost:587": not an IP address'),
        ("smtps_listen = [127.0.0.1]:465\n", 4, r'smtps_listen: "\[127\.0\.0\.1\]:465": write an IPv4 address without'),
        ("services = smtp\nsmtp_listen = %s\nsubmission_listen = %s\n" % (
            " ".join("127.0.0.1:%d" % p for p in range(20001, 20010)),
            " ".join("127.0.0.1:%d" % p for p in range(20011, 20020))),
         6, r"submission_listen: too many listeners \(at most 16"),
        ("smtp_bare_newline_exceptions = 10.1.2.3/8\n", 4,
         r'smtp_bare_newline_exceptions: "10\.1\.2\.3/8": host bits set'),
        ("relay_networks = 127.0.0.0/8, banana\n", 4, r'relay_networks: "banana": not an IPv4 or IPv6'),
        ("services = milter, gopher\n", 4, r'services: "gopher": unknown service'),
        ("services =\n", 4, r"services: \"\": nothing to run"),
        ("lists = ftp://x\n", 4, r'lists: "ftp://x": unknown store'),
        ("lists = file:relative\n", 4, r'lists: "file:relative": expected file:/absolute/dir'),
        ("lists = redis://\n", 4, r"lists = redis://: cannot parse"),
        ("lists_prefix = a b\n", 4, r"lists_prefix: \"a b\": no spaces"),
        ("lists_password_file = /nonexistent/pw\n", 4, r'lists_password_file: "/nonexistent/pw": no such file'),
        ("tls_cert_file = /nonexistent/cert.pem\n", 4, r'tls_cert_file: "/nonexistent/cert\.pem": no such file'),
        ("services = smtp\nsmtp_listen = 127.0.0.1:{port}\ntls_cert_file = {conf}\n"
         "tls_key_file = {conf}\n", 6, r"tls_cert_file = .*: not a PEM certificate"),
        ("state_dir = {conf}\n", 4, r'state_dir: ".*portcullis\.conf" exists and is not a directory'),
        ("lists = file:{conf}/lists\n", 4, r'lists: ".*" a component of the path is not a directory'),
        ("services = smtp\nsmtp_listen = 127.0.0.1:{port}\ndelivery = maildir:{conf}\n", 6,
         r'delivery: ".*" exists and is not a directory'),
        ("metrics_listen = localhost:9187\n", 4, r'metrics_listen: "localhost:9187": not an IP'),
        ("log_file = portcullis.log\n", 4, r'log_file: "portcullis\.log": expected an absolute path'),
        ("log_file = /nonexistent/dir/p.log\n", 4, r'log_file: "/nonexistent/dir/p\.log": its directory'),
        ("services = policy\npolicy_listen = tcp:127.0.0.1:10040\n", 5,
         r'policy_listen: "tcp:127\.0\.0\.1:10040": expected inet:HOST:PORT'),
        ("services = policy\npolicy_listen = inet:localhost:10040\n", 5,
         r'policy_listen: "inet:localhost:10040": not an IP'),
        ("services = policy\npolicy_listen = %s\n" % " ".join(
            "inet:127.0.0.1:%d" % p for p in range(21001, 21018)), 5,
         r"policy_listen: .*too many listeners \(at most 16"),
        ("users = /etc/passwd\n", 4, r'users: "/etc/passwd": expected file:'),
        ("myhostname = bad host\n", 4, r'myhostname: "bad host": not a host name'),
        ("smtp_banner = a\x01b\n", 4, r'smtp_banner: "a\\x01b": control characters'),
        ("state_dir = relative\n", 4, r'state_dir: "relative": expected an absolute path'),
        ("smtp_banner = " + "b" * 401 + "\n", 4, r"smtp_banner: .* longer than 400 characters"),
        ("milter_listen = unix:/" + "s" * 120 + "\n", 4, r"milter_listen: .*: a unix socket path is at most 107"),
        ("milter_listen = tcp:1\n", 4, r"milter_listen: expected inet:HOST:PORT"),
        ("run_user = no-such-user-here\n", 4, r'run_user: no user "no-such-user-here"'),
        ("max_recipients = 10x\n", 4, r'max_recipients: "10x" is not a number'),
        ("smtp_timeout = 0\n", 4, r"smtp_timeout: 0 seconds is out of range"),
        ("null_sender = sometimes\n", 4, r"null_sender: \"sometimes\" is not one of"),
        ("relay_rate_limit = 5\n", 4, r'relay_rate_limit: "5" is not COUNT/TIME'),
        ("auth_mechanisms = PLAIN GSSAPI\n", 4, r'auth_mechanisms: "GSSAPI" is not'),
    ]

    def test_check_and_start_refuse_the_same_values(self):
        for extra, line, want in self.BAD_VALUES:
            with self.subTest(extra=extra):
                self.write_conf(extra.format(port=self.port, conf=self.conf))
                at = r"^portcullisd: %s:%d: " % (re.escape(self.conf), line)
                t = self.pd("-t")
                self.assertEqual(t.returncode, 1, "-t exit status: %s" % t.stderr)
                self.assertRegex(t.stderr, at + want)
                self.assertEqual(t.stdout, "")
                self.assertFalse(SANITIZER_RE.search(t.stderr), t.stderr)
                n = self.pd("-n")
                self.assertEqual((n.returncode, n.stderr), (1, t.stderr), "-n and -t differ")
                f = self.pd("-f")
                self.assertEqual(f.returncode, 1, "start exit status: %s" % f.stderr)
                self.assertEqual(f.stderr.splitlines()[0], t.stderr.splitlines()[0],
                                 "start and -t differ")
                self.assertNotIn("started", f.stderr)

    def test_resolver_not_an_ip_never_starts(self):
        # the finding: "started", then the smtp worker restarted every second
        self.write_conf("services = smtp\nsmtp_listen = 127.0.0.1:%d\n"
                        "client_hostname_lookups = yes\nresolver = not-an-ip\n" % self.port)
        try:
            p = run_bin("portcullisd", "-c", self.conf, "-f", timeout=10)
        except subprocess.TimeoutExpired as e:      # run_bin killed it
            self.fail("the daemon ran with resolver = not-an-ip:\n%s" % e.stderr)
        out = p.stdout + p.stderr
        self.assertEqual(p.returncode, 1, out)
        self.assertRegex(out, r"portcullis\.conf:7: resolver: \"not-an-ip\"")
        self.assertNotIn("started", out)

    def test_check_passes_a_good_config(self):
        self.write_conf("services = milter smtp\nsmtp_listen = 127.0.0.1:%d [::1]:%d\n"
                        "resolver = 127.0.0.1:5353\nrelayhost = [192.0.2.7]:25\n"
                        "relay_networks = 10.0.0.0/8 2001:db8::/32\n" % (self.port + 1, self.port + 1))
        r = self.pd("-t")
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "", ""))
        # nothing was bound or created by a check
        self.assertFalse(os.path.exists(os.path.join(self.dir, "state")))
        # nor by a check of the policy door, whose port is then still free
        self.write_conf("services = milter policy\npolicy_listen = inet:127.0.0.1:%d\n"
                        % (self.port + 2))
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port + 2))
        s.listen(1)
        try:
            r = self.pd("-t")
        finally:
            s.close()
        self.assertEqual((r.returncode, r.stderr), (0, ""))

    def test_missing_config_file(self):
        r = run(os.path.join(BIN, "portcullisd"), "-c", "/nonexistent/p.conf", "-f")
        self.assertEqual(r.returncode, 1)
        self.assertIn("/nonexistent/p.conf: cannot open", r.stderr)

    def test_busy_port(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(1)
        try:
            r = self.pd("-f")
        finally:
            s.close()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("milter_listen = inet:127.0.0.1:%d: cannot listen" % self.port, r.stderr)


class ListCommands(Base):
    def test_bad_entries_refused_nothing_written(self):
        self.assertEqual(self.pc("kill", "add", "192.0.2.1").returncode, 0)
        with open(self.killfile) as f:
            before = f.read()
        for bad in (["192.0.2.1/24"], ["999.1.1.1"], ["host:"], ["user@"], ["<a@b.c>"],
                    ["192.0.2.9", "--ttl", "soon"], ["192.0.2.9", "--ttl", "0"],
                    ["192.0.2.9", "--reason", "two\nlines"], ["192.0.2.9", "--colour", "red"]):
            with self.subTest(bad=bad):
                r = self.pc("kill", "add", *bad)
                self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
                self.assertTrue(r.stderr.startswith("portcullis: "), r.stderr)
                with open(self.killfile) as f:
                    self.assertEqual(f.read(), before, "the list file changed")
        r = self.pc("kill", "add", "192.0.2.1/24")
        self.assertIn("host bits set", r.stderr)

    def test_add_list_del(self):
        self.assertEqual(self.pc("accept", "add", "2001:DB8::/32", "--reason", "partner").returncode, 0)
        self.assertEqual(self.pc("kill", "add", "@Spam.Example", "--ttl", "2h").returncode, 0)
        out = self.pc("accept", "list").stdout
        self.assertRegex(out, r"^2001:db8::/32\s+origin=admin .*expires=never reason=partner$")
        self.assertRegex(self.pc("kill", "list").stdout, r"^@spam\.example\s+origin=admin .*expires=20\d\d-")
        self.assertEqual(self.pc("kill", "del", "@spam.example").returncode, 0)
        r = self.pc("kill", "del", "@spam.example")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no entry @spam.example", r.stderr)
        self.assertEqual(self.pc("kill", "list").stdout, "")

    def test_explain_exit_status(self):
        ok = self.pc("explain", "--client", "198.51.100.7", "--from", "a@b.example",
                     "--rcpt", "u@example.com")
        self.assertEqual(ok.returncode, 0, ok.stdout)
        self.assertIn("result: accepted", ok.stdout)
        bad = self.pc("explain", "--client", "198.51.100.7", "--from", "a@b.example",
                      "--rcpt", "u@other.org")
        self.assertEqual(bad.returncode, 1)
        self.assertRegex(bad.stdout, r"RCPT .*550 5\.7\.1 <u@other\.org>: Relay access denied \[relay\]")
        self.assertEqual(self.pc("explain", "--client", "nonsense", "--from", "a@b",
                                 "--rcpt", "u@example.com").returncode, 2)


class Footguns(Base):
    def test_wide_accept_entry_needs_force(self):
        acceptfile = os.path.join(self.dir, "state", "lists", "accept.list")
        self.assertEqual(self.pc("accept", "add", "192.0.2.1").returncode, 0)
        with open(acceptfile) as f:
            before = f.read()
        for wide in ("0.0.0.0/0", "10.0.0.0/7", "::/0", "2000::/15", "::ffff:0.0.0.0/96"):
            with self.subTest(entry=wide):
                r = self.pc("accept", "add", wide)
                self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
                self.assertRegex(r.stderr, r"^portcullis: accept .* add --force if that is "
                                 r"what you want; nothing written")
                with open(acceptfile) as f:
                    self.assertEqual(f.read(), before, "the list file changed")
        for ok in ("10.0.0.0/8", "2001::/16", "198.51.100.0/24"):
            with self.subTest(entry=ok):
                self.assertEqual(self.pc("accept", "add", ok).returncode, 0)
        # the kill list may block a whole range; --force passes the check
        self.assertEqual(self.pc("kill", "add", "0.0.0.0/1").returncode, 0)
        r = self.pc("accept", "add", "::/0", "--force", "--reason", "lab only")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(self.pc("accept", "list").stdout, r"(?m)^::/0\s")

    def test_host_bits_say_what_was_meant(self):
        for entry, meant in (("192.0.2.1/24", "192.0.2.0/24"), ("2001:db8::1/32", "2001:db8::/32"),
                             ("10.1.2.3/8", "10.0.0.0/8")):
            with self.subTest(entry=entry):
                r = self.pc("kill", "add", entry)
                self.assertEqual(r.returncode, 2)
                self.assertIn("host bits set after the prefix length (did you mean %s?)" % meant,
                              r.stderr)
        self.write_conf("relay_networks = 127.0.0.1/8\n")
        r = self.pd("-t")
        self.assertEqual(r.returncode, 1)
        self.assertIn('relay_networks: "127.0.0.1/8": host bits set after the prefix length '
                      '(did you mean 127.0.0.0/8?)', r.stderr)


class HelpAndUsage(Base):
    def version_h(self):
        with open(os.path.join(REPO, "common", "version.h")) as f:
            return re.search(r'PORTCULLIS_VERSION "([^"]+)"', f.read()).group(1)

    def test_help_and_version(self):
        v = self.version_h()
        for prog in ("portcullisd", "portcullis"):
            with self.subTest(prog=prog):
                r = run(os.path.join(BIN, prog), "--version")
                self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "%s %s\n" % (prog, v), ""))
                r = run(os.path.join(BIN, prog), "--help")
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertTrue(r.stdout.startswith("usage: %s " % prog), r.stdout)
                self.assertEqual(r.stderr, "")
        r = run(os.path.join(BIN, "portcullisd"), "--help")
        self.assertIn("-t ", r.stdout)

    def test_command_help_needs_no_config(self):
        for cmd in (["kill", "--help"], ["accept", "add", "--help"], ["user", "-h"]):
            with self.subTest(cmd=cmd):
                r = run(os.path.join(BIN, "portcullis"), "-c", "/nonexistent/p.conf", *cmd)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn("usage: portcullis", r.stdout)
                self.assertNotIn("cannot open", r.stderr)
        r = run(os.path.join(BIN, "portcullis"), "-c", "/nonexistent/p.conf", "kill", "--help")
        self.assertIn("kill|accept add ENTRY", r.stdout)
        self.assertNotIn("user add", r.stdout)

    def test_usage_errors_say_what_is_wrong_first(self):
        cases = [
            (["portcullis", "-x"], r"^portcullis: unknown option -x\nusage: "),
            (["portcullis", "-c"], r"^portcullis: option -c needs an argument\nusage: "),
            (["portcullis", "-c", self.conf], r"^portcullis: which command\?\nusage: "),
            (["portcullis", "-c", self.conf, "frobnicate"],
             r'^portcullis: unknown command "frobnicate"\nusage: '),
            (["portcullis", "-c", self.conf, "kill"], r"^portcullis: kill what\? \(add, del"),
            (["portcullis", "-c", self.conf, "kill", "frob"],
             r'^portcullis: kill: unknown action "frob" \(expected add, del'),
            (["portcullis", "-c", self.conf, "kill", "add"], r"^portcullis: kill add: which ENTRY\?"),
            (["portcullis", "-c", self.conf, "accept", "del"],
             r'^portcullis: wrong or missing arguments for "accept del"\nusage: '),
            (["portcullisd", "-x"], r"^portcullisd: unknown option -x\nusage: "),
            (["portcullisd", "--frob"], r"^portcullisd: unknown option --frob\nusage: "),
            (["portcullisd", "-c"], r"^portcullisd: option -c needs an argument\nusage: "),
            (["portcullisd", "-c", self.conf, "stray"], r'^portcullisd: unexpected argument "stray"'),
            (["portcullisd", "-c", self.conf, "-n", "-t"], r"^portcullisd: -n and -t exclude"),
        ]
        for argv, want in cases:
            with self.subTest(argv=argv):
                r = run(os.path.join(BIN, argv[0]), *argv[1:])
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertRegex(r.stderr, want)
                self.assertFalse(SANITIZER_RE.search(r.stderr), r.stderr)

    def test_license(self):
        with open(os.path.join(REPO, "LICENSE")) as f:
            text = f.read()
        self.assertTrue(text.startswith("MIT License"))
        self.assertIn("Copyright (c) 2026 The Portcullis authors", text)
        with open(os.path.join(REPO, "README.md")) as f:
            self.assertIn("Copyright (c) 2026 The Portcullis authors", f.read().splitlines()[-1])


class DaemonLists(Base):
    def test_hand_edited_bad_lines_reported_good_enforced(self):
        self.start_daemon()
        self.assertTrue(self.wait_log(r"lists loaded: 0 kill"), self.logtext())
        os.makedirs(os.path.dirname(self.killfile), exist_ok=True)
        tmp = self.killfile + ".new"
        with open(tmp, "w") as f:
            f.write("# by hand\n192.0.2.1\nthis is no entry\n198.51.100.0/24 expires=soon\n@x.example\n")
        os.rename(tmp, self.killfile)
        self.assertTrue(self.wait_log(r"kill\.list:3: not an IP address.*line skipped"), self.logtext())
        self.assertTrue(self.wait_log(r"kill\.list:4: expires= is not a unix time"), self.logtext())
        self.assertTrue(self.wait_log(r"lists reloaded: 2 kill"), self.logtext())

    def test_nul_line_rejected_and_rewrites_keep_bad_lines_verbatim(self):
        os.makedirs(os.path.dirname(self.killfile), exist_ok=True)
        long_line = b"198.51.100.9 reason=" + b"r" * 3000
        nul_line = b"192.0.2.66\x00 the rest was cut off"
        content = (b"# by hand\n" + nul_line + b"\n" + long_line + b"\n"
                   + b"bad line here\n192.0.2.7\n")
        with open(self.killfile, "wb") as f:
            f.write(content)
        r = self.pc("kill", "list")
        self.assertIn("kill.list:2: NUL byte in the line", r.stderr)
        self.assertIn("kill.list:3: line longer than 2048 bytes", r.stderr)
        self.assertNotIn("192.0.2.66", r.stdout, "a line cut at its NUL byte was loaded")
        self.assertIn("192.0.2.7", r.stdout)
        # a rewrite keeps comments and bad lines, the long one and the NUL one whole
        self.assertEqual(self.pc("kill", "add", "203.0.113.5").returncode, 0)
        with open(self.killfile, "rb") as f:
            after = f.read()
        self.assertTrue(after.startswith(content), "the rewrite changed the hand-written lines:\n%r"
                        % after[:200])
        self.assertIn(b"\n203.0.113.5 ", after)
        # and the daemon reports the NUL line by FILE:LINE too, enforcing the rest
        self.start_daemon()
        self.assertTrue(self.wait_log(r"kill\.list:2: NUL byte in the line"), self.logtext())
        self.assertTrue(self.wait_log(r"lists loaded: 2 kill"), self.logtext())

    def test_garbage_list_file_does_not_crash(self):
        self.start_daemon()
        os.makedirs(os.path.dirname(self.killfile), exist_ok=True)
        with open(self.killfile, "wb") as f:
            f.write(os.urandom(20000) + b"\n" + b"A" * 5000 + b"\n192.0.2.77\n\x00\x01\x02\n")
        self.assertTrue(self.wait_log(r"lists reloaded: \d+ kill"), self.logtext())
        self.assertTrue(self.wait_log(r"longer than 2048 bytes; line skipped"), self.logtext())
        self.assertIsNone(self.daemon.poll(), "daemon died:\n" + self.logtext())
        # the escaped bytes in the log are printable
        for line in self.logtext().splitlines():
            self.assertTrue(all(32 <= ord(ch) < 127 for ch in line), repr(line))


STRACE = shutil.which("strace")


class PidFile(unittest.TestCase):
    @unittest.skipUnless(STRACE, "strace is not installed")
    def test_pid_file_never_seen_empty(self):
        """The pid file appears whole: `portcullis reload` (and systemd's
        PIDFile=) right after a start must never read it empty. strace holds
        every write to the pid file's path for 2 s: written in place, the
        file stood there empty all that time."""
        d = Daemon("pidfile", SMTP_GATEWAY)
        pidfile = d.path("state", "portcullisd.pid")
        os.makedirs(d.path("state"), exist_ok=True)
        with open(d.log_path, "ab") as log:
            p = subprocess.Popen([STRACE, "-f", "-qq", "-o", "/dev/null", "-P", pidfile,
                                  "-e", "trace=write", "-e", "inject=write:delay_enter=2s",
                                  exe(), "-c", d.conf, "-f"], stdout=log, stderr=log,
                                 stdin=subprocess.DEVNULL, env=env_for_binaries())
        try:
            deadline = time.monotonic() + 20
            while not os.path.exists(pidfile) and time.monotonic() < deadline:
                time.sleep(0.005)
            with open(pidfile) as f:
                text = f.read()
            self.assertRegex(text, r"^\d+\n$", "the pid file was read as %r" % text)
            r = run_bin("portcullis", "-c", d.conf, "reload", timeout=30)
            self.assertNotIn("cannot read a pid", r.stderr)
        finally:
            # the daemon (strace's child) first; strace ends with it
            deadline = time.monotonic() + 10
            pid = None
            while pid is None and time.monotonic() < deadline and p.poll() is None:
                try:
                    with open(pidfile) as f:
                        pid = int(f.read().strip() or 0) or None
                except (OSError, ValueError):
                    pass
                time.sleep(0.05)
            if pid:
                os.kill(pid, signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
            d.close()


if __name__ == "__main__":
    sys.exit(runner.main())
