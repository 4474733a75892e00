#!/usr/bin/python3
"""Live reload (SIGHUP, `portcullis reload`) through real clients:

  T1PolicyKey    mydomains and max_recipients changed + SIGHUP: new sessions
                 get the new verdicts; a session opened before the reload,
                 mid-transaction, finishes its message with 250 (in the store)
  T2Broken       a broken config: refused, the old one is still enforced, the
                 log names FILE:LINE, `portcullis reload` exits non-zero and
                 says why (a syntax error; a key that does not match the
                 certificate, found only by start-up's checks); a missing
                 key file is refused too
  T3Tls          a replaced certificate and key + SIGHUP: a new STARTTLS
                 session (openssl s_client) sees the new certificate, a TLS
                 session opened before keeps working
  T4RestartOnly  smtp_listen and pid_file changed: the log and `portcullis
                 reload` say "needs a restart: KEY", the old listener serves,
                 the rest of the change (mydomains) applies
  T5Milter       the milter behind a real Postfix picks up a policy change
                 (no 4xx at any step) and a new list store
  T7PolicyDoor   the Postfix policy door behind a real Postfix picks up a
                 null_sender change; Postfix's open policy connections are
                 closed between requests and it reconnects: no 4xx, no warning
  T8Supervise    after a reload a crashed current worker is restarted (with
                 the new settings); the draining one that exits is not
  T6Load         50 sessions sending continuously while SIGHUP arrives every
                 second for 10 s: every message 250 and in the store
  T9EarlySignals a SIGHUP and a SIGUSR1 that arrive while the master starts
                 (listener bound, held opening log_file, a FIFO): it starts,
                 then reloads, instead of dying of them

Each test runs its own portcullisd on free loopback ports; at its end the
log must hold no sanitizer report.
Run:  PORTCULLIS_BIN=build/asan/bin python3 tests/integration/test_reload.py
Last line printed: "N passed, N failed"; exit status 1 on any failure.
"""

import os
import re
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import daemon as hdaemon, runner                 # noqa: E402
from harness.client import make_message, new_marker          # noqa: E402
from harness.daemon import BIN                                # noqa: E402
from harness.ports import free_port, port_accepts             # noqa: E402
from harness.postfix import Lab                               # noqa: E402
from harness.util import tail, wait_until                     # noqa: E402

OUTSIDE = "127.0.0.5"       # not in relay_networks: mydomains decides


