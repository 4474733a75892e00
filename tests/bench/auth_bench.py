#!/usr/bin/env python3
"""SMTP AUTH logins per second: SCRAM-SHA-256 against PLAIN, same machine,
same daemon (in `make bench` as --seconds 2 --repeats 2; not in CI).

Each login is a session of its own: connect, EHLO, AUTH, QUIT (one AUTH a
session is all SMTP allows), over plain TCP (auth_allow_plaintext = yes) so
that the TLS handshake does not drown the mechanism's cost. --threads
clients log in back to back for --seconds per mechanism, PLAIN and SCRAM
interleaved --repeats times; medians printed. The SCRAM client caches its
salted password per salt, as RFC 5802 section 5.1 allows clients to, so the
figure is the server's cost (PLAIN: one yescrypt on the auth pool; SCRAM:
two round trips and a few HMACs on the loop) and not python's PBKDF2.
Every login must succeed: a refusal fails the bench.

Needs bin/portcullisd and bin/portcullis (PORTCULLIS_BIN to point elsewhere).
Run:  python3 tests/bench/auth_bench.py [--seconds 5] [--threads 8] [--repeats 3]
"""
import argparse
import base64
import hashlib
import hmac
import os
import smtplib
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import test_smtp_tls_auth as tls  # noqa: E402  (work area, daemon launcher)

USER = tls.USER
PASSWORD = tls.PASSWORD
_salted = {}
_lock = threading.Lock()


def b64(b):
    return base64.b64encode(b).decode()


def login_plain(s):
    code, _ = s.docmd("AUTH", "PLAIN " + b64(("\0%s\0%s" % (USER, PASSWORD)).encode()))
    return code == 235


def login_scram(s):
    cnonce = b64(os.urandom(18))
    first_bare = "n=%s,r=%s" % (USER, cnonce)
    code, resp = s.docmd("AUTH", "SCRAM-SHA-256 " + b64(("n,," + first_bare).encode()))
    if code != 334:
        return False
    sf = base64.b64decode(resp).decode()
    f = dict(kv.split("=", 1) for kv in sf.split(","))
    key = (f["s"], f["i"])
    with _lock:
        salted = _salted.get(key)
    if salted is None:
        salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), base64.b64decode(f["s"]),
                                     int(f["i"]))
        with _lock:
            _salted[key] = salted
    ckey = hmac.new(salted, b"Client Key", "sha256").digest()
    stored = hashlib.sha256(ckey).digest()
    without_proof = "c=biws,r=" + f["r"]
    am = ("%s,%s,%s" % (first_bare, sf, without_proof)).encode()
    proof = bytes(a ^ b for a, b in zip(ckey, hmac.new(stored, am, "sha256").digest()))
    code, resp = s.docmd(b64((without_proof + ",p=" + b64(proof)).encode()))
    if code != 334:
        return False
    code, _ = s.docmd("")
    return code == 235


def run(port, mech, seconds, threads):
    fn = {"PLAIN": login_plain, "SCRAM-SHA-256": login_scram}[mech]
    counts, failures = [0] * threads, []
    stop = time.monotonic() + seconds

    def worker(k):
        while time.monotonic() < stop:
            try:
                s = smtplib.SMTP("127.0.0.1", port, local_hostname="bench.test", timeout=10)
                s.ehlo("bench.test")
                ok = fn(s)
                s.docmd("QUIT")
                s.close()
            except (OSError, smtplib.SMTPException) as e:
                failures.append(repr(e))
                return
            if not ok:
                failures.append("%s refused" % mech)
                return
            counts[k] += 1
    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if failures:
        raise SystemExit("auth_bench: %s: %s" % (mech, failures[:3]))
    return sum(counts) / (time.monotonic() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    w = tls.Work()
    tls.W = w
    try:
        d = tls.Daemon(w, "authbench", smtp_listen="auto", auth_allow_plaintext="yes",
                       log_level="warn", auth_failure_ban="0")
        w.add_user(d.conf, USER, PASSWORD)
        d.start()
        port = d.ports["smtp"]
        run(port, "PLAIN", 0.5, 2)              # warm-up
        run(port, "SCRAM-SHA-256", 0.5, 2)
        res = {"PLAIN": [], "SCRAM-SHA-256": []}
        for _ in range(a.repeats):
            for m in res:
                res[m].append(run(port, m, a.seconds, a.threads))
        print("SMTP AUTH logins/s (one login a session, %d clients, %.0f s x %d, median):" % (
            a.threads, a.seconds, a.repeats))
        for m, v in res.items():
            print("  %-16s %8.0f   (runs: %s)" % (m, statistics.median(v),
                                                 ", ".join("%.0f" % x for x in v)))
        print("  %-16s %8.2f" % ("SCRAM / PLAIN", statistics.median(res["SCRAM-SHA-256"]) /
                                 statistics.median(res["PLAIN"])))
        d.stop()
    finally:
        w.close()


if __name__ == "__main__":
    main()
