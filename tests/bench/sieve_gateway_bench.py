#!/usr/bin/env python3
"""Gateway Maildir throughput with Sieve scripts against none (issue 10,
"Measured"; not in CI).

Two gateways (services = smtp, delivery = maildir:, log_level = warn), fed by
smtp-source (N messages of --size body bytes, one per session, --sessions in
parallel, a@example.org -> user@example.com; both gateways deliver into one
store, into that one Maildir, so both create their files in the same
directory and block group):

    none    no script anywhere
    sieve   sieve_dir holding server.sieve, domains/example.com.sieve and
            users/user@example.com.sieve, 100 rules each (header :contains,
            address :domain, envelope :is, header :matches, size :over,
            exists, header :regex, none matching: every rule runs; actions:
            server reject, domain quarantine/discard, user fileinto and
            flags), then the implicit keep: the message lands in the INBOX
            as without

run interleaved (none sieve, sieve none, ...) --repeats times, each after
a sync(2); each run has an untimed warm-up and must deliver exactly N (files in new/). Prints the
medians and the median of the pairs' sieve / none ratios; target >= 0.9; and
the gateway's CPU per message, user + system and user alone (the scripts'
cost with less of the machine's I/O weather in it).

Where the scripts run: the server and domain levels (reject, quarantine,
discard: the door's actions) at the final dot (smtp_sieve.c), the user
level at delivery (smtp_deliver_sieve.c); the server and domain levels run
again at delivery only when they act on the store (imap4flags, vacation,
fileinto), which these do not. The user level takes the message as the door
parsed it in the same job (not read from the spool again) and looks at the
user's script file at most once a second.

    python3 tests/bench/sieve_gateway_bench.py [--messages 5000] [--sessions 20]
        [--size 1024] [--warmup 200] [--repeats 4] [--levels server,domain,user] [--keep]

Environment: PORTCULLIS_BIN (default <repo>/bin).
"""

import argparse
import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gateway_bench as gb  # noqa: E402  (Gateway; postfix_throughput helpers)

pt = gb.pt
RCPT = gb.RCPT
SENDER = gb.SENDER


def script(level):
    """100 rules that never match, then the implicit keep"""
    out = ['require ["fileinto", "envelope", "reject", "regex", "imap4flags"];']
    for i in range(100):
        k = i % 7
        if k == 0:
            t = 'header :contains "subject" "%s-never-%d"' % (level, i)
        elif k == 1:
            t = 'address :domain :is "from" "spam%d.%s.invalid"' % (i, level)
        elif k == 2:
            t = 'envelope :is "from" "nobody%d@%s.invalid"' % (i, level)
        elif k == 3:
            t = 'header :matches "x-mailer" "*spamtool-%d*"' % i
        elif k == 4:
            t = 'size :over %dM' % (50 + i)
        elif k == 5:
            t = 'exists "x-%s-flag-%d"' % (level, i)
        else:
            t = 'header :regex "subject" "^\\\\[%s-%d\\\\] .*(viagra|lottery)"' % (level, i)
        act = {"user": 'fileinto "Folder%d"; stop;' % i,
               "domain": 'fileinto "Quarantine"; stop;' if i % 2 else 'discard; stop;',
               "server": 'reject "rule %d";' % i}[level]
        if level == "user" and i % 3 == 0:
            act = 'addflag "\\\\Flagged"; fileinto "Folder%d"; stop;' % i
        out.append("if %s { %s }" % (t, act))
    return "\n".join(out) + "\n"


