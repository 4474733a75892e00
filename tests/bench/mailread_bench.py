#!/usr/bin/env python3
"""Reading mail: Portcullis' IMAP and POP3 doors against Dovecot on the same
Maildir store, in the same run (part of `make bench`, not of CI).

One store, filled once (Maildir++ files written straight into cur/, named
with ,S= and ,W= as the gateway writes them):

    many@example.com    --messages messages of about 3 KB (ENVELOPE-rich headers)
    big@example.com     --big-count messages of --big-kb KB
    pop@example.com     --pop-count messages of about 4 KB
    idle@example.com    empty; the SMTP gateway delivers into it
    scram@example.com   a user whose Dovecot passdb entry is the SCRAM-SHA-256
                        keys from Portcullis' users file

Both servers read the same users (Portcullis' users file: {CRYPT} yescrypt
hashes and {SCRAM-SHA-256} keys, Dovecot's passwd-file format) and the same
files. Dovecot runs first on each step, so it pays for building its index
(its first SELECT is printed apart, "cold"). Measured, per server:

    logins/s      PLAIN over implicit TLS (LOGIN ... LOGOUT, --procs client
                  processes for --seconds), and SCRAM-SHA-256 (AUTHENTICATE)
    select        SELECT of the --messages folder (median of 5, warm; and cold)
    fetch         UID FETCH 1:* (FLAGS ENVELOPE) on it (median of 3)
    fetch MB/s    every big message, BODY.PEEK[] whole
    retr          POP3 RETR of the --pop-count messages (one session)
    idle          IDLE latency: the SMTP gateway's 250 -> "* N EXISTS", p50/p99
                  over --idle-samples deliveries
    memory        --conns idle connections logged in and SELECTed (the empty
                  INBOX, before the other steps): the growth of the servers'
                  PSS (all their processes) per connection

Targets (issue 11): at least Dovecot's throughput on each; IDLE p99 <= 100 ms;
<= 64 KiB per idle IMAP connection.

    python3 tests/bench/mailread_bench.py [--messages 10000] [--seconds 3]
        [--procs 4] [--conns 200] [--idle-samples 50] [--only portcullis|dovecot]
        [--steps memory,select,fetch,body,retr,logins,idle] [--interleave N]

--steps runs only the measures named (default: all of them), e.g.
`--steps body --messages 10` for the full-message fetch alone (a quick run
on a shared machine).

--interleave N (with --steps body and no --only): instead of the table, N
rounds of one BODY[] fetch from each server, both running, alternated so that
a change of load hits both; prints each server's median MB/s and the median
of the per-round ratios (the fairer figure on a shared machine).

Environment: PORTCULLIS_BIN (default <repo>/bin). Needs dovecot-imapd and
dovecot-pop3d. Everything it starts is stopped at exit.
"""

import argparse
import base64
import hashlib
import hmac
import imaplib
import multiprocessing
import os
import poplib
import re
import shutil
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import daemon as hdaemon  # noqa: E402
from harness import dovecot as hdovecot  # noqa: E402
from harness.ports import free_port  # noqa: E402
from harness.util import pss_kib  # noqa: E402

PASSWORD = "bench-pw-1"
HOST = "127.0.0.1"
USERS = ("many@example.com", "big@example.com", "pop@example.com", "idle@example.com",
         "scram@example.com")


def log(msg):
    sys.stderr.write("bench: %s\n" % msg)
    sys.stderr.flush()


