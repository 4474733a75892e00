#!/usr/bin/python3
"""What an admin installing Portcullis sees: `make install` into a DESTDIR
puts the binaries, a commented default /etc/portcullis/portcullis.conf that
the daemon accepts, a systemd unit and the state directory, and never
overwrites a configuration that is there; `log_file` takes every process's
lines (master and workers) and SIGUSR1 to the master reopens it after
logrotate moved it.

Run: python3 tests/integration/test_install.py   (PORTCULLIS_BIN as for the others)
Last line: "N passed, N failed".
"""
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import runner  # noqa: E402
from harness.daemon import REPO, SANITIZER_RE, Daemon, run_bin  # noqa: E402
from harness.ports import free_port  # noqa: E402


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


class T01MakeInstall(unittest.TestCase):
    def setUp(self):
        self.dest = tempfile.mkdtemp(prefix="portcullis-install-")

    def tearDown(self):
        shutil.rmtree(self.dest, ignore_errors=True)

    def make_install(self):
        r = subprocess.run(["make", "-s", "-C", REPO, "install", "DESTDIR=" + self.dest,
                            "PREFIX=/usr", "RUN_USER=nobody"],
                           capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r

    def test_files_in_place_and_default_config_accepted(self):
        self.make_install()
        d = self.dest
        for p in ("usr/sbin/portcullisd", "usr/bin/portcullis"):
            self.assertTrue(os.access(os.path.join(d, p), os.X_OK), p)
        conf = os.path.join(d, "etc/portcullis/portcullis.conf")
        self.assertTrue(os.path.isfile(conf))
        self.assertTrue(os.path.isdir(os.path.join(d, "var/lib/portcullis")))
        unit = open(os.path.join(d, "lib/systemd/system/portcullis.service")).read()
        self.assertIn("ExecStart=/usr/sbin/portcullisd -c /etc/portcullis/portcullis.conf -f", unit)
        self.assertIn("ExecReload=/bin/kill -HUP $MAINPID", unit)    # live reload
        self.assertNotIn("@SBINDIR@", unit)
        self.assertNotIn("@SYSCONFDIR@", unit)
        # the installed default parses, and says it runs as the install's RUN_USER
        r = subprocess.run([os.path.join(d, "usr/sbin/portcullisd"), "-c", conf, "-n"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("run_user = nobody", r.stdout)

    def test_existing_config_is_never_overwritten(self):
        self.make_install()
        conf = os.path.join(self.dest, "etc/portcullis/portcullis.conf")
        with open(conf, "w") as f:
            f.write("# the admin's own\nmydomains = admin.example\n")
        r = self.make_install()
        self.assertEqual(open(conf).read(), "# the admin's own\nmydomains = admin.example\n")
        self.assertIn("kept", r.stdout)
        self.assertTrue(os.path.isfile(conf + ".default"))


class T02LogFile(unittest.TestCase):
    def setUp(self):
        self.milter_port = free_port()
        self.dm = Daemon("logfile", (
            ("state_dir", "{dir}/state"), ("services", "milter smtp"),
            ("milter_listen", "inet:127.0.0.1:%d" % self.milter_port),
            ("smtp_listen", "127.0.0.1:{port}"), ("mydomains", "example.com"),
            ("myhostname", "mx.example.com"), ("relay_networks", "192.0.2.0/24"),
            ("log_file", "{dir}/portcullis.log")))
        self.dir, self.port, self.conf = self.dm.dir, self.dm.port, self.dm.conf
        self.logfile = os.path.join(self.dir, "portcullis.log")
        self.daemon = self.dm.start(timeout=15).proc      # its stderr: self.dm.log_text()

    def tearDown(self):
        self.dm.stop(20)
        text = ""
        for p in (self.logfile, self.logfile + ".1"):
            if os.path.exists(p):
                text += open(p, errors="replace").read()
        text += self.dm.log_text()
        self.dm.close()
        self.assertIsNone(SANITIZER_RE.search(text), text[-3000:])

    def refused_rcpt(self, rcpt):
        s = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=10)
        s.ehlo()
        s.mail("a@outside.test")
        code, _ = s.rcpt(rcpt)
        s.quit()
        return code

    def test_every_process_logs_to_the_file_and_sigusr1_reopens_it(self):
        wait_for(lambda: "smtp ready" in open(self.logfile).read(), 10, "smtp ready in the log")
        text = open(self.logfile).read()
        self.assertIn("portcullisd[", text)           # the master
        self.assertIn("portcullisd/smtp[", text)      # a worker
        self.assertEqual(self.refused_rcpt("x@elsewhere.test") // 100, 5)
        wait_for(lambda: "x@elsewhere.test" in open(self.logfile).read(), 5, "the verdict line")
        self.assertNotIn("x@elsewhere.test", self.dm.log_text(), "log_file set: nothing on stderr")
        # logrotate: move the file away, SIGUSR1 the master
        os.rename(self.logfile, self.logfile + ".1")
        self.daemon.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        self.assertEqual(self.refused_rcpt("y@elsewhere.test") // 100, 5)
        wait_for(lambda: os.path.exists(self.logfile) and
                 "y@elsewhere.test" in open(self.logfile).read(), 5, "the new file")
        self.assertNotIn("y@elsewhere.test", open(self.logfile + ".1").read())
        self.assertIsNone(self.daemon.poll(), "SIGUSR1 must not stop the daemon")

    def test_unwritable_log_file_stops_startup_naming_it(self):
        bad = os.path.join(self.dir, "no-such-dir", "p.log")
        r = run_bin("portcullisd", "-c", self.conf, "-f",
                    "-o", "log_file=" + bad, "-o", "smtp_listen=127.0.0.1:%d" % free_port(),
                    "-o", "milter_listen=inet:127.0.0.1:%d" % free_port())
        self.assertEqual(r.returncode, 1)
        self.assertIn(bad, r.stderr)


if __name__ == "__main__":
    sys.exit(runner.main())