def tree_user_sys(pid):
    """(user, system) CPU seconds of pid and its descendants"""
    tck = os.sysconf("SC_CLK_TCK")
    u = k = 0
    for p in [pid] + pt.descendants(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                v = f.read().rsplit(")", 1)[1].split()
            u += int(v[11])
            k += int(v[12])
        except (OSError, IndexError, ValueError):
            pass
    return u / tck, k / tck


def install_scripts(d, levels):
    sd = os.path.join(d, "state", "sieve")
    for rel, level in (("server.sieve", "server"), ("domains/example.com.sieve", "domain"),
                       ("users/%s.sieve" % RCPT, "user")):
        if level not in levels:
            continue
        p = os.path.join(sd, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(script(level))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=1024, help="body bytes per message")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--levels", default="server,domain,user",
                    help="the scripts installed (comma separated: server, domain, user)")
    args = ap.parse_args()
    levels = set(args.levels.split(","))
    if not levels <= {"server", "domain", "user"}:
        ap.error("--levels: server, domain, user")
    for exe in (gb.SMTP_SOURCE, os.path.join(gb.BIN, "portcullisd"),
                os.path.join(gb.BIN, "portcullis")):
        if not os.access(exe, os.X_OK):
            print("sieve_gateway_bench: %s is missing (make; apt-get install postfix)" % exe,
                  file=sys.stderr)
            return 1

    work = tempfile.mkdtemp(prefix="portcullis-sievebench.", dir="/tmp")
    os.chmod(work, 0o755)
    users = os.path.join(work, "users")
    gws = []

    def close():
        for g in gws:
            try:
                g.stop()
            except Exception as e:      # noqa: BLE001  (stop what we can)
                gb.log("cleanup: %s" % e)
        if args.keep:
            gb.log("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    atexit.register(close)

    class Run(gb.Bench):
        """gateway_bench's run_direct on our own gateways, to self.rcpt"""
        def __init__(self):     # noqa: D401  (no Postfix, no sink)
            self.args = args
            self.rcpt = RCPT

        def source(self, port, count, sessions=None):
            cmd = [gb.SMTP_SOURCE, "-c", "-s", str(sessions or args.sessions), "-m", str(count),
                   "-l", str(args.size), "-M", gb.HELO, "-f", SENDER, "-t", self.rcpt,
                   "127.0.0.1:%d" % port]
            t = time.monotonic()
            p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True, timeout=args.timeout)
            if p.returncode != 0:
                raise pt.BenchError("smtp-source exited %d: %s" % (p.returncode, p.stderr))
            return time.monotonic() - t

    ports = set()
    while len(ports) < 2:
        ports.add(pt.free_port())
    port_none, port_sieve = sorted(ports)
    # one store and one Maildir for both: creating a file costs what its
    # directory's block group makes it cost (ext4 skips the inodes freed in
    # the last minutes, one by one: after a big rm -r in /tmp, by this bench
    # or anything else, a group can cost several times another), so both
    # deliver to RCPT; only the sieve gateway's sieve_dir has RCPT's script
    store = os.path.join(work, "mail")
    rcpt = {"none": RCPT, "sieve": RCPT}
    for name, port in (("none", port_none), ("sieve", port_sieve)):
        g = gb.Gateway(work, name, port, "maildir:" + store, users)
        if name == "sieve":
            install_scripts(g.dir, levels)
        gws.append(g)
        if name == "none":
            for u in (RCPT,):
                p = subprocess.run([os.path.join(gb.BIN, "portcullis"), "-c", g.conf, "user",
                                    "add", u, "--password-stdin"], input="bench-pw\n",
                                   text=True, capture_output=True, timeout=30)
                if p.returncode != 0:
                    raise pt.BenchError("user add: %s %s" % (p.stdout, p.stderr))
        g.start()

    def counter(name):
        local = rcpt[name].split("@")[0]
        nd = os.path.join(store, "example.com", local, "Maildir", "new")
        return lambda: len(os.listdir(nd)) if os.path.isdir(nd) else 0

    r = Run()
    print("Sieve gateway bench: %d messages x %d B body, %d parallel sessions, warm-up %d, "
          "%d CPU(s); scripts: %s, 100 rules each" % (
              args.messages, args.size, args.sessions, args.warmup, os.cpu_count(),
              " + ".join(l for l in ("server", "domain", "user") if l in levels)),
          flush=True)
    rates = {"none": [], "sieve": []}
    cpu = {"none": [], "sieve": []}
    user = {"none": [], "sieve": []}
    t0 = time.monotonic()
    for rep in range(args.repeats):
        # alternate the order, and start each run with the disk written back,
        # so neither pays for the other's dirty pages
        pair = (("none", gws[0]), ("sieve", gws[1]))
        for name, g in (pair if rep % 2 == 0 else pair[::-1]):
            os.sync()
            r.rcpt = rcpt[name]
            us0 = tree_user_sys(g.proc.pid)
            res = r.run_direct("gateway Maildir, %s" % name, g.port, counter(name), g.cpu)
            us1 = tree_user_sys(g.proc.pid)
            rates[name].append(res["rate"])
            cpu[name].append(res["cpu"])
            user[name].append(us1[0] - us0[0])
            print("  run %d %-28s %8.2f s %8.0f msg/s  (gateway CPU %.2f s: user %.2f, "
                  "system %.2f, with the warm-up)" % (
                      rep + 1, res["name"], res["seconds"], res["rate"], res["cpu"],
                      us1[0] - us0[0], us1[1] - us0[1]), flush=True)
    for g in gws:
        bad = [l for l in g.log_text().splitlines() if "error" in l or "sieve:" in l]
        if bad:
            print("  %s log: %s" % (g.name, bad[:3]))
    none, sv = statistics.median(rates["none"]), statistics.median(rates["sieve"])
    # the ratio within each back-to-back pair: the machine's slow phases
    # hit both runs of a pair alike
    ratio = statistics.median(b / a for a, b in zip(rates["none"], rates["sieve"]) if a)
    extra = statistics.median(cpu["sieve"]) - statistics.median(cpu["none"])
    print("  gateway CPU per message, medians: none %.0f us, with the scripts %.0f us "
          "(extra %.0f us)" % (statistics.median(cpu["none"]) * 1e6 / args.messages,
                               statistics.median(cpu["sieve"]) * 1e6 / args.messages,
                               extra * 1e6 / args.messages))
    # user CPU alone: what the scripts add, less the machine's I/O weather
    n = args.messages + args.warmup
    un, us = statistics.median(user["none"]), statistics.median(user["sieve"])
    print("  gateway user CPU per message, medians: none %.0f us, with the scripts %.0f us "
          "(extra %.0f us)" % (un * 1e6 / n, us * 1e6 / n, (us - un) * 1e6 / n))
    print("  median: none %.0f msg/s, with the scripts %.0f msg/s; median ratio "
          "of the pairs %.2fx (target >= 0.9x: %s); %.0f s" % (
              none, sv, ratio, "ok" if ratio >= 0.9 else "MISSED", time.monotonic() - t0))
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