class Daemon(hdaemon.Daemon):
    """portcullisd in a directory of its own; the config (self.keys) can be
    rewritten and reloaded."""

    def __init__(self, **keys):
        super().__init__("reload")
        self.keys = {
            "state_dir": self.dir + "/state",
            "services": "smtp",
            "smtp_listen": "127.0.0.1:%d" % self.port,
            "myhostname": "mx.example.com",
            "mydomains": "example.com",
            "relay_networks": "192.0.2.1",
            "log_level": "info",
            "users": "",        # no user database: any local part is deliverable
        }
        self.keys.update({k: str(v) for k, v in keys.items()})
        self.write()
        self.log = self.log_path
        self.gen = 0

    def write(self, extra_lines=""):
        with open(self.conf + ".new", "w") as f:
            f.write("".join("%s = %s\n" % kv for kv in self.keys.items()) + extra_lines)
        os.rename(self.conf + ".new", self.conf)

    def start(self):
        # written once every worker is ready; fopen("w") makes it empty first,
        # and `portcullis reload` (T2, T4) reads the pid from it at once
        pid_file = os.path.join(self.keys["state_dir"], "portcullisd.pid")

        def pid_written():
            try:
                with open(pid_file) as f:
                    return re.fullmatch(r"\d+\n", f.read()) is not None
            except OSError:
                return False
        return super().start(ready=pid_written, timeout=20)

    def status(self):
        try:
            with open(os.path.join(self.keys["state_dir"], "reload-status")) as f:
                t = f.read()
        except OSError:
            return None
        m = re.match(r"generation (\d+)\nresult (\w+)\n(.*)end\n$", t, re.S)
        return (int(m.group(1)), m.group(2), m.group(3)) if m else None

    def sighup(self, wait=True):
        """SIGHUP to the master; wait for its verdict; returns (result, message)."""
        self.gen += 1
        self.proc.send_signal(signal.SIGHUP)
        if not wait:
            return None
        wait_until(lambda: (self.status() or (0,))[0] >= self.gen, 60,
                   what="reload %d to finish" % self.gen)
        st = self.status()
        return st[1], st[2]

    def cli(self, *args, timeout=90):
        return super().cli(*args, check=False, timeout=timeout)

    def stop(self):
        res = super().stop(20)
        return res[0] if res is not None else (self.last_stop[0] if self.last_stop else 0)

    def store_subjects(self):
        """the Subject of every message in the store (new/)"""
        subjects = set()
        for root, _dirs, files in os.walk(os.path.join(self.keys["state_dir"], "mail")):
            if os.path.basename(root) != "new":
                continue
            for name in files:
                with open(os.path.join(root, name), errors="replace") as f:
                    m = re.search(r"^Subject: (\S+)", f.read(), re.M)
                    if m:
                        subjects.add(m.group(1))
        return subjects

    def store_holds(self, marker):
        return marker in self.store_subjects()

    def cleanup(self, case):
        # called from the test's finally: an exception in flight is the test
        # failing; print the daemon's log and keep its directory, so that a
        # failure seen once in CI can be read afterwards
        failing = sys.exc_info()[0] is not None
        rc = self.stop()
        bad = self.sanitizer_lines()
        if failing:
            print("\n--- %s failed; kept %s; its log ends:\n%s\n---" % (
                case.id(), self.dir, self.log_tail(80)), flush=True)
        self.close(keep=failing)
        case.assertEqual(bad, [], "sanitizer report in the daemon log")
        case.assertEqual(rc, 0, "portcullisd did not exit 0 on SIGTERM")


def show_lab_if_failing(case, lab):
    """From a test's finally: when it is failing (an exception in flight),
    print the ends of the daemon's log and of Postfix's maillog before the
    lab goes."""
    if sys.exc_info()[0] is not None:
        print("\n--- %s failed; the daemon's log ends:\n%s\n--- the maillog ends:\n%s\n---" % (
            case.id(), tail(lab.daemon_log, 60), tail(lab.maillog, 30)), flush=True)


def smtp(port, source=OUTSIDE, timeout=30):
    c = smtplib.SMTP("127.0.0.1", port, local_hostname="client.reload.test", timeout=timeout,
                     source_address=(source, 0))
    c.ehlo()
    return c


def message(marker, to="alice@example.com"):
    return ("From: Sender <sender@outside.test>\r\nTo: <%s>\r\nSubject: %s\r\n"
            "Message-ID: <%s@outside.test>\r\n\r\nbody %s\r\n" % (to, marker, marker, marker))


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def rcpt_code(port, rcpt, source=OUTSIDE):
    c = smtp(port, source)
    try:
        c.mail("sender@outside.test")
        return c.rcpt(rcpt)[0]
    finally:
        c.quit()


