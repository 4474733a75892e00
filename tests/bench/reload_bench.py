#!/usr/bin/env python3
"""A live reload under load (not in CI, not in `make bench`): the SMTP
gateway (delivery = maildir) serves --sessions concurrent sessions, each
sending messages back to back (MAIL, RCPT, DATA; a new connection every
--reconnect-every messages), while the master gets SIGHUP every second for
--seconds.  Counts what a reload must never cause:

    refused   a transaction answered anything but 250 (a 4xx, a 5xx)
    dropped   a connection closed or reset under a client, a timeout
    missing   a message acknowledged with 250 but not in the store (new/)

Target (issue 9): 0 refused, 0 dropped, 0 missing, with 200 sessions and
30 reloads.  Prints the counts, messages/s and reloads done; exits 1 when
any count is not 0.  The load generator and the daemon wrapper are
tests/integration/test_reload.py's (run_load, Daemon).

    python3 tests/bench/reload_bench.py [--sessions 200] [--seconds 30]
Env: PORTCULLIS_BIN (default bin/, the release build), KEEP_LAB=1.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import test_reload  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--reconnect-every", type=int, default=5,
                    help="messages per connection (default 5)")
    a = ap.parse_args()

    class Case:     # Daemon.cleanup() asserts through a TestCase-like object
        def assertEqual(self, x, y, msg=None):
            if x != y:
                raise AssertionError("%s: %r != %r" % (msg, x, y))

    d = test_reload.Daemon(smtp_max_connections=4 * a.sessions,
                           smtp_max_per_client=4 * a.sessions, log_level="warn").start()
    try:
        t0 = time.monotonic()
        r = test_reload.run_load(d, a.sessions, a.seconds, a.reconnect_every)
        took = time.monotonic() - t0
        stored = d.store_subjects()
        missing = [m for m in r["markers"] if m not in stored]
        dropped = [b for b in r["bad"] if "Disconnected" in b or "Timeout" in b or
                   "Reset" in b or "Broken" in b or "timed out" in b]
        refused = [b for b in r["bad"] if b not in dropped]
        st = d.status()
        print("reload bench: %d sessions, %d SIGHUPs over %.0f s (last reload: %s), "
              "%d messages (%.0f/s)" % (a.sessions, r["reloads"], a.seconds,
                                        st[1] if st else "none", r["sent"], r["sent"] / took))
        print("refused %d, dropped %d, missing from the store %d" % (
            len(refused), len(dropped), len(missing)))
        for b in (refused + dropped)[:10]:
            print("  " + b)
        log = d.log_text()
        print("log: %d 'reload refused', %d worker restarts" % (
            log.count("reload refused"), log.count("restarting")))
        ok = not refused and not dropped and not missing and "reload refused" not in log
    finally:
        d.cleanup(Case())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
