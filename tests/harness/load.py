"""The one load generator: N SMTP clients sending verified messages, with
retries, and the Killer that SIGKILLs the worker under that load.

    load = Load(port, messages=2400, clients=8, per_session=20, users=USERS,
                message_for=message_for, marker="dur", deadline=70,
                mail_from="MAIL FROM:<sender@outside.test>", on_ack=record_name)
    threads: load.client(i, count) each; load.stop.set() to end early
    load.tries (every Try), load.logical_acked, .logical_failed, .conn_errors,
    .replies_4xx, .replies_5xx

Each logical message is tried (new marker each time) until it gets a 250,
at most 60 times; a session carries per_session messages, then QUITs.  With
abort > 0 that share of tries is cut off 1-3 octets (or a random amount)
before the end of the final dot and the connection dropped.

Try.outcome: acked (250 at the final dot) / refused (4xx/5xx before 354) /
dotrefused (4xx/5xx at the final dot) / unknown (connection lost after the
final dot was sent) / unsent (lost before) / aborted (cut off on purpose).
"""

import os
import random
import signal
import smtplib
import sys
import threading
import time

from .ports import greets
from .util import proc_children


def stuffed(message):
    """message (str or bytes, CRLF lines) dot-stuffed with its final dot."""
    data = message.encode() if isinstance(message, str) else message
    return b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n"
                    for l in data.split(b"\r\n")[:-1]) + b".\r\n"


class Try:
    __slots__ = ("marker", "rcpts", "message", "outcome", "reply", "name", "at_250", "queued")

    def __init__(self, marker, rcpts, message):
        self.marker = marker
        self.rcpts = rcpts
        self.message = message
        self.outcome = None
        self.reply = None
        self.name = None       # set by on_ack (e.g. the Maildir file name)
        self.at_250 = None
        self.queued = None


class Load:
    def __init__(self, port, *, users, message_for, marker, deadline, per_session=20,
                 mail_from="MAIL FROM:<sender@outside.test>", helo="client.load.test",
                 abort=0.0, seed=0, source_base=20, on_ack=None):
        self.port = port
        self.users = users
        self.message_for = message_for
        self.marker = marker
        self.deadline = deadline
        self.per_session = per_session
        self.mail_from = mail_from
        self.helo = helo
        self.abort = abort
        self.seed = seed
        self.source_base = source_base
        self.on_ack = on_ack        # f(try, reply text) after a 250 at the final dot
        self.lock = threading.Lock()
        self.tries = []
        self.logical_acked = 0
        self.logical_failed = []
        self.conn_errors = 0
        self.replies_4xx = 0
        self.replies_5xx = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self, counts):
        """Start one thread per entry of counts; return them (started)."""
        threads = [threading.Thread(target=self.client, args=(i, n), daemon=True)
                   for i, n in enumerate(counts)]
        self.t0 = time.monotonic()
        for t in threads:
            t.start()
        return threads

    def client(self, idx, count):
        rng = random.Random(self.seed + idx)
        source = "127.0.0.%d" % (self.source_base + idx)
        users = self.users
        s = None
        in_session = 0
        for k in range(count):
            rcpts = list(users) if rng.random() < 0.1 else [users[rng.randrange(2)]]
            for attempt in range(60):
                if self.stop.is_set() or time.monotonic() - self.t0 > self.deadline:
                    with self.lock:
                        self.logical_failed.append("c%d-m%d: gave up (deadline)" % (idx, k))
                    return
                marker = "%s-c%d-m%d-a%d-%s" % (self.marker, idx, k, attempt,
                                                os.urandom(3).hex())
                t = Try(marker, rcpts, self.message_for(marker, rcpts, rng))
                with self.lock:
                    self.tries.append(t)
                if s is None:
                    try:
                        s = smtplib.SMTP("127.0.0.1", self.port, local_hostname=self.helo,
                                         timeout=15, source_address=(source, 0))
                        code, _ = s.ehlo()
                        if code != 250:
                            raise smtplib.SMTPException("EHLO %d" % code)
                        in_session = 0
                    except (OSError, smtplib.SMTPException) as e:
                        t.outcome = "unsent"
                        t.reply = "connection lost at connect: %s" % e
                        with self.lock:
                            self.conn_errors += 1
                        s = self._drop(s)
                        time.sleep(0.05)
                        continue
                cut = None
                if self.abort and rng.random() < self.abort:
                    cut = rng.choice((3, 2, 1, -1))     # octets short of the end; -1: random
                ok = self._transaction(s, t, cut, rng)
                if t.outcome == "acked":
                    in_session += 1
                    with self.lock:
                        self.logical_acked += 1
                    if in_session >= self.per_session:
                        try:
                            s.quit()
                        except (OSError, smtplib.SMTPException):
                            pass
                        s = self._drop(s)
                    break
                if not ok:
                    s = self._drop(s)
                    if t.outcome != "aborted":
                        time.sleep(0.05)
            else:
                with self.lock:
                    self.logical_failed.append("c%d-m%d: no 250 in 60 tries" % (idx, k))
        if s is not None:
            try:
                s.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self._drop(s)

    def _drop(self, s):
        if s is not None:
            try:
                s.close()
            except OSError:
                pass
        return None

    def _transaction(self, s, t, cut, rng):
        """One try on an open session.  Returns False when the session is
        unusable afterwards."""
        sent_all = False
        step = "MAIL"
        try:
            for cmd in [self.mail_from] + ["RCPT TO:<%s>" % r for r in t.rcpts] + ["DATA"]:
                step = cmd[:4]
                code, text = s.docmd(cmd)
                want = 354 if cmd == "DATA" else 250
                if code != want:
                    return self._refused(s, t, code, text, cmd, "refused")
            payload = stuffed(t.message)
            if cut is not None:
                # the final dot never completes: the gateway must not pass it on
                n = len(payload) - cut if cut > 0 else rng.randrange(1, len(payload) - 3)
                t.outcome = "aborted"
                t.reply = "cut off after %d of %d octets" % (n, len(payload))
                s.send(payload[:n])
                return False
            step = "message"
            s.send(payload)
            sent_all = True
            step = "reply to the final dot"
            code, text = s.getreply()
        except (OSError, smtplib.SMTPException) as e:
            if t.outcome != "aborted":
                t.outcome = "unknown" if sent_all else "unsent"
                t.reply = "connection lost at %s: %s" % (step, e)
                with self.lock:
                    self.conn_errors += 1
            return False
        text = text.decode("utf-8", "replace")
        t.reply = "%d %s" % (code, text)
        if code != 250:
            return self._refused(s, t, code, text, "end of data", "dotrefused")
        t.outcome = "acked"
        if self.on_ack:
            self.on_ack(t, text)
        return True

    def _refused(self, s, t, code, text, cmd, outcome):
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        t.outcome = outcome
        t.reply = "%s -> %d %s" % (cmd, code, text)
        with self.lock:
            if code // 100 == 5:
                self.replies_5xx.append("%s: %s" % (t.marker, t.reply))
            else:
                self.replies_4xx += 1
        if code == 421 or code < 0:
            return False
        try:
            s.docmd("RSET")
        except (OSError, smtplib.SMTPException):
            return False
        return True

    def acked(self):
        with self.lock:
            return self.logical_acked