class T1bDoneMeansDone(unittest.TestCase):
    def test_a_connection_after_done_never_meets_the_old_worker(self):
        """Once the reload said the new configuration is in force, a new
        connection gets it. The old worker used to go on accepting until its
        loop took the SIGUSR2 (seen in CI under load: a connection after
        "done" refused by the old settings). Made deterministic: the old
        worker is stopped (SIGSTOP) across the reload, the new one while a
        connection made after "done" waits in the queue, then both run."""
        import socket
        d = Daemon().start()
        try:
            (old,) = d.workers()
            d.keys["smtp_banner"] = "$myhostname gen1 ready"
            d.write()
            os.kill(old, signal.SIGSTOP)
            stopped = [old]
            try:
                res = {}
                t = threading.Thread(target=lambda: res.update(r=d.sighup()))
                t.start()
                t.join(1.5)         # "done" while the old worker cannot have drained?
                if "r" not in res:  # no: it waits for the old worker to stop accepting
                    os.kill(old, signal.SIGCONT)
                    stopped.remove(old)
                    t.join(30)
                self.assertEqual(res.get("r"), ("ok", ""))
                (new,) = [p for p in d.workers() if p != old] or [None]
                self.assertIsNotNone(new)
                os.kill(new, signal.SIGSTOP)
                stopped.append(new)
                so = socket.create_connection(("127.0.0.1", d.port), timeout=30)
                if old in stopped:  # the old worker runs with the connection waiting
                    os.kill(old, signal.SIGCONT)
                    stopped.remove(old)
                time.sleep(0.5)     # it must not take it
            finally:
                for p in stopped:
                    os.kill(p, signal.SIGCONT)
            line = so.makefile("rb").readline()
            so.close()
            self.assertIn(b" gen1 ready", line, "greeted by the old worker after done")
        finally:
            d.cleanup(self)


class T1PolicyKey(unittest.TestCase):
    def test_new_sessions_new_verdict_old_session_finishes(self):
        d = Daemon(max_recipients=5).start()
        try:
            self.assertEqual(rcpt_code(d.port, "alice@example.com"), 250)
            self.assertEqual(rcpt_code(d.port, "bob@example.org"), 550)
            old = smtp(d.port)       # mid-transaction across the reload
            self.assertEqual(old.mail("sender@outside.test")[0], 250)
            self.assertEqual(old.rcpt("alice@example.com")[0], 250)

            d.keys["mydomains"] = "example.org"
            d.keys["max_recipients"] = "1"
            d.write()
            self.assertEqual(d.sighup(), ("ok", ""))
            self.assertIn("reload 1 done", d.log_text())

            self.assertEqual(rcpt_code(d.port, "alice@example.com"), 550)
            self.assertEqual(rcpt_code(d.port, "bob@example.org"), 250)
            c = smtp(d.port)
            c.mail("sender@outside.test")
            self.assertEqual(c.rcpt("bob@example.org")[0], 250)
            self.assertEqual(c.rcpt("carol@example.org")[0], 452, "max_recipients = 1")
            c.quit()

            code, _ = old.data(message("t1-old-session"))
            self.assertEqual(code, 250)
            old.quit()
            wait_until(lambda: d.store_holds("t1-old-session"), 10, what="the old message")
            # the drained worker leaves once its last session is gone
            wait_until(lambda: "drained and exited" in d.log_text(), 15,
                       what="the old smtp worker to exit")
            self.assertNotIn("restarting", d.log_text())
        finally:
            d.cleanup(self)


