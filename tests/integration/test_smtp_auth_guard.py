#!/usr/bin/python3
"""The gateway's users and logins under stress, driven by real clients
(python smtplib/ssl and raw sockets):

    T01UsersFile    the users file truncated, removed, replaced by a directory
                    or by garbage while the daemon runs: local deliveries are
                    still 250 into the store (the last good users stay in
                    force), the log says why, once; a valid file is picked up
                    again; `portcullis user del` of the last user still means
                    "no users" (the CLI never writes a zero-length file)

Reuses test_smtp_tls_auth's work area, daemon launcher and smtplib client.
Everything listens on 127.0.0.1; "outside" clients come from 127.0.0.5 and
other 127.0.0.N addresses named in each test.

Run:  python3 tests/integration/test_smtp_auth_guard.py [Class[.test]]...
Environment: PORTCULLIS_BIN (default <repo>/bin), KEEP_LAB=1.  Last line
"N passed, N failed"; exit status 1 on a failure, a sanitizer report in a
daemon log, or a daemon that did not exit 0 on SIGTERM.
"""

import os
import re
import shutil
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import lab  # noqa: E402
import test_smtp_tls_auth as tls  # noqa: E402  (work area, Daemon, Client)

USER = tls.USER
PASSWORD = tls.PASSWORD
W = None


def setUpModule():
    global W
    W = tls.Work()
    tls.W = W


class Case(tls.Case):
    def deliver(self, d, rcpt, source="127.0.0.5"):
        """One message to rcpt: the reply to RCPT and to the final dot."""
        m = lab.new_marker("u")
        with tls.Client(d.ports["smtp"], source=source) as c:
            c.ehlo()
            out = c.transaction([rcpt], m)
        return m, out, c

    def assertDelivered(self, d, rcpt, what):
        m, out, c = self.deliver(d, rcpt)
        self.assertEqual([r[0] for r in out], [250, 250, 250],
                         "%s: %s\n%s" % (what, out, c.transcript()))
        self.assertEqual(len(W.in_mailbox(m, rcpt)), 1, "%s: not in the store" % what)


# ========================================================= T01 users file
class T01UsersFile(Case):
    @classmethod
    def setUpClass(cls):
        cls.users = os.path.join(W.dir, "users-t01")
        cls.d = tls.Daemon(W, "users", smtp_listen="auto", users="file:" + cls.users)
        W.add_user(cls.d.conf, USER, PASSWORD)
        with open(cls.users) as f:
            cls.good = f.read()
        cls.d.start()

    def wait_log(self, pattern, timeout=4.0):
        try:
            return lab.wait_until(lambda: re.search(pattern, self.log_since(self.d)),
                                  timeout, what=pattern)
        except lab.LabError:
            self.fail("the log never said /%s/:\n%s" % (pattern, self.log_since(self.d)[-2000:]))

    def restore(self):
        if os.path.isdir(self.users):
            shutil.rmtree(self.users)
        with open(self.users + ".new", "w") as f:
            f.write(self.good)
        os.rename(self.users + ".new", self.users)

    def tearDown(self):
        self.restore()
        time.sleep(1.2)

    def breaks(self, how, why_re):
        self.assertDelivered(self.d, USER, "before: " + how)
        self.mark(self.d)
        if how == "truncated":
            open(self.users, "w").close()
        elif how == "removed":
            os.unlink(self.users)
        elif how == "a directory":
            os.unlink(self.users)
            os.mkdir(self.users)
        elif how == "garbage":
            with open(self.users, "w") as f:
                f.write("this is not a users file\n\x00\x01garbage\n")
        time.sleep(1.5)     # the reload checks each second
        for i in range(3):
            self.assertDelivered(self.d, USER, "users file %s (try %d)" % (how, i))
            time.sleep(0.5)
        self.wait_log(r"users file not usable.*" + why_re)
        log = self.log_since(self.d)
        self.assertEqual(len([l for l in log.splitlines() if "users file not usable" in l]), 1,
                         "said once a minute, not per check:\n" + log)
        self.assertNotIn("550 5.1.1", log)
        # a valid file with a new user is picked up again
        with open(self.users + ".new", "w") as f:
            f.write(self.good + "bob@example.com:{CRYPT}$y$x::::::\n")
        if os.path.isdir(self.users):
            shutil.rmtree(self.users)
        os.rename(self.users + ".new", self.users)
        self.wait_log(r"users reloaded: 2")
        self.assertDelivered(self.d, "bob@example.com", "after restoring (new user)")
        m, out, c = self.deliver(self.d, "nobody@example.com")
        self.assertEqual(out[1][0], 550, "an unknown user is still unknown: %s" % out)

    def test_truncated(self):
        self.breaks("truncated", r"is empty")

    def test_removed(self):
        self.breaks("removed", r"No such file")

    def test_unreadable(self):
        self.breaks("a directory", r"cannot read .*Is a directory")

    def test_garbage(self):
        self.breaks("garbage", r"no valid user line")

    def test_cli_delete_last_user_means_no_users(self):
        # what the admin asked for is not a broken file: no users, 550 5.1.1
        p = tls.run([os.path.join(tls.BIN, "portcullis"), "-c", self.d.conf, "user", "del",
                     USER])
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(self.users) as f:
            txt = f.read()
        self.assertTrue(txt.startswith("#"), "no zero-length file: %r" % txt)
        self.mark(self.d)
        self.wait_log(r"users reloaded: 0")
        m, out, c = self.deliver(self.d, USER)
        self.assertEqual(out[1][0], 550, "%s" % out)


CASES = [T01UsersFile]


def main(argv):
    for exe in ("portcullisd", "portcullis"):
        if not os.access(os.path.join(tls.BIN, exe), os.X_OK):
            print("%s/%s missing: run make first" % (tls.BIN, exe), file=sys.stderr)
            return 1
    names = [a for a in argv if not a.startswith("-")]
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    mod = sys.modules[__name__]
    if names:
        for n in names:
            suite.addTests(loader.loadTestsFromName(n, mod))
    else:
        for cls in CASES:
            suite.addTests(loader.loadTestsFromTestCase(cls))
    t0 = time.monotonic()
    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=2,
                                     resultclass=tls.CountingResult)
    problems = []
    result = None
    try:
        result = runner.run(suite)
        problems = tls.final_checks()
    finally:
        if W is not None:
            W.close()
    failed = len(result.failed_ids()) + len(problems)
    for p in problems:
        print("FAIL (final check): %s" % p)
    print("%d skipped; %.1fs" % (len(result.skipped), time.monotonic() - t0))
    print("%d passed, %d failed" % (result.passed, failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
