#!/usr/bin/python3
"""Benchmark: Redis-shared lists across two milter nodes (not run in CI).

What it measures, all on loopback, against a private redis-server and two
portcullisd nodes A and B (same lists = redis://..., own milter ports):

  1. push-to-enforced latency: a direct Redis write identical to what
     `portcullis kill add` sends (MULTI; DEL; HSET; EXEC; PUBLISH, over a raw
     RESP socket), then node B polled through the milter client (one new
     milter connection per poll: OPTNEG, CONNECT, HELO, MAIL) until it
     refuses; p50/p90/p99/max over --pushes (default 1000; target p99 <=
     250 ms).  A small sample through A's CLI too.
  2. `portcullis kill import` of --entries (default 1,000,000) random IPv4
     CIDRs: wall time, Redis memory per entry (INFO used_memory before/after,
     divided by the entries), and how long until both nodes enforce them.
  3. snapshot rebuild time with the big list in force: the daemon's own
     "snapshot built in X ms" line (target <= 1 s), for the load that
     followed the import and for --reloads forced full reloads ("kill *" on
     PREFIXchanges), with the full-reload wall time (fetch + build).
  4. push-to-enforced latency again with the big list in force
     (--big-pushes, default 100).

Run: python3 tests/bench/redis_bench.py [--pushes N] [--entries N]
         [--big-pushes N] [--reloads N]     (PORTCULLIS_BIN as for the tests)
Every loop is bounded; every wait has a deadline; only processes this
script started are signalled (by pid), also on failure or Ctrl-C.
"""
import argparse
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import shutil
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
import milterclient as mc  # noqa: E402
import test_redis_lists as rl  # noqa: E402  (Node)
from harness import daemon as hdaemon, redis as hredis, util  # noqa: E402  (tests/ on the path now)


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


def summary(lat_s):
    v = sorted(x * 1000 for x in lat_s)
    return ("n=%d p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms, mean %.1f ms"
            % (len(v), pct(v, 50), pct(v, 90), pct(v, 99), v[-1], statistics.mean(v)))


def refused(node, ip):
    v = mc.mail_verdict("127.0.0.1", node.port, ip, timeout=5.0)
    if v == ("continue",):
        return False
    if v[0] == "reject" and v[1] == "550":
        return True
    raise RuntimeError("unexpected MAIL reply from %s for %s: %r" % (node.name, ip, v))


def wait_refused(node, ip, t0, limit=5.0):
    """Seconds from t0 until node refuses ip; None after limit."""
    while True:
        if refused(node, ip):
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > limit:
            return None
        # no sleep: one milter round trip (~0.3 ms) is the poll interval


def probe_ip(i):
    return "100.%d.%d.%d" % (64 + (i >> 16) % 64, (i >> 8) & 255, i & 255)


def measure_pushes(r, node, n, first, label):
    lat, misses = [], 0
    for i in range(first, first + n):
        ip = probe_ip(i)
        if refused(node, ip):
            raise RuntimeError("%s already refused before the push" % ip)
        t0 = time.perf_counter()
        replies = hredis.push_entry(r, "kill", ip, reason="bench")
        if any(isinstance(x, hredis.RespError) for x in replies):
            raise RuntimeError("push failed: %r" % replies)
        d = wait_refused(node, ip, t0)
        if d is None:
            misses += 1
        else:
            lat.append(d)
    print("  %s: %s%s" % (label, summary(lat), ", %d not enforced within 5 s" % misses
                          if misses else ""))
    return lat, misses


def measure_cli_pushes(a, b, n, first):
    lat = []
    for i in range(first, first + n):
        ip = probe_ip(i)
        t0 = time.perf_counter()
        a.cli_ok("kill", "add", ip, "--reason", "bench cli")
        d = wait_refused(b, ip, t0)
        if d is not None:
            lat.append(d)
    print("  via A's CLI (fork+exec+connect included): %s" % summary(lat))