class T2Broken(unittest.TestCase):
    def test_syntax_error_refused_with_file_line(self):
        d = Daemon().start()
        try:
            d.keys["mydomains"] = "example.org"
            lines = len(d.keys)
            d.write("max_recipients = lots\n")
            result, msg = d.sighup()
            self.assertEqual(result, "failed")
            where = "%s:%d" % (d.conf, lines + 1)
            self.assertIn(where, msg)
            self.assertRegex(d.log_text(), r"reload refused.*%s" % re.escape(where))
            # the old configuration is still enforced
            self.assertEqual(rcpt_code(d.port, "alice@example.com"), 250)
            self.assertEqual(rcpt_code(d.port, "bob@example.org"), 550)
            # the admin command reads the file too: it refuses, naming it
            p = d.cli("reload")
            self.assertEqual(p.returncode, 2)
            self.assertIn(where, p.stderr)
        finally:
            d.cleanup(self)

    def test_key_mismatch_refused_by_daemon_cli_says_why(self):
        # the admin command parses the file too (and would refuse a bad
        # value itself): this one parses, and only start-up's checks refuse it
        d = Daemon()
        for n in ("a", "b"):
            make_cert(d.dir, n)
        d.keys["tls_cert_file"] = os.path.join(d.dir, "a.crt")
        d.keys["tls_key_file"] = os.path.join(d.dir, "a.key")
        d.write()
        d.start()
        try:
            d.keys["mydomains"] = "example.org"
            d.keys["tls_key_file"] = os.path.join(d.dir, "b.key")    # not a.crt's key
            d.write()
            line = list(d.keys).index("tls_key_file") + 1
            p = d.cli("reload")
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn("reload refused", p.stderr)
            self.assertIn("%s:%d" % (d.conf, line), p.stderr)
            self.assertIn("tls_key_file", p.stderr)
            self.assertRegex(d.log_text(), r"reload refused.*%s:%d" % (re.escape(d.conf), line))
            self.assertEqual(rcpt_code(d.port, "alice@example.com"), 250)
            self.assertEqual(rcpt_code(d.port, "bob@example.org"), 550)
            # fixed: the same command now applies it
            d.keys["tls_key_file"] = os.path.join(d.dir, "a.key")
            d.write()
            p = d.cli("reload")
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("reloaded", p.stdout)
            self.assertEqual(rcpt_code(d.port, "bob@example.org"), 250)
        finally:
            d.cleanup(self)

    @unittest.skipUnless(os.geteuid() == 0, "needs root to start as root and drop to run_user")
    def test_key_run_user_cannot_read_refused_with_reason(self):
        # the master dropped root after start: a reload reads as run_user
        d = Daemon(run_user="nobody")
        make_cert(d.dir, "a")
        d.keys["tls_cert_file"] = os.path.join(d.dir, "a.crt")
        d.keys["tls_key_file"] = os.path.join(d.dir, "a.key")
        d.write()
        os.chmod(os.path.join(d.dir, "a.key"), 0o644)
        d.start()
        try:
            d.keys["mydomains"] = "example.org"
            d.write()
            os.chmod(os.path.join(d.dir, "a.key"), 0o600)     # root's only
            result, msg = d.sighup()
            self.assertEqual(result, "failed")
            self.assertIn("a.key", msg)
            self.assertIn("cannot read", msg)
            self.assertEqual(rcpt_code(d.port, "alice@example.com"), 250)
            os.chmod(os.path.join(d.dir, "a.key"), 0o644)
            self.assertEqual(d.sighup(), ("ok", ""))
            self.assertEqual(rcpt_code(d.port, "bob@example.org"), 250)
        finally:
            d.cleanup(self)

    def test_unreadable_key_refused_with_reason(self):
        d = Daemon()
        make_cert(d.dir, "a")
        d.keys["tls_cert_file"] = os.path.join(d.dir, "a.crt")
        d.keys["tls_key_file"] = os.path.join(d.dir, "a.key")
        d.write()
        d.start()
        try:
            d.keys["tls_key_file"] = os.path.join(d.dir, "missing.key")
            d.keys["mydomains"] = "example.org"
            d.write()
            result, msg = d.sighup()
            self.assertEqual(result, "failed")
            self.assertIn("missing.key", msg)
            self.assertEqual(rcpt_code(d.port, "alice@example.com"), 250)
        finally:
            d.cleanup(self)


def make_cert(d, name):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=%s.reload.test" % name, "-keyout", os.path.join(d, name + ".key"),
                    "-out", os.path.join(d, name + ".crt")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


def s_client_subject(port):
    p = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect",
                        "127.0.0.1:%d" % port, "-servername", "mx.example.com"],
                       input="QUIT\n", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=30)
    m = re.search(r"subject=.*?CN\s*=\s*([\w.]+)", p.stdout)
    return m.group(1) if m else p.stdout


