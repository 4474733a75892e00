#!/usr/bin/python3
"""The list commands as an admin meets them (file store, no daemon needed).

What it proves: `kill add` of an entry that is already there keeps every
attribute the command line does not give (expiry, reason, origin, time
added) and prints what changed, old -> new; `--ttl never` makes a timed
entry permanent, `--reason ""` clears a reason.

Run: python3 tests/integration/test_list_admin.py [Class.test_name]
     PORTCULLIS_BIN=build/asan/bin python3 tests/integration/test_list_admin.py
Last line: "N passed, N failed"; exit 1 on a failure.
"""
import os
import re
import shutil
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import runner  # noqa: E402
from harness.daemon import SANITIZER_RE, run_bin  # noqa: E402


class ReAdd(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="portcullis-listadmin-")
        self.conf = os.path.join(self.dir, "portcullis.conf")
        self.killfile = os.path.join(self.dir, "lists", "kill.list")
        with open(self.conf, "w") as f:
            f.write("mydomains = example.com\nlists = file:%s/lists\nstate_dir = %s/state\n"
                    % (self.dir, self.dir))

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def pc(self, *args, ok=True):
        r = run_bin("portcullis", "-c", self.conf, *args, timeout=20)
        self.assertIsNone(SANITIZER_RE.search(r.stderr), r.stderr)
        if ok:
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r

    def entry(self, key):
        for line in self.pc("kill", "list").stdout.splitlines():
            if line.split()[:1] == [key]:
                return line
        return None

    def test_readd_keeps_what_is_not_given(self):
        ip = "192.0.2.5"
        self.pc("kill", "add", ip, "--ttl", "1h", "--reason", "spam run")
        first = self.entry(ip)
        self.assertRegex(first, r"expires=20\d\d-.* reason=spam run$")
        # the same entry again, nothing given: nothing changes, and it says so
        r = self.pc("kill", "add", ip)
        self.assertRegex(r.stdout, r"^kill: 192\.0\.2\.5 is there already, unchanged "
                                   r"\(origin admin, expires 20\d\d-.*, reason \"spam run\"\)")
        self.assertEqual(self.entry(ip), first)
        # a new reason: the expiry (and the time added) stay
        r = self.pc("kill", "add", ip, "--reason", "spam run, round 2")
        self.assertRegex(r.stdout, r'^kill: updated 192\.0\.2\.5: reason "spam run" -> '
                                   r'"spam run, round 2" \(origin admin')
        line = self.entry(ip)
        self.assertRegex(line, r"expires=20\d\d-.* reason=spam run, round 2$")
        self.assertEqual(re.search(r"added=\S+", line).group(0),
                         re.search(r"added=\S+", first).group(0))
        self.assertEqual(re.search(r"expires=\S+", line).group(0),
                         re.search(r"expires=\S+", first).group(0))
        # --ttl never: permanent, the reason stays
        r = self.pc("kill", "add", ip, "--ttl", "never")
        self.assertRegex(r.stdout, r"^kill: updated 192\.0\.2\.5: expires 20\d\d-\S+ -> never")
        self.assertRegex(self.entry(ip), r"expires=never reason=spam run, round 2$")
        # a new expiry; then the reason cleared
        r = self.pc("kill", "add", ip, "--ttl", "2h")
        self.assertRegex(r.stdout, r"expires never -> 20\d\d-")
        r = self.pc("kill", "add", ip, "--reason", "")
        self.assertRegex(r.stdout, r'reason "spam run, round 2" -> \(none\)')
        self.assertRegex(self.entry(ip), r"expires=20\d\d-\S+$")

    def test_readd_of_an_auto_ban_keeps_its_origin(self):
        os.makedirs(os.path.dirname(self.killfile), exist_ok=True)
        now = int(time.time())
        with open(self.killfile, "w") as f:
            f.write("198.51.100.9 added=%d expires=%d origin=auto-ban reason=long-command\n"
                    % (now - 60, now + 3000))
        r = self.pc("kill", "add", "198.51.100.9", "--ttl", "7d")
        self.assertIn("(origin auto-ban and other attributes kept)", r.stdout)
        line = self.entry("198.51.100.9")
        self.assertIn("origin=auto-ban", line)
        self.assertTrue(line.endswith("reason=long-command"), line)
        # an expired leftover is not "there": a plain new entry
        with open(self.killfile, "w") as f:
            f.write("198.51.100.10 added=%d expires=%d origin=auto-ban reason=old\n"
                    % (now - 7200, now - 3600))
        r = self.pc("kill", "add", "198.51.100.10")
        self.assertEqual(r.stdout, "kill: added 198.51.100.10\n")
        self.assertRegex(self.entry("198.51.100.10"), r"origin=admin .*expires=never$")


if __name__ == "__main__":
    sys.exit(runner.main(require=("portcullis",)))
