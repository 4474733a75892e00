#!/usr/bin/python3
"""Durability of the SMTP gateway's Maildir delivery while its smtp worker is
SIGKILLed under load.

The gateway (services = smtp, delivery = maildir:DIR) takes a load of
--messages logical messages from --clients concurrent python smtplib clients
(threads, each from its own 127.0.0.N, several messages per session, some
messages for two recipients).  Meanwhile the smtp WORKER process (the
master's child) is killed with SIGKILL --kills times, spaced out.  Clients
retry a message after a connection error or a 4xx, each try with its own
marker (so a try the gateway finished but could not answer shows up as its
own file, never as a "duplicate" of another try).

Asserted:
  - the master restarts the worker each time, within 2 s: a new worker pid
    and a new connection that gets the 220 greeting;
  - every try that got 250 is, at the moment of the 250, in new/ under the
    name the reply gave, and at the end is in every recipient's new/ exactly
    once and whole (byte for byte the message sent, after the gateway's own
    header lines);
  - a try that got a 4xx/5xx, or whose message was not completely sent, is
    nowhere; a try whose connection died after the final dot is in new/ at
    most once per recipient and whole (reported);
  - no file in new/ is partial or unknown; cur/ is empty; files in tmp/ are
    allowed (left by a killed delivery) and reported;
  - every logical message got 250 eventually; the daemon log shows one
    "killed by signal 9; restarting" per kill and no sanitizer report.

Run:  python3 tests/integration/test_smtp_durability.py [--messages 2400]
          [--clients 8] [--kills 4] [--per-session 20]
Environment: PORTCULLIS_BIN (default <repo>/bin), KEEP_LAB=1 keeps the work
directory.  Last line "N passed, N failed"; exit status 1 on failure.
"""

import argparse
import hashlib
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import lab  # noqa: E402  (helpers only)

BIN = lab.BIN
HELO = "client.durability.test"
USERS = ("alice@example.com", "bob@example.com")
SANITIZER_RE = lab.SANITIZER_RE
RESTART_LIMIT = 2.0        # seconds from SIGKILL to a greeting from the new worker
DEADLINE = 70.0            # seconds for the whole load, at most


def log(msg):
    sys.stdout.write("durability: %s\n" % msg)
    sys.stdout.flush()


# ------------------------------------------------------------------ processes
def children(pid):
    """live (non-zombie) child pids of pid, from /proc/*/stat"""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                rest = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if rest[0] != "Z" and int(rest[1]) == pid:
            out.append(int(d))
    return out


def greets(port, timeout=0.5):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout) as s:
            return s.recv(64).startswith(b"220")
    except OSError:
        return False


def stop_daemon(p):
    """SIGTERM the master (SIGKILL after 10 s); SIGKILL a worker that
    outlived it.  Returns the master's exit status."""
    if p.poll() is not None:
        return p.returncode
    kids = children(p.pid)
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
    deadline = time.monotonic() + 2
    for k in kids:
        while time.monotonic() < deadline and os.path.exists("/proc/%d" % k):
            time.sleep(0.02)
        try:
            with open("/proc/%d/cmdline" % k, "rb") as f:
                if b"portcullisd" in f.read():
                    log("worker %d outlived its master; SIGKILL" % k)
                    os.kill(k, signal.SIGKILL)
        except OSError:
            pass
    return p.returncode


# ------------------------------------------------------------------ messages
def message_for(marker, rcpts, rng):
    """A message of random size (0.3 - 150 KB; the biggest are spooled to tmp/
    as they arrive) whose every byte follows from marker, with lines that need
    dot-stuffing and a last line END-<marker>."""
    size = rng.choice((300, 800, 2000, 5000, 12000, 40000, 150000))
    h = ["From: Sender <sender@outside.test>", "To: %s" % ", ".join(rcpts),
         "Subject: durability %s" % marker, "Message-ID: <%s@durability.test>" % marker,
         "Date: Mon, 01 Jan 2024 00:00:00 +0000"]
    body, n, i = [], 0, 0
    while n < size:
        d = hashlib.sha256(("%s/%d" % (marker, i)).encode()).hexdigest()
        line = (".%s" % d) if i % 7 == 3 else ("%d %s %s" % (i, marker, d))
        body.append(line)
        n += len(line) + 2
        i += 1
    return "\r\n".join(h + [""] + body + ["END-%s" % marker]) + "\r\n"


