#!/usr/bin/python3
"""Durability of the SMTP gateway's pass-through delivery while its smtp worker
is SIGKILLed under load.

The gateway (services = smtp, delivery = relay:[127.0.0.1]:SINKPORT) takes a
load of --messages logical messages from --clients concurrent python smtplib
clients (threads, each from its own 127.0.0.N, several messages per session,
some messages for two recipients, 8-bit text and lines that need
dot-stuffing).  The downstream is the harness's recording SMTP server
(harness.fakesmtp; the "sink": threads on 127.0.0.1, EHLO offers PIPELINING and 8BITMIME): on DATA
it reads up to the final dot, records the complete message (de-dot-stuffed)
under the marker it carries, then (after --sink-delay, a real MTA's fsync)
answers "250 2.0.0 queued as <n>"; a session that ends before the final dot
records nothing (the marker of the partial message is noted).  Meanwhile the
smtp WORKER process is killed with SIGKILL --kills times, spaced out.  Clients
retry a message after a connection error or a 4xx, each try with its own
marker; a few tries (--abort) are cut off by the client itself before the
final dot is complete (the stream ends in "<CR><LF>", "<CR><LF>." or
"<CR><LF>.<CR>", or at a random point) and the connection is closed, then
the message is retried.

Asserted:
  - the master restarts the worker each time, within 2 s: a new worker pid
    and a new connection that gets the 220 greeting;
  - every try that got 250 at its final dot is at the sink exactly once,
    whole (byte for byte the message sent, after the gateway's own Received:
    line), with its envelope, and the "queued as <n>" of its 250 names that
    very record (the client's 250 is the sink's answer to this message);
  - a try whose client had not sent its complete message (final dot not
    sent, sending failed, cut off on purpose, refused before 354) is not at
    the sink;
  - a try that got a 4xx/5xx at its final dot, or whose connection died
    after the final dot without a reply, is at the sink at most once and
    whole (reported: the documented duplicate window);
  - nothing at the sink has an unknown or no marker; no transfer the sink
    saw broken off belongs to a try that got 250;
  - every logical message got 250 eventually; the daemon log shows one
    "killed by signal 9; restarting" per kill and no sanitizer report.

Run:  python3 tests/integration/test_smtp_passthrough_durability.py
          [--messages 2000] [--clients 8] [--kills 4] [--per-session 20]
          [--abort 0.01] [--sink-delay 0.005]
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
from harness.fakesmtp import FakeSMTP, unstuff  # noqa: E402
from harness.load import Checks, Killer, Load  # noqa: E402
from harness.ports import greets  # noqa: E402

HELO = "client.passthrough.test"
MYHOSTNAME = "mx.passthrough.test"
SENDER = "sender@outside.test"
USERS = ("alice@example.com", "bob@example.com")
RESTART_LIMIT = 2.0        # seconds from SIGKILL to a greeting from the new worker
DEADLINE = 22.0            # seconds for the whole load, at most
MARKER_RE = re.compile(rb"pt-c\d+-m\d+-a\d+-[0-9a-f]{6}")


def log(msg):
    sys.stdout.write("passthrough: %s\n" % msg)
    sys.stdout.flush()


# ------------------------------------------------------------------ the sink
class Sink:
    """The recording downstream (a harness FakeSMTP).  records: [dict(n,
    marker, markers, data, sender, rcpts, session)]; partials: [(marker or
    None, octets, session)]; errors: anything but a connection error in a
    session thread (the FakeSMTP's)."""

    def __init__(self, delay=0.0):
        self.delay = delay        # between recording a message and its 250 (a real MTA's fsync)
        self.records = []
        self.partials = []
        self.down = FakeSMTP({
            "greet": b"220 sink.passthrough.test ESMTP\r\n",
            "ehlo": b"250-sink.passthrough.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            "helo": b"250 sink.passthrough.test\r\n",
            "bulk": True, "final": self._message, "on_partial": self._partial}, backlog=256)
        self.port = self.down.port
        self.lock = self.down.lock
        self.errors = self.down.errors

    @property
    def sessions(self):
        return len(self.down.sessions)

    @property
    def open(self):
        return len(self.down.open_sessions())

    def _partial(self, rec, txn):
        raw = bytes(txn["raw"])
        m = MARKER_RE.search(raw)
        with self.lock:
            self.partials.append((m.group(0).decode() if m else None, len(raw), rec["id"]))

    def _message(self, rec, txn):
        data = unstuff(bytes(txn["raw"]))
        markers = sorted(set(x.decode() for x in MARKER_RE.findall(data)))
        m = re.search(rb"^Message-ID: <(pt-[^@>]+)@passthrough\.test>", data, re.M)
        with self.lock:
            n = len(self.records) + 1
            self.records.append({
                "n": n, "marker": m.group(1).decode() if m else None,
                "markers": markers, "data": data, "sender": txn["sender"],
                "rcpts": list(txn["rcpts"]), "session": rec["id"]})
        if self.delay:
            time.sleep(self.delay)
        return b"250 2.0.0 queued as %d\r\n" % n

    def stop(self):
        self.down.stop()


# ------------------------------------------------------------------ messages
def message_for(marker, rcpts, rng):
    """A message of random size (0.3 - 40 KB; one in 20 is 150 KB, which the
    gateway streams downstream before the client's final dot) whose every
    byte follows from marker, with 8-bit lines, lines that need dot-stuffing
    and a last line END-<marker>."""
    size = rng.choice((300, 800, 2000, 5000, 12000, 40000))
    if rng.random() < 0.05:
        size = 150000
    h = ["From: Sender <%s>" % SENDER, "To: %s" % ", ".join(rcpts),
         "Subject: passthrough %s" % marker, "Message-ID: <%s@passthrough.test>" % marker,
         "Date: Mon, 01 Jan 2024 00:00:00 +0000", "MIME-Version: 1.0",
         "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
    body, n, i = [], 0, 0
    while n < size:
        d = hashlib.sha256(("%s/%d" % (marker, i)).encode()).hexdigest()
        if i % 7 == 3:
            line = ".%s" % d
        elif i % 11 == 5:
            line = "..%s ." % d[:20]
        elif i % 5 == 1:
            line = "%d Grüße, naïve café ✓ %s" % (i, d[:32])
        else:
            line = "%d %s %s" % (i, marker, d)
        body.append(line)
        n += len(line) + 2
        i += 1
    return ("\r\n".join(h + [""] + body + ["END-%s" % marker]) + "\r\n").encode("utf-8")


GATEWAY_HEAD_RE = re.compile(rb"\A(?:Received: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)+\Z")


def whole(data, want):
    """data is want behind the gateway's own Received: line(s)"""
    if len(data) < len(want) or not data.endswith(want):
        return False
    head = data[:len(data) - len(want)]
    return bool(GATEWAY_HEAD_RE.match(head)) and (b"by %s" % MYHOSTNAME.encode()) in head


# ------------------------------------------------------------------ the load
def queued_ack(t, text):
    """on_ack for the load: n from "250 2.0.0 queued as <n>"."""
    m = re.match(r"2\.0\.0 queued as (\d+)$", text)
    t.queued = int(m.group(1)) if m else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--kills", type=int, default=4)
    ap.add_argument("--per-session", type=int, default=20)
    ap.add_argument("--abort", type=float, default=0.01,
                    help="share of tries the client cuts off before the final dot")
    ap.add_argument("--sink-delay", type=float, default=0.005,
                    help="seconds the sink takes between recording a message and its 250")
    args = ap.parse_args()
    if missing(("portcullisd",)):
        print("%s missing: run make first" % " ".join(missing(("portcullisd",))),
              file=sys.stderr)
        print("0 passed, 1 failed")
        return 1

    t_start = time.monotonic()
    sink = Sink(args.sink_delay)
    d = Daemon("passthrough", SMTP_GATEWAY, myhostname=MYHOSTNAME,
               relay_networks="127.0.0.0/8", relay_require_headers="",
               delivery="relay:[127.0.0.1]:%d" % sink.port, smtp_max_per_client=50,
               smtp_timeout=30, log_level="info")
    work, port = d.dir, d.port

    C = Checks(log)
    load = None
    try:
        d.start(ready=lambda: greets(port))
        daemon = d.proc
        log("gateway on 127.0.0.1:%d -> sink 127.0.0.1:%d, master %d, worker %s; "
            "%d messages, %d clients, %d kills" % (
                port, sink.port, daemon.pid, d.workers(), args.messages,
                args.clients, args.kills))

        load = Load(port, users=USERS, message_for=message_for, marker="pt",
                    deadline=DEADLINE, per_session=args.per_session, helo=HELO,
                    mail_from="MAIL FROM:<%s> BODY=8BITMIME" % SENDER, abort=args.abort,
                    seed=1000, on_ack=queued_ack)
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
            t.join(max(1.0, DEADLINE + 5 - (time.monotonic() - load.t0)))
        hung = [i for i, t in enumerate(threads) if t.is_alive()]
        load.stop.set()
        killer.join(10)
        t_load = time.monotonic() - load.t0

        tries = list(load.tries)
        by = {}
        for t in tries:
            by.setdefault(t.outcome, []).append(t)
        nby = {k: len(v) for k, v in by.items()}
        lost = {}
        for t in by.get("unsent", []) + by.get("unknown", []):
            w = re.match(r"connection lost at (.*?):", t.reply or "")
            w = w.group(1) if w else "?"
            lost[w] = lost.get(w, 0) + 1
        log("load done in %.1fs: %d logical messages acked of %d (%.0f msg/s); %d tries: "
            "%d acked, %d refused before 354, %d refused at the dot, %d unknown (connection "
            "lost after the dot), %d unsent, %d cut off on purpose; 4xx %d, 5xx %d; %d "
            "connection errors" % (
                t_load, load.logical_acked, args.messages, load.logical_acked / t_load,
                len(tries), nby.get("acked", 0), nby.get("refused", 0),
                nby.get("dotrefused", 0), nby.get("unknown", 0), nby.get("unsent", 0),
                nby.get("aborted", 0), load.replies_4xx, len(load.replies_5xx),
                load.conn_errors))
        log("connections lost at: %s" % (", ".join("%s %d" % kv for kv in sorted(lost.items()))
                                         or "nothing"))

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

        # ---- the sink (after the daemon stopped: nothing moves)
        rc = d.stop(10)[0]
        C.check(rc == 0, "portcullisd exit 0 on SIGTERM after the load (got %s)" % rc)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and sink.open:
            time.sleep(0.02)
        with sink.lock:
            records = list(sink.records)
            partials = list(sink.partials)
            sink_errors = list(sink.errors)
            still_open = sink.open
        log("sink: %d sessions, %d messages recorded, %d transfers broken off before the "
            "final dot (%d with a marker, %d octets at most), %d sessions still open" % (
                sink.sessions, len(records), len(partials),
                sum(1 for m, _, _ in partials if m), max([n for _, n, _ in partials] or [0]),
                still_open))
        C.check(not sink_errors, "the sink ran without errors", "\n".join(sink_errors[:10]))

        known = {t.marker: t for t in tries}
        at_sink = {}
        strange = []
        for r in records:
            if r["marker"] is None or r["marker"] not in known or r["markers"] != [r["marker"]]:
                strange.append("#%d marker %r, markers in it %r, %d bytes" % (
                    r["n"], r["marker"], r["markers"][:4], len(r["data"])))
                continue
            at_sink.setdefault(r["marker"], []).append(r)
        C.check(not strange, "every message at the sink carries exactly one marker, of a "
                "try a client made", "%d unknown:\n%s" % (len(strange), "\n".join(strange[:10])))

        bad_acked, bad_whole, bad_env, bad_never, bad_window = [], [], [], [], []
        window_sent, window_at_sink = 0, 0
        for t in tries:
            copies = at_sink.get(t.marker, [])
            for r in copies:
                if not whole(r["data"], t.message):
                    bad_whole.append("%s (%s) #%d: %d bytes, want a Received: line + %d "
                                     "bytes; head %r" % (
                                         t.marker, t.outcome, r["n"], len(r["data"]),
                                         len(t.message), r["data"][:120]))
                if r["sender"] != SENDER or r["rcpts"] != t.rcpts:
                    bad_env.append("%s #%d: MAIL <%s> RCPT %r, sent MAIL <%s> RCPT %r" % (
                        t.marker, r["n"], r["sender"], r["rcpts"], SENDER, t.rcpts))
            if t.outcome == "acked":
                if len(copies) != 1:
                    bad_acked.append("%s (%s): %d copies at the sink %s" % (
                        t.marker, t.reply, len(copies), [r["n"] for r in copies]))
                elif t.queued != copies[0]["n"]:
                    bad_acked.append("%s: the client's 250 was %r, the sink recorded it as "
                                     "#%d" % (t.marker, t.reply, copies[0]["n"]))
            elif t.outcome in ("dotrefused", "unknown"):
                window_sent += 1
                window_at_sink += len(copies)
                if len(copies) > 1:
                    bad_window.append("%s (%s: %s): %d copies at the sink" % (
                        t.marker, t.outcome, t.reply, len(copies)))
            elif copies:
                bad_never.append("%s (%s: %s): %d copies at the sink %s" % (
                    t.marker, t.outcome, t.reply, len(copies), [r["n"] for r in copies]))
        n_acked = nby.get("acked", 0)
        C.check(not bad_acked, "each of the %d tries that got 250 is at the sink exactly once, "
                "as the record its 250 named" % n_acked,
                "%d bad:\n%s" % (len(bad_acked), "\n".join(bad_acked[:10])))
        C.check(not bad_whole, "every message at the sink is whole: byte for byte the one "
                "sent, behind the gateway's Received: line",
                "%d not:\n%s" % (len(bad_whole), "\n".join(bad_whole[:10])))
        C.check(not bad_env, "every message at the sink has its envelope (MAIL, RCPTs)",
                "%d not:\n%s" % (len(bad_env), "\n".join(bad_env[:10])))
        n_never = sum(nby.get(k, 0) for k in ("unsent", "aborted", "refused"))
        C.check(not bad_never, "none of the %d tries not completely sent (%d cut off on "
                "purpose) is at the sink" % (n_never, nby.get("aborted", 0)),
                "%d at the sink:\n%s" % (len(bad_never), "\n".join(bad_never[:10])))
        C.check(not bad_window, "each of the %d tries refused at the dot or unanswered after "
                "it is at the sink at most once" % window_sent, "\n".join(bad_window[:10]))
        acked_markers = {t.marker for t in by.get("acked", [])}
        bad_partial = ["%s: %d octets, sink session %d" % p for p in partials
                       if p[0] in acked_markers or (p[0] is not None and p[0] not in known)]
        C.check(not bad_partial, "no broken-off transfer at the sink belongs to a try that "
                "got 250 or to no try", "\n".join(bad_partial[:10]))
        dup_markers = sum(1 for v in at_sink.values() if len(v) > 1)

        # ---- the log
        text = d.log_text()
        restarts = len(re.findall(r"worker \(pid \d+\) killed by signal 9; restarting", text))
        C.check(restarts == len(killer.kills), "daemon log: %d \"killed by signal 9; "
                "restarting\" lines for %d kills" % (restarts, len(killer.kills)))
        san = [l for l in text.splitlines() if SANITIZER_RE.search(l)]
        C.check(not san, "no sanitizer report in the daemon log", "\n".join(san[:20]))

        log("summary: %d tries, %d got 250, %d 4xx (%d at the dot), %d died after the dot, "
            "%d recorded at the sink, %d duplicates (sent but unconfirmed tries at the sink: "
            "a retrying client's duplicates), %d markers recorded twice" % (
                len(tries), n_acked, load.replies_4xx, nby.get("dotrefused", 0),
                nby.get("unknown", 0), len(records), window_at_sink, dup_markers))
    except Exception as e:
        C.check(False, "test ran to the end", repr(e))
    finally:
        if load is not None:
            load.stop.set()
        d.stop(10)
        sink.stop()
        if os.environ.get("KEEP_LAB") == "1" or C.failed:
            log("kept %s" % work)
        d.close(keep=bool(C.failed))
    return C.report(t_start)


if __name__ == "__main__":
    sys.exit(main())