class Killer(threading.Thread):
    """SIGKILLs the master's one worker `kills` times, spaced by the load's
    progress (so every kill lands inside the load); records (old pid, new pid
    or None, seconds until the new worker greets or None) in kills."""

    def __init__(self, master_pid, port, load, messages, kills, log=None):
        super().__init__(daemon=True)
        self.master = master_pid
        self.port = port
        self.load = load
        self.messages = messages
        self.nkills = kills
        self.log = log or (lambda m: sys.stdout.write(m + "\n"))
        self.kills = []
        self.error = None

    def run(self):
        try:
            self._run()
        except Exception as e:       # reported by the checks
            self.error = repr(e)

    def _run(self):
        per_kill = max(1, self.messages // (self.nkills + 1))
        for i in range(self.nkills):
            while self.load.acked() < per_kill * (i + 1) * 0.8:
                if self.load.stop.is_set() or time.monotonic() - self.load.t0 > self.load.deadline:
                    return
                time.sleep(0.02)
            kids = proc_children(self.master)
            if len(kids) != 1:
                self.kills.append((kids, None, None))
                continue
            old = kids[0]
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            new, took = None, None
            while time.monotonic() - t0 < 5:
                kids = [k for k in proc_children(self.master) if k != old]
                if kids and new is None:
                    new = kids[0]
                if new is not None and greets(self.port):
                    took = time.monotonic() - t0
                    break
                time.sleep(0.01)
            self.kills.append((old, new, took))
            self.log("kill %d: worker %d SIGKILLed at %.1fs (%d acked); new worker %s greets "
                     "after %s" % (i + 1, old, t0 - self.load.t0, self.load.acked(), new,
                                   "%.3fs" % took if took is not None else "NEVER (5 s)"))


class Checks:
    """A scripted test's list of checks: "ok"/"FAIL" lines and the counts for
    the last line."""

    def __init__(self, log=None):
        self.passed = 0
        self.failed = 0
        self.log = log or (lambda m: sys.stdout.write(m + "\n"))

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            self.log("ok   %s" % what)
        else:
            self.failed += 1
            self.log("FAIL %s%s" % (what, ("\n      " + detail.replace("\n", "\n      "))
                                    if detail else ""))

    def report(self, t_start):
        """The scripted test's last lines: its time, then "N passed, N failed";
        returns the exit status."""
        print("%.1fs" % (time.monotonic() - t_start))
        print("%d passed, %d failed" % (self.passed, self.failed), flush=True)
        return 1 if self.failed else 0