def stuffed(message):
    data = message.encode()
    return b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n"
                    for l in data.split(b"\r\n")[:-1]) + b".\r\n"


# ------------------------------------------------------------------ the load
class Try:
    __slots__ = ("marker", "rcpts", "message", "outcome", "reply", "name", "at_250")

    def __init__(self, marker, rcpts, message):
        self.marker = marker
        self.rcpts = rcpts
        self.message = message
        self.outcome = None    # acked / refused / unknown / unsent
        self.reply = None
        self.name = None       # the Maildir file name from "250 2.0.0 Ok: NAME"
        self.at_250 = None     # was new/NAME there when 250 arrived (per rcpt)


class Load:
    def __init__(self, port, maildir, args):
        self.port = port
        self.maildir = maildir
        self.args = args
        self.lock = threading.Lock()
        self.tries = []
        self.logical_acked = 0
        self.logical_failed = []
        self.conn_errors = 0
        self.replies_4xx = 0
        self.replies_5xx = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def newdir(self, rcpt):
        local, domain = rcpt.split("@")
        return os.path.join(self.maildir, domain, local, "Maildir", "new")

    def client(self, idx, count):
        rng = random.Random(idx)
        source = "127.0.0.%d" % (20 + idx)
        s = None
        in_session = 0
        for k in range(count):
            rcpts = list(USERS) if rng.random() < 0.1 else [USERS[rng.randrange(2)]]
            for attempt in range(60):
                if self.stop.is_set() or time.monotonic() - self.t0 > DEADLINE:
                    with self.lock:
                        self.logical_failed.append("c%d-m%d: gave up (deadline)" % (idx, k))
                    return
                marker = "dur-c%d-m%d-a%d-%s" % (idx, k, attempt, os.urandom(3).hex())
                t = Try(marker, rcpts, message_for(marker, rcpts, rng))
                with self.lock:
                    self.tries.append(t)
                if s is None:
                    try:
                        s = smtplib.SMTP("127.0.0.1", self.port, local_hostname=HELO,
                                         timeout=15, source_address=(source, 0))
                        code, _ = s.ehlo()
                        if code != 250:
                            raise smtplib.SMTPException("EHLO %d" % code)
                        in_session = 0
                    except (OSError, smtplib.SMTPException):
                        t.outcome = "unsent"
                        s = self._drop(s)
                        time.sleep(0.05)
                        continue
                ok = self._transaction(s, t)
                if t.outcome == "acked":
                    in_session += 1
                    with self.lock:
                        self.logical_acked += 1
                    if in_session >= self.args.per_session:
                        try:
                            s.quit()
                        except (OSError, smtplib.SMTPException):
                            pass
                        s = self._drop(s)
                    break
                if not ok:
                    s = self._drop(s)
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

    def _transaction(self, s, t):
        """One try on an open session.  Returns False when the session is
        unusable afterwards."""
        sent_all = False
        try:
            for cmd in ["MAIL FROM:<sender@outside.test>"] + [
                    "RCPT TO:<%s>" % r for r in t.rcpts] + ["DATA"]:
                code, text = s.docmd(cmd)
                want = 354 if cmd == "DATA" else 250
                if code != want:
                    return self._refused(s, t, code, text, cmd)
            s.send(stuffed(t.message))
            sent_all = True
            code, text = s.getreply()
        except (OSError, smtplib.SMTPException):
            t.outcome = "unknown" if sent_all else "unsent"
            with self.lock:
                self.conn_errors += 1
            return False
        text = text.decode("utf-8", "replace")
        t.reply = "%d %s" % (code, text)
        if code != 250:
            return self._refused(s, t, code, text, "end of data")
        t.outcome = "acked"
        m = re.match(r"2\.0\.0 Ok: (\S+)$", text)
        t.name = m.group(1) if m else None
        if t.name:
            t.at_250 = [os.path.exists(os.path.join(self.newdir(r), t.name)) for r in t.rcpts]
        return True

    def _refused(self, s, t, code, text, cmd):
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        t.outcome = "refused"
        t.reply = "%s -> %d %s" % (cmd, code, text)
        with self.lock:
            if code // 100 == 5:
                self.replies_5xx.append(t.reply)
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


