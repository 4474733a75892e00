#!/usr/bin/python3
"""The APOP secret in the users file, as the admin sees it through
`portcullis user add|passwd` (issue 11: "when it is on, user add|passwd
stores one for it and nothing else does"):

    T01Field    pop3_apop = no (the default): no apop= on any line;
                pop3_apop = yes: user add and user passwd write
                apop={PLAIN.BASE64}... holding exactly the password (spaces,
                colons, UTF-8), a digest made from it is the APOP answer;
                switched off again, the next user passwd drops the field
                (a user not re-set keeps it until then); a pop3_apop that
                is no boolean is refused with FILE:LINE, nothing written

Run:  python3 tests/integration/test_user_apop.py [Class[.test]]...
Environment: PORTCULLIS_BIN (default <repo>/bin).  Last line "N passed, N failed".
"""

import base64
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import runner  # noqa: E402
from harness.daemon import BIN, SANITIZER_RE  # noqa: E402

PASSWORD = "s3cret: with spaces \u00e4"


class T01Field(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="portcullis-apop.", dir="/tmp")
        self.conf = os.path.join(self.dir, "portcullis.conf")
        self.users = os.path.join(self.dir, "users")
        self.write_conf("")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def write_conf(self, extra):
        with open(self.conf, "w") as f:
            f.write("state_dir = %s/state\nmydomains = example.com\nusers = file:%s\n%s" % (
                self.dir, self.users, extra))

    def user(self, verb, name, password=PASSWORD, ok=True):
        p = subprocess.run([os.path.join(BIN, "portcullis"), "-c", self.conf, "user", verb,
                            name, "--password-stdin"], input=password + "\n",
                           capture_output=True, text=True, timeout=60)
        self.assertFalse(SANITIZER_RE.search(p.stderr), p.stderr)
        if ok:
            self.assertEqual(p.returncode, 0, p.stderr)
        return p

    def fields(self, name):
        """the extra fields of name's line, as a dict"""
        with open(self.users) as f:
            for line in f:
                if line.startswith(name + ":"):
                    extra = line.rstrip("\n").split(":", 7)[7]
                    return dict(kv.split("=", 1) for kv in extra.split())
        self.fail("no line for %s" % name)

    def apop_secret(self, name):
        v = self.fields(name).get("apop")
        if v is None:
            return None
        self.assertTrue(v.startswith("{PLAIN.BASE64}"), v)
        return base64.b64decode(v[len("{PLAIN.BASE64}"):], validate=True).decode()

    def test_field_only_while_pop3_apop_is_on(self):
        # off by default: nothing recoverable
        self.user("add", "alice@example.com")
        self.assertNotIn("apop", self.fields("alice@example.com"))
        self.assertIn("scram_sha_256", self.fields("alice@example.com"))

        # on: user add and user passwd store it
        self.write_conf("pop3_apop = yes\n")
        self.user("add", "bob@example.com")
        self.assertEqual(self.apop_secret("bob@example.com"), PASSWORD)
        self.assertIsNone(self.apop_secret("alice@example.com"), "only written by passwd")
        self.user("passwd", "alice@example.com", "other: pass")
        self.assertEqual(self.apop_secret("alice@example.com"), "other: pass")
        self.assertEqual(stat.S_IMODE(os.stat(self.users).st_mode), 0o600)
        # what a POP3 client would send for RFC 1939's stamp
        stamp = "<1896.697170952@dbc.mtview.ca.us>"
        self.assertEqual(hashlib.md5((stamp + self.apop_secret("bob@example.com")).encode())
                         .hexdigest(), hashlib.md5((stamp + PASSWORD).encode()).hexdigest())

        # off again: the next passwd drops it; bob keeps his until re-set
        self.write_conf("pop3_apop = no\n")
        self.user("passwd", "alice@example.com", "third pass")
        self.assertNotIn("apop", self.fields("alice@example.com"))
        self.assertEqual(self.apop_secret("bob@example.com"), PASSWORD)
        self.user("passwd", "bob@example.com", "fourth pass")
        with open(self.users) as f:
            lines = [l for l in f if not l.startswith("#")]
        self.assertEqual(len(lines), 2)
        self.assertFalse([l for l in lines if " apop=" in l], lines)

    def test_bad_value_refused_nothing_written(self):
        self.write_conf("pop3_apop = sometimes\n")
        p = self.user("add", "carol@example.com", ok=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertRegex(p.stderr, r"portcullis\.conf:4: pop3_apop")
        self.assertFalse(os.path.exists(self.users) and "carol" in open(self.users).read())


if __name__ == "__main__":
    sys.exit(runner.main())