def random_cidrs(n, seed=1):
    """n distinct IPv4 CIDRs, first octet 1..99 (so 100.64/10 probes stay
    unlisted), prefix lengths /12../32 weighted like a real blocklist."""
    rnd = random.Random(seed)
    lens = [12, 16, 20, 22, 23, 24, 24, 24, 25, 26, 27, 28, 29, 30, 31, 32, 32, 32, 32, 32]
    seen = set()
    while len(seen) < n:
        plen = rnd.choice(lens)
        addr = (rnd.randint(1, 99) << 24) | rnd.getrandbits(24)
        addr &= (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
        seen.add((addr, plen))
    out = []
    for addr, plen in seen:
        s = "%d.%d.%d.%d" % (addr >> 24, (addr >> 16) & 255, (addr >> 8) & 255, addr & 255)
        out.append(s if plen == 32 else "%s/%d" % (s, plen))
    return out


def worker_rss_kb(node):
    """VmRSS of the node's milter worker (the master's child)."""
    try:
        pid = node.proc.pid
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            kids = f.read().split()
        total = 0
        for k in kids:
            with open("/proc/%s/status" % k) as f:
                m = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M)
                total += int(m.group(1)) if m else 0
        return total
    except OSError:
        return None


def snapshot_lines(node, mark, min_kill, full_only=False):
    """(stamp, kill entries, ms, how) of each "lists reloaded" line: how is
    "snapshot built" (everything compiled) or "additions compiled" (new
    keys on top of the last full build)."""
    rx = re.compile(r"^(\w+ +\d+ [\d:.]+) .*lists reloaded: (\d+) kill, \d+ accept entries in "
                    r"force \((snapshot built|additions compiled) in ([\d.]+) ms\)", re.M)
    return [(m.group(1), int(m.group(2)), float(m.group(4)), m.group(3))
            for m in rx.finditer(node.log_since(mark))
            if int(m.group(2)) >= min_kill and (not full_only or m.group(3) == "snapshot built")]


def log_time(stamp):
    """'Nov 25 05:24:00.256' (this year, local time) -> unix time."""
    t = time.strptime("%d %s" % (time.localtime().tm_year, stamp.split(".")[0]), "%Y %b %d %H:%M:%S")
    return time.mktime(t) + float("0." + stamp.split(".")[1])