class T3Tls(unittest.TestCase):
    def test_new_cert_for_new_sessions_old_tls_session_works(self):
        d = Daemon()
        for n in ("one", "two"):
            make_cert(d.dir, n)
        crt, key = os.path.join(d.dir, "server.crt"), os.path.join(d.dir, "server.key")
        shutil.copy(os.path.join(d.dir, "one.crt"), crt)
        shutil.copy(os.path.join(d.dir, "one.key"), key)
        d.keys.update(tls_cert_file=crt, tls_key_file=key)
        d.write()
        d.start()
        try:
            self.assertEqual(s_client_subject(d.port), "one.reload.test")
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            old = smtp(d.port)
            old.starttls(context=ctx)
            old.ehlo()
            self.assertEqual(old.mail("sender@outside.test")[0], 250)

            for ext in ("crt", "key"):      # replaced as an admin would: rename over
                shutil.copy(os.path.join(d.dir, "two." + ext), crt + ".tmp")
                os.rename(crt + ".tmp", os.path.join(d.dir, "server." + ext))
            self.assertEqual(d.sighup(), ("ok", ""))
            self.assertEqual(s_client_subject(d.port), "two.reload.test")

            self.assertEqual(old.rcpt("alice@example.com")[0], 250)
            self.assertEqual(old.data(message("t3-old-tls"))[0], 250)
            old.quit()
            self.assertTrue(d.store_holds("t3-old-tls"))
        finally:
            d.cleanup(self)


class T4RestartOnly(unittest.TestCase):
    def test_listener_change_needs_restart_rest_applies(self):
        d = Daemon().start()
        try:
            other = free_port()
            d.keys["smtp_listen"] = "127.0.0.1:%d" % other
            d.keys["pid_file"] = d.dir + "/elsewhere.pid"
            d.keys["mydomains"] = "example.org"
            d.write()
            # the admin command reads pid_file from the new file: give it the old one
            p = d.cli("-o", "pid_file=%s/state/portcullisd.pid" % d.dir, "reload")
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("needs a restart: smtp_listen", p.stdout)
            self.assertIn("needs a restart: pid_file", p.stdout)
            text = d.log_text()
            self.assertIn("needs a restart: smtp_listen", text)
            self.assertIn("needs a restart: pid_file", text)
            self.assertIn("%s:%d" % (d.conf, list(d.keys).index("smtp_listen") + 1), text)
            self.assertFalse(port_accepts("127.0.0.1", other))
            self.assertEqual(rcpt_code(d.port, "bob@example.org"), 250)
            self.assertEqual(rcpt_code(d.port, "alice@example.com"), 550)
            self.assertTrue(os.path.exists(d.dir + "/state/portcullisd.pid"))
            self.assertFalse(os.path.exists(d.dir + "/elsewhere.pid"))
            self.assertTrue(d.proc.poll() is None)
        finally:
            d.cleanup(self)


