#!/usr/bin/python3
"""`portcullis rules check FILE`: exit 0 for a script that compiles, exit 1
and FILE:LINE:COLUMN: message lines for one that does not, as an admin sees it.

Run: python3 tests/integration/test_sieve_cli.py   (PORTCULLIS_BIN as for the others)
Last line: "N passed, N failed".
"""
import os
import re
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import runner  # noqa: E402
from harness.daemon import BIN, SANITIZER_RE  # noqa: E402


class RulesCheck(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="pc-sieve-cli-")

    def check(self, text, name="s.sieve"):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        p = subprocess.run([os.path.join(BIN, "portcullis"), "rules", "check", path],
                           capture_output=True, text=True, timeout=30)
        self.assertNotRegex(p.stderr, SANITIZER_RE)
        return path, p

    def test_good_script_exit_0(self):
        _, p = self.check('require ["fileinto", "imap4flags"];\n'
                          'if header :contains "subject" "[spam]" {\n'
                          '  fileinto :flags "\\\\Seen" "Junk";\n  stop;\n}\n')
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stderr, "")

    def test_bad_script_names_file_line_column(self):
        path, p = self.check('require "fileinto";\n\nif header :is "subject" {\n  keep;\n}\n'
                             'require "frop";\n')
        self.assertEqual(p.returncode, 1)
        lines = p.stderr.strip().splitlines()
        self.assertIn(path + ":3:4: the header test requires 2 positional argument(s), "
                      "but 1 was specified", lines)
        self.assertTrue(any(l.startswith(path + ":6:1: ") for l in lines), lines)
        for l in lines:
            self.assertRegex(l, "^" + re.escape(path) + r":\d+:\d+: ")

    def test_unknown_capability_named(self):
        path, p = self.check('require ["fileinto", "frobnicate"];\nkeep;\n')
        self.assertEqual(p.returncode, 1)
        self.assertIn(path + ":1:9: require command: unknown Sieve capability 'frobnicate'",
                      p.stderr)

    def test_syntax_error(self):
        path, p = self.check('if true {\n  keep;\n')
        self.assertEqual(p.returncode, 1)
        self.assertRegex(p.stderr, "^" + re.escape(path) + r":3:1: end of file before end of "
                         r"command block")

    def test_missing_file(self):
        p = subprocess.run([os.path.join(BIN, "portcullis"), "rules", "check",
                            os.path.join(self.dir, "none.sieve")],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1)
        self.assertIn("cannot open", p.stderr)


if __name__ == "__main__":
    sys.exit(runner.main(require=("portcullis",), verbosity=2 if "-v" in sys.argv else 1))