def wait_loaded(node, mark, n, limit, full_only=False):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        lines = snapshot_lines(node, mark, n, full_only)
        if lines:
            return lines[0]
        if not node.alive():
            raise RuntimeError("%s died:\n%s" % (node.name, node.log_since(mark)[-3000:]))
        time.sleep(0.1)
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pushes", type=int, default=1000)
    ap.add_argument("--cli-pushes", type=int, default=100)
    ap.add_argument("--entries", type=int, default=1000000)
    ap.add_argument("--big-pushes", type=int, default=100)
    ap.add_argument("--reloads", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    for k in ("pushes", "cli_pushes", "entries", "big_pushes", "reloads"):
        if not 0 <= getattr(args, k) <= 5000000:
            sys.exit("--%s out of range" % k)

    signal.signal(signal.SIGTERM, util._on_signal)
    work = tempfile.mkdtemp(prefix="portcullis-redis-bench-")
    print("portcullisd from %s; work dir %s" % (hdaemon.BIN, work))
    redis = hredis.RedisServer(work)
    redis.start()
    # a long resync interval keeps periodic full loads out of the figures
    a = rl.Node("A", work, redis.port, lists_resync="1h")
    b = rl.Node("B", work, redis.port, lists_resync="1h")
    a.start()
    b.start()
    time.sleep(0.5)          # past the nodes' first full load
    r = redis.client()
    try:
        print("\n1. push-to-enforced latency, write on Redis -> refused by B (small list)")
        if args.pushes:
            measure_pushes(r, b, args.pushes, 0, "direct write (MULTI DEL HSET EXEC PUBLISH)")
        if args.cli_pushes:
            measure_cli_pushes(a, b, args.cli_pushes, 100000)

        if args.entries:
            print("\n2. kill import of %d random IPv4 CIDRs through A's CLI" % args.entries)
            t = time.monotonic()
            cidrs = random_cidrs(args.entries)
            path = os.path.join(work, "feed.txt")
            with open(path, "w") as f:
                f.write("\n".join(cidrs) + "\n")
            print("  (generated the file in %.1f s)" % (time.monotonic() - t))
            dbsize0 = r.call("DBSIZE")
            mem0 = int(hredis.info_field(r, "memory", "used_memory"))
            rss0 = {n.name: worker_rss_kb(n) for n in (a, b)}
            marks = {n.name: n.log_size() for n in (a, b)}
            t_imp = time.monotonic()
            res = a.cli("kill", "import", path, "--reason", "bench feed", timeout=900)
            t_done = time.monotonic()
            if res.returncode != 0:
                raise RuntimeError("import failed (%d): %s" % (res.returncode, res.stderr[-2000:]))
            print("  import: %.2f s (%.0f entries/s); CLI said: %s" % (
                t_done - t_imp, args.entries / (t_done - t_imp),
                (res.stdout + res.stderr).strip().splitlines()[-1][:120]))
            loaded = {}
            for n in (a, b):
                line = wait_loaded(n, marks[n.name], dbsize0 + args.entries - 10, 600)
                loaded[n.name] = line
                if line is None:
                    print("  %s: never logged a reload with the new entries within 600 s" % n.name)
                else:
                    print("  %s enforces %d kill entries %.2f s after the import returned "
                          "(%s in %.0f ms)" % (n.name, line[1],
                                               log_time(line[0]) - (time.time() -
                                               (time.monotonic() - t_done)),
                                               line[3], line[2]))
            # memory once the subscribers' buffers are drained
            time.sleep(1.0)
            dbsize1 = r.call("DBSIZE")
            mem1 = int(hredis.info_field(r, "memory", "used_memory"))
            keys = dbsize1 - dbsize0
            print("  Redis: %d new keys; used_memory %.1f MB -> %.1f MB: %.1f bytes per entry"
                  % (keys, mem0 / 1e6, mem1 / 1e6, (mem1 - mem0) / max(1, keys)))
            samples = random.Random(3).sample(cidrs, 200)
            mu = [r.call("MEMORY", "USAGE", hredis.PREFIX + "kill:" + c, "SAMPLES", "0")
                  for c in samples]
            print("  (MEMORY USAGE of one entry's hash, mean of 200: %.1f bytes)"
                  % statistics.mean(mu))
            for n in (a, b):
                rss = worker_rss_kb(n)
                if rss and rss0[n.name]:
                    print("  %s milter worker RSS %.1f MB -> %.1f MB (%.1f bytes per entry)"
                          % (n.name, rss0[n.name] / 1024, rss / 1024,
                             (rss - rss0[n.name]) * 1024 / max(1, keys)))
            for n in (a, b):
                txt = n.log_since(marks[n.name])
                for pat in ("unreachable", "reachable again", "error", "warning"):
                    c = len(re.findall(pat, txt))
                    if c:
                        print("  %s log during the import: %d line(s) with '%s', e.g. %s"
                              % (n.name, c, pat, re.search(r"[^\n]*%s[^\n]*" % pat,
                                                           txt).group(0)[:200]))

            print("\n3. snapshot rebuild with %d entries in force" % keys)
            for n in (a, b):
                if loaded[n.name]:
                    print("  %s: load after the import: %s in %.0f ms"
                          % (n.name, loaded[n.name][3], loaded[n.name][2]))
            builds, walls = [], []
            for i in range(args.reloads):
                mark = b.log_size()
                t_pub = time.time()
                r.call("PUBLISH", hredis.PREFIX + "changes", "kill *")
                line = wait_loaded(b, mark, keys, 300, full_only=True)
                if line is None:
                    print("  forced reload %d: no reload line within 300 s" % (i + 1))
                    continue
                builds.append(line[2])
                walls.append(log_time(line[0]) - t_pub)
                print("  B forced full reload %d: fetch + build %.2f s, snapshot built in %.0f ms"
                      % (i + 1, walls[-1], line[2]))
                time.sleep(0.5)
            if builds:
                print("  snapshot build: best %.0f ms, worst %.0f ms (target <= 1000 ms); "
                      "full reload wall time: best %.2f s, worst %.2f s"
                      % (min(builds), max(builds), min(walls), max(walls)))

            if args.big_pushes:
                print("\n4. push-to-enforced latency with %d entries in force" % keys)
                measure_pushes(r, b, args.big_pushes, 200000, "direct write")
        for n in (a, b):
            if not n.alive():
                print("NOTE: %s is no longer running" % n.name)
            txt = n.log_since(0)
            if hdaemon.SANITIZER_RE.search(txt):
                print("NOTE: sanitizer report in %s's log" % n.name)
    finally:
        r.close()
        for n in (a, b):
            n.stop()
        redis.kill(signal.SIGTERM)
        if args.keep:
            print("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