class T5Milter(unittest.TestCase):
    """The milter door behind a real Postfix: the policy swaps in process."""

    def test_postfix_milter_picks_up_policy_no_4xx(self):
        with Lab(milter=True) as lab:
            lab.start_daemon(mydomains="example.com sub.example.com")
            try:
                status = os.path.join(lab.dir, "state", "reload-status")
                relayed = "bob@sub.example.com"       # in mydomains, then not
                c = lab.send(OUTSIDE, "sender@outside.test", relayed,
                             make_message(new_marker("t5a"), to=relayed))
                self.assertEqual(c.step("RCPT").code, 250, c.transcript())
                # a session mid-transaction across the reload
                old = lab.client(OUTSIDE)
                old.connect()
                old.ehlo()
                old.mail("sender@outside.test")
                self.assertEqual(old.rcpt(relayed)[0], 250)
                # steady traffic through the reload: never a 4xx
                stop = threading.Event()
                seen = []

                def traffic():
                    while not stop.is_set():
                        m = new_marker("t5t")
                        t = lab.send(OUTSIDE, "sender@outside.test", "alice@example.com",
                                     make_message(m, to="alice@example.com"))
                        seen.extend(t.steps)
                th = threading.Thread(target=traffic)
                th.start()
                time.sleep(0.5)
                lab.write_daemon_config(mydomains="example.com")
                lab.daemon_proc.send_signal(signal.SIGHUP)
                wait_until(lambda: "generation 1" in read(status),
                           30, what="the reload")
                time.sleep(0.5)
                stop.set()
                th.join(60)
                self.assertIn("result ok", read(status))
                self.assertIn("milter: policy reloaded", read(lab.daemon_log))
                c = lab.send(OUTSIDE, "sender@outside.test", relayed)
                self.assertEqual(c.step("RCPT").code // 100, 5, c.transcript())
                m = new_marker("t5old")
                self.assertEqual(old.data(make_message(m, to=relayed))[0], 250,
                                 old.transcript())
                old.quit()
                lab.wait_for_message(m)
                bad = [s for s in seen if 400 <= s.code < 500 or s.code < 0]
                self.assertEqual(bad, [])
                self.assertGreater(len(seen), 5)
            finally:
                show_lab_if_failing(self, lab)
                lab.stop_daemon()
                self.assertEqual(lab.sanitizer_reports(), [])


    def test_milter_takes_a_new_list_store(self):
        with Lab(milter=True) as lab:
            lab.start_daemon()
            try:
                status = os.path.join(lab.dir, "state", "reload-status")
                other = os.path.join(lab.dir, "other-lists")
                p = subprocess.run([os.path.join(BIN, "portcullis"), "-c", lab.conf, "-o",
                                    "lists=file:" + other, "kill", "add", "127.0.0.9"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   timeout=30)
                self.assertEqual(p.returncode, 0, p.stderr)
                c = lab.send("127.0.0.9", "sender@outside.test", "alice@example.com")
                self.assertEqual(c.step("RCPT").code, 250, c.transcript())
                lab.write_daemon_config(lists="file:" + other)
                lab.daemon_proc.send_signal(signal.SIGHUP)
                wait_until(lambda: "generation 1" in read(status), 30, what="the reload")
                self.assertIn("result ok", read(status))
                self.assertIn("milter: lists now from file:" + other, read(lab.daemon_log))
                c = lab.send("127.0.0.9", "sender@outside.test", "alice@example.com")
                self.assertEqual(c.step("MAIL").code // 100, 5, c.transcript())    # kill-listed
                c = lab.send(OUTSIDE, "sender@outside.test", "alice@example.com")
                self.assertEqual(c.step("RCPT").code, 250, c.transcript())
            finally:
                show_lab_if_failing(self, lab)
                lab.stop_daemon()
                self.assertEqual(lab.sanitizer_reports(), [])


class T6Load(unittest.TestCase):
    SESSIONS = int(os.environ.get("RELOAD_SESSIONS", "50"))
    SECONDS = float(os.environ.get("RELOAD_SECONDS", "10"))

    def test_sighup_every_second_under_load(self):
        d = Daemon(smtp_max_connections=1000, smtp_max_per_client=1000).start()
        try:
            r = run_load(d, self.SESSIONS, self.SECONDS)
            self.assertEqual(r["bad"], [], "refused or dropped transactions")
            self.assertGreater(r["sent"], self.SESSIONS)
            stored = d.store_subjects()
            missing = [m for m in r["markers"] if m not in stored]
            self.assertEqual(missing, [], "acknowledged but not in the store")
            self.assertGreaterEqual(r["reloads"], int(self.SECONDS) - 1)
            text = d.log_text()
            self.assertNotIn("reload refused", text)
            self.assertNotIn("restarting", text)
        finally:
            d.cleanup(self)


class T7PolicyDoor(unittest.TestCase):
    def test_postfix_policy_door_picks_up_change_no_4xx(self):
        from test_postfix_policy import PolicyLab
        with PolicyLab(milter=False, ipv6=False, name="portcullis-reload-policy") as lab:
            lab.start_daemon(services="policy", milter_listen=None,
                             policy_listen="inet:127.0.0.1:%d" % lab.policy_port)
            try:
                status = os.path.join(lab.dir, "state", "reload-status")
                mark = lab.log_mark()
                # null_sender = accept: the door says DUNNO to a bounce ...
                c = lab.send(OUTSIDE, "", "alice@example.com")
                self.assertEqual(c.step("RCPT").code, 250, c.transcript())
                stop = threading.Event()
                seen = []

                def traffic():      # keeps Postfix's policy connections busy
                    while not stop.is_set():
                        m = new_marker("t7")
                        t = lab.send(OUTSIDE, "sender@outside.test", "alice@example.com",
                                     make_message(m, to="alice@example.com"))
                        seen.extend(t.steps)
                th = threading.Thread(target=traffic)
                th.start()
                time.sleep(0.5)
                lab.write_daemon_config(services="policy", milter_listen=None,
                                        policy_listen="inet:127.0.0.1:%d" % lab.policy_port,
                                        null_sender="reject")
                lab.daemon_proc.send_signal(signal.SIGHUP)
                wait_until(lambda: "generation 1" in read(status), 30, what="the reload")
                time.sleep(1.0)
                stop.set()
                th.join(60)
                self.assertIn("result ok", read(status))
                # ... and refuses it after the reload (its own 550)
                c = lab.send(OUTSIDE, "", "alice@example.com")
                self.assertEqual(c.step("RCPT").code, 550, c.transcript())
                bad = [s for s in seen if 400 <= s.code < 500 or s.code < 0]
                self.assertEqual(bad, [])
                self.assertGreater(len(seen), 5)
                warn = [l for l in lab.maillog_since(mark).splitlines() if "warning:" in l]
                self.assertEqual(warn, [], "Postfix warnings across the reload")
                wait_until(lambda: "policy worker" in read(lab.daemon_log) and
                           "drained and exited" in read(lab.daemon_log), 15,
                           what="the old policy worker to exit")
            finally:
                show_lab_if_failing(self, lab)
                lab.stop_daemon()
                self.assertEqual(lab.sanitizer_reports(), [])


class T8Supervise(unittest.TestCase):
    def test_crashed_current_worker_restarts_drained_one_does_not(self):
        d = Daemon().start()
        try:
            old = smtp(d.port)
            old.mail("sender@outside.test")
            self.assertEqual(old.rcpt("alice@example.com")[0], 250)
            d.keys["mydomains"] = "example.org"
            d.write()
            self.assertEqual(d.sighup(), ("ok", ""))
            m = re.search(r"smtp worker \(pid (\d+)\) drains; pid (\d+) serves", d.log_text())
            draining, current = int(m.group(1)), int(m.group(2))
            os.kill(current, signal.SIGKILL)
            wait_until(lambda: "smtp worker (pid %d) killed by signal 9; restarting" % current
                       in d.log_text(), 10, what="the crashed worker to be restarted")
            wait_until(lambda: port_accepts("127.0.0.1", d.port), 10, what="the port")
            self.assertEqual(rcpt_code(d.port, "bob@example.org"), 250, "new settings kept")
            self.assertEqual(old.data(message("t8-old"))[0], 250)
            old.quit()
            wait_until(lambda: "smtp worker (pid %d) drained and exited" % draining
                       in d.log_text(), 15, what="the drained worker to exit")
            time.sleep(1.5)
            self.assertEqual(d.log_text().count("restarting"), 1)
            self.assertTrue(d.store_holds("t8-old"))
        finally:
            d.cleanup(self)


class T9EarlySignals(unittest.TestCase):
    def test_sighup_and_usr1_while_starting_are_kept_for_later(self):
        """`systemctl reload` (or logrotate's SIGUSR1) just after a start used
        to kill the master: both signals' default action is to terminate,
        and they were blocked only once the workers were about to fork.
        Made deterministic: log_file is a FIFO, so the master waits in its
        open() (after binding the listener, before the workers) until we
        read it; both signals arrive then."""
        d = Daemon()
        fifo = os.path.join(d.dir, "log.fifo")
        os.mkfifo(fifo)
        d.keys["log_file"] = fifo
        d.write()
        copy = os.path.join(d.dir, "log_file.txt")

        def drain():                # the FIFO's reader, until the last writer goes
            with open(fifo, "rb") as src, open(copy, "ab") as dst:
                for line in src:
                    dst.write(line)
                    dst.flush()
        reader = threading.Thread(target=drain, daemon=True)
        hdaemon.Daemon.start(d, ready=None)
        try:
            wait_until(lambda: port_accepts("127.0.0.1", d.port) or not d.alive(), 20,
                       what="the listener")
            time.sleep(0.2)         # well inside the open() of the FIFO
            os.kill(d.proc.pid, signal.SIGHUP)
            os.kill(d.proc.pid, signal.SIGUSR1)
            time.sleep(0.2)
            self.assertTrue(d.alive(), "portcullisd died of a signal while starting (exit %s)"
                            % d.proc.poll())
            reader.start()
            d.gen = 1
            wait_until(lambda: (d.status() or (0,))[0] >= 1, 30, what="the reload asked at start")
            self.assertEqual(d.status()[:2], (1, "ok"))
            wait_until(lambda: "reload 1 done" in read(copy), 10, what="the reload in log_file")
            self.assertEqual(rcpt_code(d.port, "alice@example.com"), 250)
        finally:
            if reader.ident is None and d.alive():
                reader.start()      # the master may still wait for a reader
            d.cleanup(self)
            reader.join(10)


def run_load(d, sessions, seconds, reconnect_every=5):
    """sessions threads send messages back to back (a new connection every
    reconnect_every messages) while the master gets SIGHUP every second.
    Returns {sent, bad: [what went wrong], markers, reloads}."""
    stop = threading.Event()
    lock = threading.Lock()
    res = {"sent": 0, "bad": [], "markers": [], "reloads": 0}

    def worker(n):
        src = "127.0.%d.%d" % (2 + n // 250, 1 + n % 250)
        c, k = None, 0
        while not stop.is_set():
            marker = "load-%d-%d-%s" % (n, k, new_marker("x"))
            try:
                if c is None:
                    c = smtp(d.port, source=src)
                code, text = c.mail("sender@outside.test")
                if code != 250:
                    raise RuntimeError("MAIL %d %s" % (code, text))
                code, text = c.rcpt("alice@example.com")
                if code != 250:
                    raise RuntimeError("RCPT %d %s" % (code, text))
                code, text = c.data(message(marker))
                if code != 250:
                    raise RuntimeError("DATA %d %s" % (code, text))
                with lock:
                    res["sent"] += 1
                    res["markers"].append(marker)
                k += 1
                if k % reconnect_every == 0:
                    c.quit()
                    c = None
            except Exception as e:      # refused, dropped, timed out
                with lock:
                    res["bad"].append("session %d message %d: %r" % (n, k, e))
                try:
                    c.close()
                except Exception:
                    pass
                c = None
                k += 1
        if c is not None:
            try:
                c.quit()
            except Exception as e:
                with lock:
                    res["bad"].append("session %d QUIT: %r" % (n, e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        time.sleep(1)
        d.sighup(wait=False)
        res["reloads"] += 1
    stop.set()
    for t in threads:
        t.join(120)
    wait_until(lambda: (d.status() or (0,))[0] >= 1, 60, what="a reload to finish")
    return res


if __name__ == "__main__":
    sys.exit(runner.main())