# ----------------------------------------------------------------- the store
def message(i, body_bytes, to):
    head = ("Return-Path: <sender%d@example.org>\r\n"
            "Received: from client.example.org ([127.0.0.1]) by mx.example.com\r\n"
            "Date: Mon, 7 Dec 2026 10:%02d:%02d +0000\r\n"
            "From: \"Sender %d\" <sender%d@example.org>\r\n"
            "To: \"Reader\" <%s>\r\n"
            "Cc: other%d@example.net\r\n"
            "Subject: =?UTF-8?Q?Message_n=C2=B0_%d?= about things\r\n"
            "Message-ID: <bench.%d@example.org>\r\n"
            "In-Reply-To: <bench.%d@example.org>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "\r\n") % (i, i // 60 % 60, i % 60, i, i, to, i, i, i, max(0, i - 1))
    line = ("line of message %d, the quick brown fox jumps over the lazy dog\r\n" % i)
    body = (line * (body_bytes // len(line) + 1))[:body_bytes]
    body = body[:body.rfind("\r\n") + 2] if "\r\n" in body else "\r\n"
    return (head + body).encode()


def fill(store, user, n, body_bytes):
    local, domain = user.split("@")
    md = os.path.join(store, domain, local, "Maildir")
    for d in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(md, d), exist_ok=True)
    t = int(time.time()) - n
    for i in range(n):
        data = message(i, body_bytes, user)
        name = "%d.M%dP%d.bench,S=%d,W=%d:2,%s" % (t + i, i, os.getpid(), len(data), len(data),
                                                   "S" if i % 3 else "")
        with open(os.path.join(md, "cur", name), "wb") as f:
            f.write(data)


def users_file_entries(path):
    """{user: (crypt_hash, scram_keys)} from Portcullis' users file"""
    out = {}
    with open(path) as f:
        for line in f:
            fields = line.rstrip("\n").split(":")
            if len(fields) < 2 or not fields[0]:
                continue
            extra = fields[7] if len(fields) > 7 else ""
            m = re.search(r"scram_sha_256=(\S+)", extra)
            out[fields[0]] = (fields[1], m.group(1) if m else None)
    return out


# ------------------------------------------------------------------ clients
def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def scram_authenticator(user, password):
    """imaplib authobject for SCRAM-SHA-256 (RFC 5802/7677), client side"""
    nonce = base64.b64encode(os.urandom(18)).decode()
    state = {"step": 0}
    first_bare = "n=%s,r=%s" % (user.replace("=", "=3D").replace(",", "=2C"), nonce)

    def auth(challenge):
        if state["step"] == 0:
            state["step"] = 1
            return ("n,," + first_bare).encode()
        if state["step"] == 1:
            state["step"] = 2
            server_first = challenge.decode()
            attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
            salt = base64.b64decode(attrs["s"])
            salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(attrs["i"]))
            client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
            stored = hashlib.sha256(client_key).digest()
            final_wo = "c=biws,r=%s" % attrs["r"]
            msg = ",".join((first_bare, server_first, final_wo)).encode()
            sig = hmac.new(stored, msg, hashlib.sha256).digest()
            proof = bytes(a ^ b for a, b in zip(client_key, sig))
            return (final_wo + ",p=" + base64.b64encode(proof).decode()).encode()
        return b""
    return auth


def login_loop(kind, port, user, seconds, q):
    """one client process: logins until the time is up; puts the count"""
    n, end = 0, time.monotonic() + seconds
    ctx = tls_context()
    while time.monotonic() < end:
        try:
            # imaplib writes a continuation and its CRLF apart: without
            # TCP_NODELAY each waits for the server's delayed ACK (~40 ms)
            if kind == "plain-tls":
                c = imaplib.IMAP4_SSL(HOST, port, ssl_context=ctx, timeout=30)
                c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c.login(user, PASSWORD)
            else:
                c = imaplib.IMAP4(HOST, port, timeout=30)
                c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c.authenticate("SCRAM-SHA-256", scram_authenticator(user, PASSWORD))
            c.logout()
            n += 1
        except Exception as e:       # a refused login is a bench failure
            q.put(("error", repr(e)))
            return
    q.put(("ok", n))


def logins_per_second(kind, port, user, seconds, procs):
    q = multiprocessing.Queue()
    ps = [multiprocessing.Process(target=login_loop, args=(kind, port, user, seconds, q))
          for _ in range(procs)]
    t0 = time.monotonic()
    for p in ps:
        p.start()
    total, errors = 0, []
    for _ in ps:
        what, v = q.get(timeout=seconds + 120)
        if what == "ok":
            total += v
        else:
            errors.append(v)
    for p in ps:
        p.join()
    took = time.monotonic() - t0
    if errors:
        raise RuntimeError("%s logins failed: %s" % (kind, errors[0]))
    return total / took


def imap(port, user):
    c = imaplib.IMAP4(HOST, port, timeout=120)
    c.login(user, PASSWORD)
    return c


def timed(fn):
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def select_times(port, user, n=5):
    out = []
    for _ in range(n):
        c = imap(port, user)
        out.append(timed(lambda: c.select("INBOX", readonly=True)))
        c.logout()
    return out


def fetch_envelope(port, user, expect, n=3):
    out = []
    for _ in range(n):
        c = imap(port, user)
        c.select("INBOX", readonly=True)
        res = {}

        def go():
            typ, data = c.uid("FETCH", "1:*", "(FLAGS ENVELOPE)")
            res["n"] = sum(1 for d in data if isinstance(d, bytes) and b"ENVELOPE" in d)
        out.append(timed(go))
        c.logout()
        if res["n"] != expect:
            raise RuntimeError("FETCH ENVELOPE: %d of %d messages" % (res["n"], expect))
    return out


def fetch_whole(port, user, expect_bytes):
    c = imap(port, user)
    c.select("INBOX", readonly=True)
    got = {"b": 0}

    def go():
        typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[])")
        got["b"] = sum(len(d[1]) for d in data if isinstance(d, tuple))
    t = timed(go)
    c.logout()
    if got["b"] != expect_bytes:
        raise RuntimeError("BODY[]: %d of %d bytes" % (got["b"], expect_bytes))
    return expect_bytes / t / 1e6


