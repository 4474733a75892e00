#!/usr/bin/python3
"""The admin side of the Sieve rules, as an admin sees it: `portcullis rules
set|show|del|list` over sieve_dir (a script that does not compile is refused
with FILE:LINE:COLUMN and nothing installed; installs are atomic), and
`portcullis explain ... --message FILE` printing, per level, the actions and
the script lines behind them (without --message: the rules were not run).

Run: PORTCULLIS_BIN=$PWD/build/asan/bin python3 tests/integration/test_sieve_admin.py
Last line: "N passed, N failed".
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import runner  # noqa: E402
from harness.daemon import BIN, SANITIZER_RE  # noqa: E402

SERVER = '''require ["reject", "editheader"];
addheader "X-Checked" "yes";
if header :contains "subject" "viagra" {
  reject "No pills, thanks";
}
'''
DOMAIN = '''require ["fileinto"];
if header :contains "subject" "invoice" {
  fileinto "Quarantine";
}
'''
USER = '''require ["fileinto"];
if header :contains "subject" "news" {
  fileinto "News";
}
'''
BROKEN = 'require "fileinto";\nif true {\n  fileinto "x";\n'


class Admin(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="pc-sieve-admin-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.mkdir(os.path.join(self.dir, "lists"))
        self.conf = os.path.join(self.dir, "portcullis.cf")
        with open(self.conf, "w") as f:
            f.write("state_dir = %s/state\nlists = file:%s/lists\nmydomains = example.com other.example\n"
                    % (self.dir, self.dir))
        self.sieve_dir = os.path.join(self.dir, "state", "sieve")

    def file(self, name, text):
        p = os.path.join(self.dir, name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def cli(self, *args):
        p = subprocess.run([os.path.join(BIN, "portcullis"), "-c", self.conf] + list(args),
                           capture_output=True, text=True, timeout=30)
        self.assertNotRegex(p.stderr, SANITIZER_RE)
        return p

    def test_set_show_list_del(self):
        p = self.cli("rules", "set", "server", self.file("s.sieve", SERVER))
        self.assertEqual(p.returncode, 0, p.stderr)
        p = self.cli("rules", "set", "domain", "Example.COM", self.file("d.sieve", DOMAIN))
        self.assertEqual(p.returncode, 0, p.stderr)
        p = self.cli("rules", "set", "user", "bob@example.com", self.file("u.sieve", USER))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(os.path.isfile(os.path.join(self.sieve_dir, "server.sieve")))
        self.assertTrue(os.path.isfile(os.path.join(self.sieve_dir, "domains",
                                                    "example.com.sieve")))
        self.assertTrue(os.path.isfile(os.path.join(self.sieve_dir, "users",
                                                    "bob@example.com.sieve")))
        # no temporary file left behind
        for root, _, files in os.walk(self.sieve_dir):
            self.assertEqual([f for f in files if f.startswith(".")], [], root)
        p = self.cli("rules", "show", "domain", "example.com")
        self.assertEqual((p.returncode, p.stdout), (0, DOMAIN), p.stderr)
        p = self.cli("rules", "list")
        self.assertEqual(p.returncode, 0, p.stderr)
        rows = [l.split()[:2] for l in p.stdout.splitlines()]
        self.assertEqual(rows, [["server", "-"], ["domain", "example.com"],
                                ["user", "bob@example.com"]], p.stdout)
        p = self.cli("rules", "del", "domain", "example.com")
        self.assertEqual(p.returncode, 0, p.stderr)
        p = self.cli("rules", "del", "domain", "example.com")
        self.assertEqual(p.returncode, 1)
        self.assertIn("no such script", p.stderr)
        p = self.cli("rules", "show", "domain", "example.com")
        self.assertEqual(p.returncode, 1)

    def test_broken_script_refused_previous_kept(self):
        self.assertEqual(self.cli("rules", "set", "server",
                                  self.file("s.sieve", SERVER)).returncode, 0)
        bad = self.file("bad.sieve", BROKEN)
        p = self.cli("rules", "set", "server", bad)
        self.assertEqual(p.returncode, 1)
        self.assertRegex(p.stderr, re.escape(bad) + r":\d+:\d+: ")
        self.assertIn("not installed", p.stderr)
        with open(os.path.join(self.sieve_dir, "server.sieve")) as f:
            self.assertEqual(f.read(), SERVER)

    def test_bad_names_and_usage(self):
        s = self.file("s.sieve", SERVER)
        for args in (("domain", "../etc", s), ("user", "nodomain", s), ("domain", ".x", s)):
            p = self.cli("rules", "set", *args)
            self.assertEqual(p.returncode, 2, (args, p.stderr))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "state", "etc.sieve")))
        self.assertEqual(self.cli("rules", "frobnicate").returncode, 2)

    def explain(self, *extra):
        return self.cli("explain", "--client", "192.0.2.1", "--from", "a@outside.test",
                        "--rcpt", "bob@example.com", *extra)

    def test_explain_without_message_says_not_run(self):
        self.cli("rules", "set", "server", self.file("s.sieve", SERVER))
        p = self.explain()
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stdout, r"RULES\s+not run")

    def test_explain_with_message_per_level(self):
        self.cli("rules", "set", "server", self.file("s.sieve", SERVER))
        self.cli("rules", "set", "domain", "example.com", self.file("d.sieve", DOMAIN))
        self.cli("rules", "set", "user", "bob@example.com", self.file("u.sieve", USER))
        msg = self.file("m.eml", "From: a@outside.test\r\nTo: bob@example.com\r\n"
                                 "Subject: your invoice\r\n\r\nhello\r\n")
        p = self.explain("--message", msg)
        self.assertEqual(p.returncode, 0, p.stderr + p.stdout)
        out = p.stdout
        self.assertRegex(out, r"server \S+server\.sieve: addheader \"X-Checked\" \"yes\" \(line 2\)")
        self.assertRegex(out, r"server \S+: implicit keep")
        self.assertRegex(out, r"domain \S+example\.com\.sieve: quarantine: fileinto "
                              r"\"Quarantine\" \(line 3\)")
        self.assertRegex(out, r"verdict: quarantine")
        # a reject at the server level: refused, the domain does not run
        msg = self.file("m2.eml", "From: a@outside.test\r\nTo: bob@example.com\r\n"
                                  "Subject: cheap viagra\r\n\r\nhello\r\n")
        p = self.explain("--message", msg)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertRegex(p.stdout, r"server \S+: reject \"No pills, thanks\" \(line 4\)")
        self.assertIn("lower levels do not run", p.stdout)
        self.assertRegex(p.stdout, r"verdict: reject 550 5\.7\.1 No pills, thanks")
        self.assertNotRegex(p.stdout, r"domain \S+: ")
        self.assertIn("result: refused", p.stdout)
        # the user's level, for a message the upper levels keep
        msg = self.file("m3.eml", "From: a@outside.test\r\nTo: bob@example.com\r\n"
                                  "Subject: daily news\r\n\r\nhello\r\n")
        p = self.explain("--message", msg)
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assertRegex(p.stdout, r"user \S+bob@example\.com\.sieve: store \"News\" \(line 3\)")
        # a second domain under other rules: 452 4.5.3 for its recipients
        p = self.cli("explain", "--client", "192.0.2.1", "--from", "a@outside.test",
                     "--rcpt", "bob@example.com", "--rcpt", "x@other.example",
                     "--message", msg)
        self.assertRegex(p.stdout, r"RCPT x@other\.example: 452 4\.5\.3 ", p.stdout)


if __name__ == "__main__":
    sys.exit(runner.main(require=("portcullis",), verbosity=2 if "-v" in sys.argv else 1))
