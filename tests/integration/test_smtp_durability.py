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
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness.daemon import SANITIZER_RE, SMTP_GATEWAY, Daemon, missing  # noqa: E402
from harness.load import Checks, Killer, Load  # noqa: E402
from harness.ports import greets  # noqa: E402

HELO = "client.durability.test"
USERS = ("alice@example.com", "bob@example.com")
RESTART_LIMIT = 2.0        # seconds from SIGKILL to a greeting from the new worker
DEADLINE = 70.0            # seconds for the whole load, at most


def log(msg):
    sys.stdout.write("durability: %s\n" % msg)
    sys.stdout.flush()


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


def maildir_ack(maildir):
    """on_ack for the load: the file name from "250 2.0.0 Ok: NAME" and
    whether new/NAME was there (per recipient) when the 250 arrived."""
    def newdir(rcpt):
        local, domain = rcpt.split("@")
        return os.path.join(maildir, domain, local, "Maildir", "new")

    def on_ack(t, text):
        m = re.match(r"2\.0\.0 Ok: (\S+)$", text)
        t.name = m.group(1) if m else None
        if t.name:
            t.at_250 = [os.path.exists(os.path.join(newdir(r), t.name)) for r in t.rcpts]
    return on_ack


# ------------------------------------------------------------------ checks
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
    if missing():
        print("%s missing: run make first" % " ".join(missing()), file=sys.stderr)
        print("0 passed, 1 failed")
        return 1

    t_start = time.monotonic()
    d = Daemon("durability", SMTP_GATEWAY, myhostname="mx.durability.test",
               relay_networks="127.0.0.2", users="file:{dir}/users",
               delivery="maildir:{dir}/mail", smtp_max_per_client=50, smtp_timeout=30,
               log_level="info")
    work, port = d.dir, d.port
    maildir = os.path.join(work, "mail")
    for u in USERS:
        p = d.cli("user", "add", u, "--password-stdin", input="pw-%s\n" % u, check=False)
        if p.returncode != 0:
            print("user add %s: %s" % (u, p.stderr), file=sys.stderr)
            print("0 passed, 1 failed")
            d.close()
            return 1

    C = Checks(log)
    load = None
    try:
        d.start(ready=lambda: greets(port))
        daemon = d.proc
        log("gateway on 127.0.0.1:%d, master %d, worker %s; %d messages, %d clients, "
            "%d kills" % (port, daemon.pid, d.workers(), args.messages,
                          args.clients, args.kills))

        load = Load(port, users=USERS, message_for=message_for, marker="dur",
                    deadline=DEADLINE, per_session=args.per_session, helo=HELO,
                    mail_from="MAIL FROM:<sender@outside.test>", on_ack=maildir_ack(maildir))
        killer = Killer(daemon.pid, port, load, args.messages, args.kills, log)
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
        rc = d.stop(10)[0]
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
        text = d.log_text()
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
        d.stop(10)
        if os.environ.get("KEEP_LAB") == "1" or C.failed:
            log("kept %s" % work)
        d.close(keep=bool(C.failed))
    return C.report(t_start)


if __name__ == "__main__":
    sys.exit(main())