# ------------------------------------------------------------------ killer
class Killer(threading.Thread):
    def __init__(self, master_pid, port, load, args):
        super().__init__(daemon=True)
        self.master = master_pid
        self.port = port
        self.load = load
        self.args = args
        self.kills = []        # (old pid, new pid or None, seconds to greeting or None)
        self.error = None

    def run(self):
        try:
            self._run()
        except Exception as e:       # reported by the checks
            self.error = repr(e)

    def _run(self):
        per_kill = max(1, self.args.messages // (self.args.kills + 1))
        for i in range(self.args.kills):
            # spaced by progress, so every kill lands inside the load
            while self.load.acked() < per_kill * (i + 1) * 0.8:
                if self.load.stop.is_set() or time.monotonic() - self.load.t0 > DEADLINE:
                    return
                time.sleep(0.02)
            kids = children(self.master)
            if len(kids) != 1:
                self.kills.append((kids, None, None))
                continue
            old = kids[0]
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            new, took = None, None
            while time.monotonic() - t0 < 5:
                kids = [k for k in children(self.master) if k != old]
                if kids and new is None:
                    new = kids[0]
                if new is not None and greets(self.port):
                    took = time.monotonic() - t0
                    break
                time.sleep(0.01)
            self.kills.append((old, new, took))
            log("kill %d: worker %d SIGKILLed at %.1fs (%d acked); new worker %s greets "
                "after %s" % (i + 1, old, t0 - self.load.t0, self.load.acked(), new,
                              "%.3fs" % took if took is not None else "NEVER (5 s)"))


# ------------------------------------------------------------------ checks
class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            log("ok   %s" % what)
        else:
            self.failed += 1
            log("FAIL %s%s" % (what, ("\n      " + detail.replace("\n", "\n      "))
                               if detail else ""))


def scan_maildirs(maildir):
    """{(user, marker): [(name, bytes)]}, unknown files, tmp count, cur count"""
    found, unknown, ntmp, ncur = {}, [], 0, 0
    for user in USERS:
        local, domain = user.split("@")
        base = os.path.join(maildir, domain, local, "Maildir")
        for sub in ("new", "tmp", "cur"):
            d = os.path.join(base, sub)
            names = os.listdir(d) if os.path.isdir(d) else []
            if sub == "tmp":
                ntmp += len(names)
                continue
            if sub == "cur":
                ncur += len(names)
                continue
            for n in names:
                with open(os.path.join(d, n), "rb") as f:
                    data = f.read()
                m = re.search(rb"^Message-ID: <(dur-[^@>]+)@durability\.test>", data, re.M)
                if not m:
                    unknown.append((user, n, len(data)))
                    continue
                found.setdefault((user, m.group(1).decode()), []).append((n, data))
    return found, unknown, ntmp, ncur


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2400)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--kills", type=int, default=4)
    ap.add_argument("--per-session", type=int, default=20)
    args = ap.parse_args()
    for exe in ("portcullisd", "portcullis"):
        if not os.access(os.path.join(BIN, exe), os.X_OK):
            print("%s/%s missing: run make first" % (BIN, exe), file=sys.stderr)
            print("0 passed, 1 failed")
            return 1

    t_start = time.monotonic()
    work = tempfile.mkdtemp(prefix="portcullis-durability.", dir="/tmp")
    os.chmod(work, 0o755)
    maildir = os.path.join(work, "mail")
    conf = os.path.join(work, "portcullis.conf")
    dlog = os.path.join(work, "portcullisd.log")
    port = lab.free_port()
    with open(conf, "w") as f:
        f.write("# written by test_smtp_durability.py\n"
                "services = smtp\n"
                "smtp_listen = 127.0.0.1:%d\n"
                "myhostname = mx.durability.test\n"
                "mydomains = example.com\n"
                "relay_networks = 127.0.0.2\n"
                "state_dir = %s/state\n"
                "users = file:%s/users\n"
                "delivery = maildir:%s\n"
                "smtp_max_per_client = 50\n"
                "smtp_timeout = 30\n"
                "log_level = info\n" % (port, work, work, maildir))
    for u in USERS:
        p = subprocess.run([os.path.join(BIN, "portcullis"), "-c", conf, "user", "add", u,
                            "--password-stdin"], input="pw-%s\n" % u, text=True,
                           capture_output=True, timeout=30)
        if p.returncode != 0:
            print("user add %s: %s" % (u, p.stderr), file=sys.stderr)
            print("0 passed, 1 failed")
            return 1

    C = Checks()
    fh = open(dlog, "ab")
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    daemon = subprocess.Popen([os.path.join(BIN, "portcullisd"), "-c", conf, "-f"],
                              stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=env)
    fh.close()
    load = None
    try:
        lab.wait_until(lambda: daemon.poll() is not None or greets(port), 10,
                       what="portcullisd greeting")
        if daemon.poll() is not None:
            raise RuntimeError("portcullisd exited %s:\n%s" % (daemon.returncode,
                                                               lab._tail(dlog)))
        log("gateway on 127.0.0.1:%d, master %d, worker %s; %d messages, %d clients, "
            "%d kills" % (port, daemon.pid, children(daemon.pid), args.messages,
                          args.clients, args.kills))

        load = Load(port, maildir, args)
        killer = Killer(daemon.pid, port, load, args)
        per = [args.messages // args.clients + (1 if i < args.messages % args.clients else 0)
               for i in range(args.clients)]
        threads = [threading.Thread(target=load.client, args=(i, per[i]), daemon=True)
                   for i in range(args.clients)]
        load.t0 = time.monotonic()
        killer.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(1.0, DEADLINE + 20 - (time.monotonic() - load.t0)))
        hung = [i for i, t in enumerate(threads) if t.is_alive()]
        load.stop.set()
        killer.join(10)
        t_load = time.monotonic() - load.t0

        tries = list(load.tries)
        by = {}
        for t in tries:
            by.setdefault(t.outcome, []).append(t)
        log("load done in %.1fs: %d logical messages acked of %d (%.0f msg/s); %d tries: "
            "%d acked, %d refused (4xx %d, 5xx %d), %d unknown (connection lost after the "
            "dot), %d unsent; %d connection errors" % (
                t_load, load.logical_acked, args.messages, load.logical_acked / t_load,
                len(tries), len(by.get("acked", [])), len(by.get("refused", [])),
                load.replies_4xx, len(load.replies_5xx), len(by.get("unknown", [])),
                len(by.get("unsent", [])), load.conn_errors))

        # ---- restarts
        C.check(killer.error is None, "killer thread ran", killer.error or "")
        C.check(len(killer.kills) == args.kills,
                "%d kills done during the load" % args.kills,
                "done: %r (the load ended before all kills?)" % (killer.kills,))
        for i, (old, new, took) in enumerate(killer.kills):
            C.check(new is not None and took is not None and took <= RESTART_LIMIT,
                    "kill %d: worker restarted and greeting within %.0fs (%s)" % (
                        i + 1, RESTART_LIMIT, "%.3fs" % took if took is not None else "never"),
                    "old %r new %r" % (old, new))

        # ---- load
        C.check(not hung, "all client threads finished", "hung: %r" % hung)
        C.check(load.logical_acked == args.messages and not load.logical_failed,
                "every logical message got 250 in the end (%d/%d)" % (
                    load.logical_acked, args.messages), "\n".join(load.logical_failed[:10]))
        C.check(not load.replies_5xx, "no 5xx reply to a valid message",
                "\n".join(load.replies_5xx[:10]))
        C.check(load.conn_errors > 0, "the kills hit transactions in flight "
                "(%d connection errors seen by clients)" % load.conn_errors,
                "no client noticed a kill: the test proved nothing")

        # ---- the mailboxes (after the daemon stopped: nothing moves)
        rc = stop_daemon(daemon)
        C.check(rc == 0, "portcullisd exit 0 on SIGTERM after the load (got %s)" % rc)

        found, unknown, ntmp, ncur = scan_maildirs(maildir)
        nfiles = sum(len(v) for v in found.values()) + len(unknown)
        log("Maildir: %d files in new/, %d in tmp/ (allowed: killed deliveries), %d in cur/"
            % (nfiles, ntmp, ncur))
        C.check(not unknown, "no unknown or header-less file in new/",
                "\n".join("%s %s (%d bytes)" % u for u in unknown[:10]))
        C.check(ncur == 0, "cur/ is empty")

        known = {t.marker: t for t in tries}
        stray = [(u, m) for (u, m) in found if m not in known or u not in known[m].rcpts]
        C.check(not stray, "every file in new/ is a try sent to that user",
                "\n".join("%s %s" % s for s in stray[:10]))

        bad_acked, partial, bad_other, not_at_250 = [], [], [], []
        unknown_delivered = 0
        for t in tries:
            want = t.message.encode()
            for u in t.rcpts:
                copies = found.get((u, t.marker), [])
                for n, data in copies:
                    if not data.endswith(want) or len(data) < len(want):
                        partial.append("%s in %s: %s, %d bytes, want ...%d bytes" % (
                            t.marker, u, n, len(data), len(want)))
                if t.outcome == "acked":
                    if len(copies) != 1:
                        bad_acked.append("%s (%s) in %s: %d copies [%s]" % (
                            t.marker, t.reply, u, len(copies), " ".join(n for n, _ in copies)))
                    elif t.name is not None and copies[0][0] != t.name:
                        bad_acked.append("%s in %s: file %s, the 250 said %s" % (
                            t.marker, u, copies[0][0], t.name))
                elif t.outcome == "unknown":
                    if len(copies) > 1:
                        bad_other.append("%s (connection lost after dot) in %s: %d copies" % (
                            t.marker, u, len(copies)))
                    unknown_delivered += len(copies)
                else:
                    if copies:
                        bad_other.append("%s (%s: %s) in %s: %d copies" % (
                            t.marker, t.outcome, t.reply, u, len(copies)))
            if t.outcome == "acked":
                if t.name is None:
                    not_at_250.append("%s: 250 without a file name: %s" % (t.marker, t.reply))
                elif not all(t.at_250):
                    not_at_250.append("%s: %s not in new/ of %s when 250 came" % (
                        t.marker, t.name, [u for u, a in zip(t.rcpts, t.at_250) if not a]))
        n_acked = len(by.get("acked", []))
        C.check(not not_at_250, "each of the %d acked tries was in new/ at the moment of "
                "its 250" % n_acked, "\n".join(not_at_250[:10]))
        C.check(not bad_acked, "each acked try is in new/ of each recipient exactly once",
                "%d bad:\n%s" % (len(bad_acked), "\n".join(bad_acked[:10])))
        C.check(not partial, "no partial file in new/ (every file is the whole message)",
                "%d partial:\n%s" % (len(partial), "\n".join(partial[:10])))
        C.check(not bad_other, "refused / unsent tries are nowhere; unanswered ones at most "
                "once", "\n".join(bad_other[:10]))
        log("tries whose connection died after the final dot: %d; delivered anyway "
            "(duplicates a real client would create by retrying): %d" % (
                len(by.get("unknown", [])), unknown_delivered))

        # ---- the log
        text = lab._read(dlog)
        restarts = len(re.findall(r"worker \(pid \d+\) killed by signal 9; restarting", text))
        C.check(restarts == len(killer.kills), "daemon log: %d \"killed by signal 9; "
                "restarting\" lines for %d kills" % (restarts, len(killer.kills)))
        san = [l for l in text.splitlines() if SANITIZER_RE.search(l)]
        C.check(not san, "no sanitizer report in the daemon log", "\n".join(san[:20]))
    except Exception as e:
        C.check(False, "test ran to the end", repr(e))
    finally:
        if load is not None:
            load.stop.set()
        stop_daemon(daemon)
        if os.environ.get("KEEP_LAB") == "1" or C.failed:
            log("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("%.1fs" % (time.monotonic() - t_start))
    print("%d passed, %d failed" % (C.passed, C.failed), flush=True)
    return 1 if C.failed else 0


if __name__ == "__main__":
    sys.exit(main())