def interleaved(pc, pc_port, dc, expect_bytes, rounds):
    """rounds of one BODY[] fetch from each server (which goes first
    alternates): medians and the median per-round ratio"""
    dc.start()
    md = os.path.join(dc.store, "example.com", "big", "Maildir")

    def give_back():
        """Portcullis (root here) rewrites the uidlist 0600: hand the
        store back to Dovecot's user before its turn, outside the timing"""
        if os.getuid() == 0:
            for d, dirs, files in os.walk(md):
                for n in dirs + files:
                    os.lchown(os.path.join(d, n), dc.uid, dc.gid)
    # warm both, Dovecot first, as in the table's run (it builds its index)
    fetch_whole(dc.imap_port, "big@example.com", expect_bytes)
    fetch_whole(pc_port, "big@example.com", expect_bytes)
    give_back()
    ours, theirs = [], []
    for i in range(rounds):
        pair = [("p", pc_port), ("d", dc.imap_port)]
        if i % 2:
            pair.reverse()
        for who, port in pair:
            if who == "d":
                give_back()
            (ours if who == "p" else theirs).append(fetch_whole(port, "big@example.com",
                                                                expect_bytes))
    ratios = [a / b for a, b in zip(ours, theirs)]
    print("BODY[] fetch, %d interleaved rounds, load %.2f: Portcullis median %.0f MB/s "
          "(%.0f-%.0f), Dovecot %.0f (%.0f-%.0f); ratio median %.2f (%.2f-%.2f)" % (
              rounds, os.getloadavg()[0], statistics.median(ours), min(ours), max(ours),
              statistics.median(theirs), min(theirs), max(theirs),
              statistics.median(ratios), min(ratios), max(ratios)))
    return 0


def pop3_retr(port, user, expect):
    p = poplib.POP3(HOST, port, timeout=120)
    p.user(user)
    p.pass_(PASSWORD)
    count, _size = p.stat()
    if count != expect:
        raise RuntimeError("POP3 STAT: %d of %d" % (count, expect))

    def go():
        for i in range(1, count + 1):
            p.retr(i)
    t = timed(go)
    p.quit()
    return t


def idle_latencies(port, smtp_port, samples):
    """deliver through the SMTP gateway while a client IDLEs on the INBOX"""
    c = imap(port, "idle@example.com")
    typ, data = c.select("INBOX")
    exists = int(data[0])
    sock = c.socket()
    out = []
    for i in range(samples):
        tag = c._new_tag().decode()
        c.send(("%s IDLE\r\n" % tag).encode())
        line = c.readline()
        if not line.startswith(b"+"):
            raise RuntimeError("IDLE: %r" % line)
        s = smtplib.SMTP(HOST, smtp_port, timeout=30)
        s.ehlo("client.example.org")
        s.mail("sender@example.org")
        s.rcpt("idle@example.com")
        s.putcmd("data")
        s.getreply()
        s.send(message(100000 + i, 500, "idle@example.com") + b".\r\n")
        code, _ = s.getreply()
        t250 = time.monotonic()
        if code != 250:
            raise RuntimeError("delivery: %d" % code)
        sock.settimeout(10)
        while True:
            line = c.readline()
            if not line:
                raise RuntimeError("IDLE: connection closed")
            if re.match(rb"\* \d+ EXISTS", line):
                out.append(time.monotonic() - t250)
                break
        s.quit()
        c.send(b"DONE\r\n")
        while True:
            line = c.readline()
            if line.startswith(tag.encode()):
                break
        exists += 1
    c.logout()
    return out


def memory_per_connection(port, pids_fn, conns):
    before = pss_kib(pids_fn())
    held = []
    for _ in range(conns):
        c = imap(port, "idle@example.com")
        c.select("INBOX")
        held.append(c)
    time.sleep(1)
    after = pss_kib(pids_fn())
    for c in held:
        try:
            c.logout()
        except Exception:
            pass
    return (after - before) / conns


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


# -------------------------------------------------------------------- main
STEPS = ("memory", "select", "fetch", "body", "retr", "logins", "idle")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--big-count", type=int, default=20)
    ap.add_argument("--big-kb", type=int, default=1024)
    ap.add_argument("--pop-count", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--conns", type=int, default=200)
    ap.add_argument("--idle-samples", type=int, default=50)
    ap.add_argument("--only", choices=("portcullis", "dovecot"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--interleave", type=int, default=0,
                    help="with --steps body: N alternated fetches from each server")
    ap.add_argument("--steps", default=",".join(STEPS),
                    help="comma-separated measures to run (default: all): " + ",".join(STEPS))
    args = ap.parse_args()
    steps = set(s.strip() for s in args.steps.split(",") if s.strip())
    if not steps or steps - set(STEPS):
        ap.error("--steps: choose among " + ",".join(STEPS))

    if not hdovecot.installed(("imap", "pop3")):
        print("mailread_bench: needs dovecot-imapd and dovecot-pop3d", file=sys.stderr)
        return 1
    work = tempfile.mkdtemp(prefix="portcullis-mailread.", dir="/tmp")
    os.chmod(work, 0o755)
    store = os.path.join(work, "store")
    os.makedirs(store)
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=mail.example.com"],
                   check=True, capture_output=True)
    log("filling the store in %s" % store)
    fill(store, "many@example.com", args.messages, 2400)
    fill(store, "big@example.com", args.big_count, args.big_kb * 1024)
    fill(store, "pop@example.com", args.pop_count, 3600)
    fill(store, "idle@example.com", 0, 0)
    big_bytes = sum(len(message(i, args.big_kb * 1024, "big@example.com"))
                    for i in range(args.big_count))

    ports = {k: free_port() for k in ("smtp", "imap", "imaps", "pop3", "pop3s")}
    doors = () if args.only == "dovecot" else (   # (--only dovecot: the SMTP door alone)
        ("imap_listen", "127.0.0.1:%d" % ports["imap"]),
        ("imaps_listen", "127.0.0.1:%d" % ports["imaps"]),
        ("pop3_listen", "127.0.0.1:%d" % ports["pop3"]),
        ("pop3s_listen", "127.0.0.1:%d" % ports["pop3s"]),
        ("mail_max_userip_connections", "10000"),
        # every client of the bench is 127.0.0.1: the doors' per-address caps
        # (imap 50, pop3 20 by default) would refuse the memory step's --conns
        ("imap_max_connections", "20000"),
        ("imap_max_per_client", "20000"),
        ("pop3_max_connections", "1000"),
        ("pop3_max_per_client", "1000"))
    os.makedirs(os.path.join(work, "portcullis"))
    pc = hdaemon.Daemon("mailread", (
        ("services", "smtp" if args.only == "dovecot" else "smtp imap pop3"),
        ("smtp_listen", "127.0.0.1:%d" % ports["smtp"]),
    ) + doors + (
        ("myhostname", "mx.example.com"),
        ("mydomains", "example.com"),
        ("delivery", "maildir:%s" % store),
        ("users", "file:{dir}/users"),
        ("state_dir", "{dir}/state"),
        ("tls_cert_file", cert),
        ("tls_key_file", key),
        ("auth_mechanisms", "PLAIN LOGIN SCRAM-SHA-256"),
        ("auth_allow_plaintext", "yes"),
        ("auth_failure_delay", "0"),
        ("auth_failure_ban", "0"),
        ("smtp_max_connections", "5000"),
        ("log_level", "warn"),
    ), dir=os.path.join(work, "portcullis"),
        port=ports["smtp" if args.only == "dovecot" else "imap"])
    pc.write_config()
    for u in USERS:
        pc.cli("user", "add", u, "--password-stdin", input=PASSWORD + "\n")
    entries = users_file_entries(pc.path("users"))
    dc_users = {u: h for u, (h, _s) in entries.items() if u != "scram@example.com"}
    dc_users["scram@example.com"] = entries["scram@example.com"][1]
    dc = hdovecot.Dovecot(work, store=store, protocols=("imap", "pop3"), users=dc_users,
                          tls=(cert, key), mechanisms="plain login scram-sha-256",
                          extra_conf="mail_max_userip_connections = 10000\n"
                                     "service imap-login {\n  process_limit = 1000\n}\n"
                                     "service imap {\n  process_limit = 1000\n}\n"
                                     "default_client_limit = 2000\n"
                                     "auth_failure_delay = 0\n")
    if "memory" not in steps:
        # the memory step gives the filled folders time to age; without it,
        # wait so that neither server takes the just-written directories for
        # ones still changing (both rescan a directory changed within a second)
        time.sleep(2)
    results = {}
    servers = [("dovecot", dc), ("portcullis", pc)]
    if args.only:
        servers = [s for s in servers if s[0] == args.only]
    try:
        # the SMTP door delivers for the IDLE step of both servers
        pc.start()
        if args.interleave:
            if steps != {"body"} or args.only:
                ap.error("--interleave: with --steps body and both servers")
            return interleaved(pc, ports["imap"], dc, big_bytes, args.interleave)
        for name, srv in servers:
            if name == "dovecot":
                srv.start()
                p = {"imap": srv.imap_port, "imaps": srv.imaps_port, "pop3": srv.pop3_port}
                pids = srv.pids
            else:
                p = ports
                pids = lambda: [pc.proc.pid] + pc.workers()  # noqa: E731
            r = results[name] = {}
            # first: after the FETCH steps a worker's heap has megabytes freed,
            # which 200 sessions reuse without growing (3 KiB/conn measured so)
            if "memory" in steps:
                log("%s: memory per idle connection" % name)
                r["mem_kib"] = memory_per_connection(p["imap"], pids, args.conns)
            if "select" in steps:
                log("%s: SELECT" % name)
                r["select_cold"] = select_times(p["imap"], "many@example.com", 1)[0]
                r["select"] = statistics.median(select_times(p["imap"], "many@example.com"))
            if "fetch" in steps:
                log("%s: FETCH (FLAGS ENVELOPE)" % name)
                r["fetch_env"] = statistics.median(fetch_envelope(p["imap"], "many@example.com",
                                                                  args.messages))
            if "body" in steps:
                log("%s: FETCH BODY.PEEK[]" % name)
                r["fetch_mbs"] = statistics.median(fetch_whole(p["imap"], "big@example.com",
                                                               big_bytes) for _ in range(3))
            if "retr" in steps:
                log("%s: POP3 RETR" % name)
                r["retr"] = pop3_retr(p["pop3"], "pop@example.com", args.pop_count)
            if "logins" in steps:
                log("%s: logins" % name)
                r["login_plain_tls"] = logins_per_second("plain-tls", p["imaps"],
                                                         "many@example.com", args.seconds,
                                                         args.procs)
                r["login_scram"] = logins_per_second("scram", p["imap"], "scram@example.com",
                                                     args.seconds, args.procs)
            if "idle" in steps:
                log("%s: IDLE" % name)
                lat = idle_latencies(p["imap"], ports["smtp"], args.idle_samples)
                r["idle_p50"], r["idle_p99"] = pct(lat, 50) * 1000, pct(lat, 99) * 1000
            if name == "dovecot":
                srv.stop()
    finally:
        dc.close()
        pc.stop()
        if args.keep:
            log("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    rows = (
        ("logins/s, PLAIN over TLS", "login_plain_tls", "%.0f", 1),
        ("logins/s, SCRAM-SHA-256", "login_scram", "%.0f", 1),
        ("SELECT %d msgs, ms (warm)" % args.messages, "select", "%.1f", -1000),
        ("SELECT, ms (first, cold)", "select_cold", "%.1f", -1000),
        ("UID FETCH 1:* (FLAGS ENVELOPE), ms", "fetch_env", "%.0f", -1000),
        ("BODY[] fetch, MB/s", "fetch_mbs", "%.1f", 1),
        ("POP3 RETR %d msgs, ms" % args.pop_count, "retr", "%.0f", -1000),
        ("IDLE 250 -> EXISTS p50, ms", "idle_p50", "%.1f", -1),
        ("IDLE 250 -> EXISTS p99, ms", "idle_p99", "%.1f", -1),
        ("memory per idle IMAP conn, KiB", "mem_kib", "%.1f", -1),
    )
    print("Reading mail: Portcullis vs Dovecot %s on the same Maildir (%d CPUs)" % (
        subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout.split()[0],
        os.cpu_count()))
    print("  %-36s %12s %12s %8s" % ("", "portcullis", "dovecot", "ratio"))
    for label, k, fmt, sense in rows:
        a = results.get("portcullis", {}).get(k)
        b = results.get("dovecot", {}).get(k)
        scale = abs(sense) if abs(sense) != 1 else 1
        fa = fmt % (a * scale) if a is not None else "-"
        fb = fmt % (b * scale) if b is not None else "-"
        ratio = "-"
        if a and b:
            ratio = "%.2f" % ((a / b) if sense > 0 else (b / a))
        print("  %-36s %12s %12s %8s" % (label, fa, fb, ratio))
    print("  (ratio > 1: Portcullis better; times and memory as dovecot/portcullis)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
