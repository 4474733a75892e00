#!/usr/bin/python3
"""Shared kill/accept lists through Redis, seen by two milter nodes.

What it proves: a private redis-server (loopback, no persistence) and two
portcullisd nodes A and B (own milter ports and state dirs, same lists =
redis://...): a change made through one node's CLI, or by hand with
redis-cli, is enforced by the other within 1 s; TTLs expire on both; an
auto-ban on A is refused by B; Redis dying mid-traffic costs no message;
a node started while Redis is down enforces its saved copy and resyncs;
malformed keys are logged and skipped; import/export/migrate move entries.
Verdicts are asserted on what a milter client (tests/integration/
milterclient.py, playing the MTA) was told at MAIL.

Run: python3 tests/integration/test_redis_lists.py [Class.test_name]
     PORTCULLIS_BIN=build/asan/bin python3 tests/integration/test_redis_lists.py
     KEEP_LAB=1 keeps the temporary directory (daemon and redis logs).
Last line: "N passed, N failed"; exit 1 on a failure.  Under 60 s.

Only processes this module started are signalled, by pid; everything is
stopped at exit, also after a failure or Ctrl-C.
"""
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import milterclient as mc  # noqa: E402
from harness import daemon as hdaemon, runner, util  # noqa: E402
from harness.daemon import BIN, SANITIZER_RE  # noqa: E402,F401
from harness.ports import free_port, port_accepts  # noqa: E402,F401
from harness.redis import (PREFIX, REDIS_CLI, REDIS_SERVER, RedisServer, Resp,  # noqa: E402,F401
                           RespError, info_field, push_entry)
from harness.util import _on_signal  # noqa: E402,F401

VERBOSE = os.environ.get("LAB_VERBOSE") == "1"

KILL_TEXT = re.compile(r"^5\.7\.1 Client host \S*\[[0-9a-f.:]+\] is on the kill list")


def say(msg):
    sys.stdout.write("    %s\n" % msg)
    sys.stdout.flush()


def wait_until(pred, timeout, interval=0.02, what="condition"):
    return util.wait_until(pred, timeout, interval, what)


class Node(hdaemon.Daemon):
    """One portcullisd (master + milter worker) with its own config."""

    def __init__(self, name, workdir, redis_port, **extra):
        d = os.path.join(workdir, name)
        os.makedirs(d, exist_ok=True)
        super().__init__(name, (
            ("milter_listen", "inet:127.0.0.1:{port}"),
            ("mydomains", "example.com"),
            ("relay_networks", "127.0.0.2"),
            ("lists", "redis://127.0.0.1:%d/0" % redis_port),
            ("lists_resync", "5s"),
            ("state_dir", "{dir}/state"),
            ("max_command_length", "512"),
            ("long_command_ban", "3600"),
            ("log_level", "info"),
        ), dir=d, **extra)      # extra keys replace the defaults
        self.logpath = self.log_path
        self.exit_codes = []

    @property
    def cache_kill_list(self):
        return os.path.join(self.dir, "state", "lists-cache", "kill.list")

    def start(self, wait_loaded=True):
        if self.proc is not None and self.proc.poll() is not None:
            self.proc = None        # killed (kill_now): start again
        with open(self.logpath, "a") as f:
            f.write("==== test: starting %s\n" % self.name)
        self.mark = self.log_size()
        super().start(ready=lambda: port_accepts("127.0.0.1", self.port) and (
            not wait_loaded or "lists loaded" in self.log_since(self.mark)), timeout=15)

    def stop(self, grace=8.0):
        res = super().stop(grace)
        if res is None:
            return None
        rc = ("killed after %.0fs" % grace) if res[2] else res[0]
        self.exit_codes.append(rc)
        return rc

    def kill_now(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._closed_log()

    @property
    def logf(self):
        """The log file object while running (older tests close it after kill_now)."""
        return self.log_fh or open(os.devnull, "w")

    def log_size(self):
        return self.log_mark()

    def log_since(self, mark=0):
        return super().log_since(mark)

    def wait_log(self, pattern, mark=0, within=3.0):
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.log_since(mark)), within, 0.05,
                          "%s log /%s/" % (self.name, pattern))

    def cli(self, *args, inp=None, timeout=60, overrides=()):
        cmd = ["-c", self.conf]
        for o in overrides:
            cmd += ["-o", o]
        t0 = time.monotonic()
        r = hdaemon.run_bin("portcullis", *(cmd + list(args)), input=inp, timeout=timeout)
        r.seconds = time.monotonic() - t0
        if VERBOSE:
            sys.stderr.write("%s$ portcullis %s -> %d\n%s%s" % (self.name, " ".join(args),
                                                              r.returncode, r.stdout[-400:],
                                                              r.stderr[-400:]))
        return r

    def cli_ok(self, *args, **kw):
        r = self.cli(*args, **kw)
        if r.returncode != 0:
            raise AssertionError("portcullis %s -> %d\n%s%s" % (" ".join(args), r.returncode,
                                                                r.stdout, r.stderr))
        return r

    def mail(self, ip, sender="<sender@outside.test>", timeout=3.0):
        """The reply a fresh connection from ip gets at MAIL FROM."""
        return mc.mail_verdict("127.0.0.1", self.port, ip, sender=sender, timeout=timeout)

    def refuses(self, ip):
        v = self.mail(ip)
        if v == ("continue",):
            return False
        if v[0] == "reject" and v[1] == "550" and KILL_TEXT.match(v[2]):
            return True
        raise AssertionError("%s: unexpected MAIL reply for %s: %r" % (self.name, ip, v))


def wait_state(nodes, ip, refused, within, t0=None, what=""):
    """Poll each node through the milter until it refuses (or accepts) ip.
    Returns {node name: seconds since t0} or raises after `within`."""
    t0 = time.monotonic() if t0 is None else t0
    got = {}
    deadline = t0 + within
    while True:
        for n in nodes:
            if n.name not in got and n.refuses(ip) == refused:
                got[n.name] = time.monotonic() - t0
        if len(got) == len(nodes):
            return got
        if time.monotonic() > deadline:
            missing = [n.name for n in nodes if n.name not in got]
            raise AssertionError("%s: %s still %s %s after %.2fs" % (
                what, ",".join(missing), "accepts" if refused else "refuses", ip,
                time.monotonic() - t0))
        time.sleep(0.01)


def fmt_times(d):
    return ", ".join("%s %.3f s" % kv for kv in sorted(d.items()))


# ---------------------------------------------------------------------------

class RedisLists(unittest.TestCase):
    """The cases run in name order and share one Redis and two nodes; each
    case uses its own client addresses (192.0.2.N / 198.51.100.N / 10/8)."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="portcullis-redis-")
        cls.redis = RedisServer(cls.dir)
        cls.redis.start()
        cls.A = Node("A", cls.dir, cls.redis.port)
        cls.B = Node("B", cls.dir, cls.redis.port)
        cls.A.start()
        cls.B.start()
        cls.r = cls.redis.client()

    @classmethod
    def tearDownClass(cls):
        cls.r.close()
        for n in (cls.A, cls.B):
            n.stop()
        cls.redis.kill(signal.SIGTERM)
        if os.environ.get("KEEP_LAB") == "1":
            print("kept %s" % cls.dir)
        else:
            shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        # every case starts with Redis up and both nodes running
        if not self.redis.alive():
            self.redis.start()
        for n in (self.A, self.B):
            self.assertTrue(n.alive(), "%s is not running:\n%s" % (n.name, n.log_since()[-3000:]))
        try:
            self.r.call("PING")
        except (OSError, ConnectionError, RespError):
            self._new_redis_client()

    def _new_redis_client(self):
        self.r.close()
        self.__class__.r = self.redis.client()

    def rcli(self, *args):
        return subprocess.run([REDIS_CLI, "-p", str(self.redis.port)] + list(args),
                              capture_output=True, text=True, timeout=10)

    # a -----------------------------------------------------------------

    def test_a_push_reaches_other_node_within_1s(self):
        A, B = self.A, self.B
        ip = "192.0.2.10"
        self.assertFalse(B.refuses(ip))
        t_start = time.monotonic()
        A.cli_ok("kill", "add", ip, "--reason", "test a")
        t_ret = time.monotonic()
        got = wait_state([B], ip, True, 1.0, t_ret, "CLI add on A")
        say("a: CLI add on A (CLI took %.3f s) -> refused by B %.3f s after the CLI returned "
            "(%.3f s after it started)" % (t_ret - t_start, got["B"], got["B"] + t_ret - t_start))
        self.assertTrue(A.refuses(ip))

        A.cli_ok("kill", "del", ip)
        got = wait_state([B], ip, False, 1.0, time.monotonic(), "CLI del on A")
        say("a: CLI del on A -> accepted again by B after %.3f s" % got["B"])

        ip2 = "192.0.2.11"
        self.assertFalse(B.refuses(ip2))
        r = self.rcli("HSET", PREFIX + "kill:" + ip2, "reason", "x")
        self.assertEqual(r.returncode, 0, r.stderr)
        t0 = time.monotonic()
        got = wait_state([A, B], ip2, True, 1.0, t0, "redis-cli HSET")
        say("a: redis-cli HSET -> refused after %s" % fmt_times(got))
        r = self.rcli("DEL", PREFIX + "kill:" + ip2)
        self.assertEqual(r.stdout.strip(), "1", r.stdout + r.stderr)
        got = wait_state([A, B], ip2, False, 1.0, time.monotonic(), "redis-cli DEL")
        say("a: redis-cli DEL -> accepted again after %s" % fmt_times(got))

    # b -----------------------------------------------------------------

    def test_b_ttl_expires_on_both(self):
        A, B = self.A, self.B
        ip = "192.0.2.20"
        t_start = time.monotonic()
        A.cli_ok("kill", "add", ip, "--ttl", "2", "--reason", "test b")
        t_ret = time.monotonic()
        ttl = self.r.call("PTTL", PREFIX + "kill:" + ip)
        self.assertTrue(0 < ttl <= 2000, "PTTL %r" % ttl)
        got = wait_state([A, B], ip, True, 1.0, t_ret, "ttl entry added")
        say("b: --ttl 2 entry refused after %s" % fmt_times(got))
        # Redis drops the key at its expiry (EXPIREAT in whole seconds, so the
        # lifetime is 1-2 s); both nodes must accept the client again within
        # ~1 s of that moment.
        expiry = t_ret + ttl / 1000.0
        say("b: lifetime given by --ttl 2: %.2f s (PTTL %d ms just after the CLI returned)"
            % (expiry - t_start, ttl))
        gone = wait_state([A, B], ip, False, (expiry + 1.0) - t_ret, t_ret, "ttl expiry")
        after = {k: v + t_ret - expiry for k, v in gone.items()}
        say("b: accepted again %s after Redis expired the key" % fmt_times(after))
        self.assertEqual(self.r.call("EXISTS", PREFIX + "kill:" + ip), 0, "key outlived its TTL")

    # c -----------------------------------------------------------------

    def test_c_auto_ban_on_A_refused_by_B(self):
        A, B = self.A, self.B
        ip = "198.51.100.30"
        sender = "<" + "x" * 585 + "@outside.test>"   # 600 octets with the brackets
        self.assertEqual(len(sender), 600)
        self.assertFalse(B.refuses(ip))
        with mc.MilterClient("127.0.0.1", A.port, timeout=3) as c:
            c.connect(ip)
            self.assertEqual(c.helo("client.test"), ("continue",))
            v = c.mail(sender, macros={"i": "4QUEUE", "{mail_addr}": sender[1:-1]})
            t0 = time.monotonic()
            c.quit()
        self.assertEqual(v[:2], ("reject", "500"), v)
        self.assertRegex(v[2], r"^5\.5\.2 Command line too long \(612 octets, limit 512\)")
        got = wait_state([B, A], ip, True, 1.0, t0, "auto-ban reaching B")
        say("c: 600-char MAIL FROM on A -> %s %s; new connections refused at MAIL after %s"
            % (v[1], v[2][:40], fmt_times(got)))
        out = B.cli_ok("kill", "list").stdout
        line = [l for l in out.splitlines() if l.split()[:1] == [ip]]
        self.assertEqual(len(line), 1, out[-2000:])
        self.assertIn("origin=auto-ban", line[0])
        ttl = self.r.call("TTL", PREFIX + "kill:" + ip)
        self.assertTrue(3500 < ttl <= 3600, "TTL of the ban: %r" % ttl)
        self.assertEqual(self.r.call("HGET", PREFIX + "kill:" + ip, "origin"), b"auto-ban")
        A.cli_ok("kill", "del", ip)
        wait_state([A, B], ip, False, 1.0, what="ban removed")

    # d -----------------------------------------------------------------

    def test_d_redis_killed_mid_traffic(self):
        A, B = self.A, self.B
        bad, good = "192.0.2.40", "192.0.2.41"
        old_new = "192.0.2.42"     # exists only before the restart
        new_ip = "192.0.2.43"      # exists only in the data Redis comes back with
        A.cli_ok("kill", "add", bad, "--reason", "test d")
        A.cli_ok("kill", "add", old_new, "--reason", "test d, gone after restart")
        wait_state([A, B], bad, True, 1.0, what="setup")
        wait_state([A, B], old_new, True, 1.0, what="setup")

        # the data the restarted Redis will load: bad and new_ip, not old_new
        seed_dir = os.path.join(self.dir, "seed")
        os.makedirs(seed_dir, exist_ok=True)
        seed = RedisServer(seed_dir)
        seed.start(dbfilename="seed.rdb")
        try:
            sr = seed.client()
            push_entry(sr, "kill", bad, reason="test d")
            push_entry(sr, "kill", new_ip, reason="loaded from an RDB file")
            # a backup carries its own generation mark: the nodes take its
            # lists (a Redis that comes back with no mark at all is a loss:
            # test_redis_faults.py RedisRestartedEmpty)
            sr.call("SET", PREFIX + "generation", "from-a-backup")
            sr.call("SAVE")
            sr.close()
        finally:
            seed.kill(signal.SIGTERM)
        shutil.copy(os.path.join(seed_dir, "seed.rdb"), os.path.join(self.dir, "restart.rdb"))

        marks = {n.name: n.log_size() for n in (A, B)}
        results, errors, stop = [], [], threading.Event()

        def traffic(node):
            i = 0
            while not stop.is_set() and i < 2000:
                i += 1
                ip = bad if i % 2 else good
                t = time.monotonic()
                try:
                    v = node.mail(ip, timeout=2.0)
                    results.append((node.name, ip, v, time.monotonic() - t))
                except Exception as e:     # timeouts and protocol errors
                    errors.append((node.name, ip, repr(e)))
                time.sleep(0.005)
        threads = [threading.Thread(target=traffic, args=(n,)) for n in (A, B)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.4)
            self.redis.kill(signal.SIGKILL)
            t_kill = time.monotonic()
            n_before = len(results)
            time.sleep(2.0)
            # the CLI cannot write now, and says why
            r = A.cli("kill", "add", "192.0.2.44")
            r2 = B.cli("kill", "list")
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        during = len(results) - n_before
        self.assertEqual(errors, [], "milter errors while Redis was down")
        for name, ip, v, _ in results:
            if ip == bad:
                self.assertTrue(v[0] == "reject" and v[1] == "550" and KILL_TEXT.match(v[2]),
                                "%s answered %r for the killed %s" % (name, v, ip))
            else:
                self.assertEqual(v, ("continue",), "%s answered %r for %s" % (name, v, ip))
        lat = sorted(x[3] for x in results)
        self.assertGreater(during, 20, "too few sessions while Redis was down")
        say("d: %d sessions (%d after SIGKILL of Redis), all right; session time max %.1f ms, "
            "p99 %.1f ms" % (len(results), during, lat[-1] * 1000,
                             lat[int(len(lat) * 0.99)] * 1000))
        for n in (A, B):
            self.assertTrue(n.alive(), "%s died" % n.name)
            n.wait_log(r"Redis at 127\.0\.0\.1:%d/0 unreachable \(.*\): enforcing the last lists"
                       % self.redis.port, marks[n.name], 2.0)
            self.assertNotRegex(n.log_since(marks[n.name]), r"tempfail|: 4\d\d ")
        where = "cannot reach Redis at 127.0.0.1:%d/0" % self.redis.port
        for res, what in ((r, "kill add"), (r2, "kill list")):
            self.assertIn(where, res.stderr, what)
            self.assertLess(res.seconds, 5.0, "%s took %.1fs to answer" % (what, res.seconds))
        self.assertNotEqual(r.returncode, 0, "kill add while Redis is down: %s" % r.stdout)
        # a read answers from the node's copy, and says so (test_redis_faults.py d)
        self.assertEqual(r2.returncode, 0, r2.stderr)
        self.assertIn("this node's copy", r2.stderr)
        say("d: CLI while Redis down: exit %d in %.2f s: %s" % (r.returncode, r.seconds,
                                                                r.stderr.strip()[:100]))

        # Redis returns on the same port, with other data
        mark = B.log_size()
        self.redis.start(dbfilename="restart.rdb")
        t_up = time.monotonic()
        self._new_redis_client()
        self.assertEqual(self.r.call("EXISTS", PREFIX + "kill:" + new_ip), 1, "seed data not loaded")
        got_new = wait_state([A, B], new_ip, True, 8.0, t_up, "resync after restart")
        got_old = wait_state([A, B], old_new, False, 8.0, t_up, "resync after restart")
        self.assertTrue(B.refuses(bad))
        B.wait_log(r"Redis at 127\.0\.0\.1:%d/0 reachable again: full resync" % self.redis.port,
                   mark, 1.0)
        say("d: Redis back with other data: new entry enforced after %s; removed entry "
            "dropped after %s" % (fmt_times(got_new), fmt_times(got_old)))
        # keyspace notifications were switched on again on the new server
        ip5 = "192.0.2.45"
        self.rcli("HSET", PREFIX + "kill:" + ip5, "reason", "after restart")
        got = wait_state([B], ip5, True, 1.0, time.monotonic(), "hand-made key after restart")
        say("d: redis-cli HSET on the restarted Redis enforced by B after %.3f s" % got["B"])
        for ip in (bad, new_ip, ip5):
            self.r.call("DEL", PREFIX + "kill:" + ip)

    # e -----------------------------------------------------------------

    def test_e_node_starts_while_redis_down(self):
        B = self.B
        ip = "192.0.2.50"      # in Redis before, so in B's saved copy
        later = "192.0.2.51"   # only in the Redis that comes up later
        B.cli_ok("kill", "add", ip, "--reason", "test e")
        # the saved copy is written at each full load (start, resync, reconnect)
        t0 = time.monotonic()

        def cached():
            try:
                with open(B.cache_kill_list) as f:
                    return re.search(r"^%s\b" % re.escape(ip), f.read(), re.M)
            except OSError:
                return None
        wait_until(cached, 7.0, 0.1, "%s in B's lists_cache" % ip)
        say("e: entry in B's saved copy after %.2f s" % (time.monotonic() - t0))
        self.assertEqual(B.stop(), 0)
        self.redis.kill(signal.SIGKILL)

        B.start()
        txt = B.log_since(B.mark)
        self.assertRegex(txt, r"enforcing the last saved lists \(\d+ kill, \d+ accept entries\)")
        m = re.search(r"lists loaded: (\d+) kill", txt)
        self.assertTrue(m and int(m.group(1)) >= 1, txt)
        say("e: B started without Redis: %s" % re.search(r"[^\n]*last saved lists[^\n]*",
                                                          txt).group(0)[16:160])
        self.assertTrue(B.refuses(ip), "saved copy not enforced")
        self.assertFalse(B.refuses("192.0.2.59"))

        # Redis comes up empty (no persistence: its generation mark is gone
        # too), then gets `later`: B enforces `later` on top of its saved
        # lists and keeps those until the admin says which lists are right
        mark = B.log_size()
        self.redis.start(dbfilename="empty-e.rdb")
        t_up = time.monotonic()
        self._new_redis_client()
        push_entry(self.r, "kill", later, reason="test e")
        got = wait_state([B], later, True, 7.0, t_up, "resync after Redis came up")
        B.wait_log(r"the lists in the shared store are gone", mark, 7.0)
        self.assertTrue(B.refuses(ip), "B emptied its lists from a Redis that lost them")
        r = B.cli_ok("lists", "accept-empty")
        t_acc = time.monotonic()
        got2 = wait_state([B], ip, False, 7.0, t_acc, "lists accept-empty")
        self.assertTrue(B.refuses(later))
        say("e: Redis up empty -> B enforces the new entry after %.2f s and keeps its saved "
            "lists; `lists accept-empty` drops the stale one after %.2f s"
            % (got["B"], got2["B"]))
        time.sleep(0.2)
        if not re.search(r"reachable again", B.log_since(mark)):
            say("e: NOTE: B resynced but logged no 'Redis at ... reachable again' line; "
                "after the start-up warning the log never says Redis is back")
        self.r.call("DEL", PREFIX + "kill:" + later)

    # f -----------------------------------------------------------------

    BAD_KEYS = [
        # (how it is written, key, what the log must say after 'redis key "KEY": ')
        (("HSET", "kill:not-an-entry", "reason", "x"), "kill:not-an-entry", r""),
        (("HSET", "kill:192.0.2.61", "added", "notanumber", "reason", "x"), "kill:192.0.2.61",
         r"added"),
        (("SET", "kill:192.0.2.62", "a string, not a hash"), "kill:192.0.2.62", r""),
        (("RPUSH", "accept:192.0.2.63", "a list"), "accept:192.0.2.63", r"not a hash"),
        (("HSET", "kill:192.0.2.1/24", "reason", "host bits set"), "kill:192.0.2.1/24", r""),
        (("HSET", "kill:192.0.2.64", "reason", "R" * 100000), "kill:192.0.2.64", r"reason"),
        (("HSET", "kill:192.0.2.65", "origin", "martian"), "kill:192.0.2.65", r"origin"),
    ]
    GOOD_F = ["203.0.113.%d" % i for i in range(1, 31)]

    def _write_bad_keys(self):
        for cmd, _, _ in self.BAD_KEYS:
            self.r.call(cmd[0], PREFIX + cmd[1], *cmd[2:])
        self.r.call("HSET", PREFIX + "kill:\x01\x02\xff\x1b[31m", "reason", "control bytes")

    def _clean_f(self):
        for k in (self.r.call("KEYS", PREFIX + "kill:*") + self.r.call("KEYS", PREFIX + "accept:*")):
            if not k.startswith(PREFIX.encode() + b"kill:10."):
                self.r.call("DEL", k)

    def test_f1_malformed_keys_logged_and_skipped(self):
        A, B = self.A, self.B
        marks = {n.name: n.log_size() for n in (A, B)}
        try:
            self._write_bad_keys()
            t0 = time.monotonic()
            good = "192.0.2.60"
            self.r.call("HSET", PREFIX + "kill:" + good, "reason", "good", "origin", "admin")
            got = wait_state([A, B], good, True, 1.0, what="good entry among bad ones")
            say("f: good entry written next to malformed ones enforced after %s" % fmt_times(got))
            # every bad key is logged with its key and skipped, at the latest at the next resync
            string_key = "kill:192.0.2.62"
            hashes = [key for cmd, key, _ in self.BAD_KEYS if cmd[0] == "HSET"] + [good]
            # wait past one full resync (lists_resync = 5s): both paths, the
            # single-key fetch on notification and the full load, must say so
            time.sleep(max(0, t0 + 5.6 - time.monotonic()))
            for n in (A, B):
                txt = n.log_since(marks[n.name])
                missing = [key for _, key, why in self.BAD_KEYS
                           if not re.search(r'redis key "%s%s": [^\n]*%s[^\n]*skipped'
                                            % (re.escape(PREFIX), re.escape(key), why), txt)]
                said = "\n".join(l[31:200] for l in txt.splitlines() if "redis key" in l)
                self.assertEqual([k for k in missing if k != string_key], [],
                                 "%s: no 'redis key \"KEY\": ... skipped' line for these keys; "
                                 "the log says:\n%s" % (n.name, said))
                wrong = [k for k in hashes if re.search(r'redis key "%s%s": not a hash'
                                                        % (re.escape(PREFIX), re.escape(k)), txt)]
                self.assertEqual(wrong, [], "%s reports hashes as 'not a hash' (replies "
                                 "attributed to the wrong key?); the log says:\n%s" % (n.name, said))
                for line in txt.splitlines():
                    self.assertTrue(all(32 <= ord(ch) < 127 for ch in line), "unescaped: %r" % line)
                    self.assertLess(len(line), 2000, "overlong log line: %r..." % line[:200])
                self.assertTrue(n.alive())
            for ip in ("192.0.2.62", "192.0.2.61"):
                say("f: %s (%s): A %s, B %s" % (ip, "string value" if ip.endswith("62") else
                                                 "added=notanumber",
                                                 "refuses" if A.refuses(ip) else "accepts",
                                                 "refuses" if B.refuses(ip) else "accepts"))
            self.assertNotIn(string_key, missing,
                             "a string-valued key (SET %s%s) is neither logged nor skipped; the "
                             "README says a value of the wrong type is logged with its key and "
                             "skipped" % (PREFIX, string_key))
            self.assertFalse(B.refuses("192.0.2.62"), "string-valued key enforced, not skipped")
            self.assertTrue(B.refuses(good))
            self.assertFalse(B.refuses("192.0.2.66"))
        finally:
            self._clean_f()

    def test_f2_good_entries_survive_full_resync_next_to_bad_keys(self):
        """A wrong-typed key must cost only itself: after the next full resync
        every good entry is still enforced, and the CLI still lists them all."""
        A, B = self.A, self.B
        try:
            for ip in self.GOOD_F:
                self.r.call("HSET", PREFIX + "kill:" + ip, "reason", "good", "origin", "admin")
            self._write_bad_keys()
            t0 = time.monotonic()
            for ip in self.GOOD_F[:3]:
                wait_state([A, B], ip, True, 1.0, t0, "good entry")
            time.sleep(max(0, t0 + 5.6 - time.monotonic()))    # lists_resync = 5s
            lost = {n.name: [ip for ip in self.GOOD_F if not n.refuses(ip)] for n in (A, B)}
            listed = B.cli("kill", "list").stdout
            unlisted = [ip for ip in self.GOOD_F if not re.search(r"^%s\s" % re.escape(ip),
                                                                  listed, re.M)]
            say("f: after a full resync: good entries no longer enforced: A %d/30, B %d/30; "
                "missing from `kill list`: %d/30" % (len(lost["A"]), len(lost["B"]), len(unlisted)))
            self.assertEqual(lost, {"A": [], "B": []}, "good entries dropped by the full resync")
            self.assertEqual(unlisted, [], "good entries missing from `kill list`")
        finally:
            self._clean_f()

    # g -----------------------------------------------------------------

    def test_g_import_export_migrate(self):
        A, B = self.A, self.B
        rnd = random.Random(7)
        nets = rnd.sample(range(65536), 10000)
        entries = ["10.%d.%d.0/24" % (n >> 8, n & 255) for n in nets]
        path = os.path.join(self.dir, "feed.txt")
        with open(path, "w") as f:
            f.write("# 10,000 /24s\n\n")
            for i, e in enumerate(entries):
                if i % 1000 == 0:
                    f.write("%s --ttl 1h --reason per-line reason %d\n" % (e, i))
                else:
                    f.write(e + "\n")
        mark = B.log_size()
        r = A.cli_ok("kill", "import", path, "--reason", "feed g")
        say("g: import of 10,000 entries through A: %.2f s; output: %s"
            % (r.seconds, (r.stdout + r.stderr).strip().splitlines()[-1][:100]))
        t0 = time.monotonic()

        def count_on_b():
            out = B.cli_ok("kill", "list").stdout
            return sum(1 for l in out.splitlines() if l.startswith("10."))
        self.assertEqual(count_on_b(), 10000)
        B.wait_log(r"lists reloaded: 100\d\d kill", mark, 3.0)
        for e in rnd.sample(entries, 3):
            ip = e.replace(".0/24", ".77")
            wait_state([B], ip, True, 1.0, t0, "imported entry %s" % e)
        unlisted = next(n for n in range(65536) if n not in set(nets))
        self.assertFalse(B.refuses("10.%d.%d.77" % (unlisted >> 8, unlisted & 255)))
        m = re.search(r"lists reloaded: (100\d\d) kill[^\n]*snapshot built in ([\d.]+) ms",
                      B.log_since(mark))
        say("g: B's snapshot after the import: %s kill entries, built in %s ms"
            % (m.group(1), m.group(2)) if m else "g: no snapshot line")
        h = self.r.call("HGETALL", PREFIX + "kill:" + entries[1])
        h = dict(zip(h[::2], h[1::2]))
        self.assertEqual(h.get(b"origin"), b"import", h)
        self.assertEqual(h.get(b"reason"), b"feed g", h)
        h0 = self.r.call("HGETALL", PREFIX + "kill:" + entries[0])
        h0 = dict(zip(h0[::2], h0[1::2]))
        self.assertEqual(h0.get(b"reason"), b"per-line reason 0", h0)
        ttl = self.r.call("TTL", PREFIX + "kill:" + entries[0])
        self.assertTrue(3500 < ttl <= 3600, "per-line --ttl 1h gave TTL %r" % ttl)

        # a bad line: refused with FILE:LINE, nothing written; --skip-bad writes the rest
        bad = os.path.join(self.dir, "bad.txt")
        with open(bad, "w") as f:
            f.write("198.51.100.70\n198.51.100.71\n999.1.1.1\n198.51.100.72 --ttl soon\n"
                    "198.51.100.73\n")
        r = A.cli("kill", "import", bad)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("%s:3:" % bad, r.stderr)
        self.assertIn("%s:4:" % bad, r.stderr)
        for i in (70, 71, 73):
            self.assertEqual(self.r.call("EXISTS", PREFIX + "kill:198.51.100.%d" % i), 0,
                             "written despite a bad line")
        r = A.cli("kill", "import", bad, "--skip-bad")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for i in (70, 71, 73):
            self.assertEqual(self.r.call("EXISTS", PREFIX + "kill:198.51.100.%d" % i), 1)
        self.assertEqual(self.r.call("EXISTS", PREFIX + "kill:198.51.100.72"), 0)
        say("g: bad file refused (exit %d): %s" % (A.cli("kill", "import", bad).returncode,
                                                    r.stderr.strip().splitlines()[0][:100]))

        # migrate file:DIR -> redis
        src = os.path.join(self.dir, "filestore")
        os.makedirs(src, exist_ok=True)
        now = int(time.time())
        with open(os.path.join(src, "kill.list"), "w") as f:
            f.write("# hand-made\n"
                    "198.51.100.80 added=%d expires=0 origin=admin reason=migrated one\n"
                    "198.51.100.81 expires=%d reason=an hour\n"
                    "198.51.100.82 expires=%d reason=already expired\n"
                    "@spam.example\n" % (now - 100, now + 3600, now - 10))
        with open(os.path.join(src, "accept.list"), "w") as f:
            f.write("198.51.100.90 reason=partner\n")
        url = "redis://127.0.0.1:%d/0" % self.redis.port
        r = A.cli_ok("lists", "migrate", "file:" + src, url)
        say("g: migrate: %s" % " | ".join(r.stdout.strip().splitlines())[:200])
        self.assertRegex(r.stdout, r"\b3\b.*kill|kill.*\b3\b")
        self.assertRegex(r.stdout, r"\b1\b.*accept|accept.*\b1\b")
        h = self.r.call("HGETALL", PREFIX + "kill:198.51.100.80")
        h = dict(zip(h[::2], h[1::2]))
        self.assertEqual((h.get(b"reason"), h.get(b"origin"), h.get(b"added")),
                         (b"migrated one", b"admin", str(now - 100).encode()))
        ttl = self.r.call("TTL", PREFIX + "kill:198.51.100.81")
        self.assertTrue(3500 < ttl <= 3600, "TTL %r" % ttl)
        self.assertEqual(self.r.call("EXISTS", PREFIX + "kill:198.51.100.82"), 0,
                         "expired entry migrated")
        self.assertEqual(self.r.call("EXISTS", PREFIX + "kill:@spam.example"), 1)
        self.assertEqual(self.r.call("EXISTS", PREFIX + "accept:198.51.100.90"), 1)
        wait_state([B], "198.51.100.80", True, 1.0, what="migrated entry")

        # export -> import round trip (into DB 1), export again: same entries and attributes
        exp1 = A.cli_ok("kill", "export")
        self.assertGreaterEqual(len(exp1.stdout.splitlines()), 10000)
        ovr = ("lists=redis://127.0.0.1:%d/1" % self.redis.port,)
        r = A.cli_ok("kill", "import", "-", inp=exp1.stdout, overrides=ovr)
        exp2 = A.cli_ok("kill", "export", overrides=ovr)

        def norm(text):
            # export lines are import lines: ENTRY [--ttl SECONDS] [--reason TEXT]
            out = {}
            for l in text.splitlines():
                if not l.strip() or l.startswith("#"):
                    continue
                m = re.match(r"^(\S+)(?: --ttl (\d+))?(?: --reason (.*))?$", l)
                self.assertIsNotNone(m, "unexpected export line %r" % l)
                out[m.group(1)] = (int(m.group(2)) if m.group(2) else None, m.group(3))
            return out
        n1, n2 = norm(exp1.stdout), norm(exp2.stdout)
        self.assertEqual(set(n1), set(n2), "entries differ after the round trip")
        diff = [(e, n1[e], n2[e]) for e in n1
                if n1[e][1] != n2[e][1] or (n1[e][0] is None) != (n2[e][0] is None) or
                (n1[e][0] is not None and abs(n1[e][0] - n2[e][0]) > 3)]
        self.assertEqual(diff[:5], [], "%d entries changed reason or expiry in the round trip"
                         % len(diff))
        l1 = A.cli_ok("kill", "list").stdout
        l2 = A.cli_ok("kill", "list", overrides=ovr).stdout

        def origins(text):
            return {l.split()[0]: re.search(r"origin=(\S+)", l).group(1)
                    for l in text.splitlines() if "origin=" in l}
        o1, o2 = origins(l1), origins(l2)
        changed = sum(1 for e in o1 if o1[e] != o2.get(e))
        say("g: export -> import -> export: %d entries, same reasons and expiry times"
            % len(n1))
        if changed:
            say("g: NOTE: the round trip rewrote origin (and added) of %d/%d entries, e.g. %s "
                "-> origin=%s: export writes 'ENTRY --ttl REMAINING --reason TEXT', dropping "
                "origin and added" % (changed, len(o1), next(e for e in o1 if o1[e] != o2.get(e)),
                                      o2.get(next(e for e in o1 if o1[e] != o2.get(e)))))
        self.r.call("SELECT", 1)
        self.r.call("FLUSHDB")
        self.r.call("SELECT", 0)

        # export --full -> import (into DB 2): a restore keeps origin and added too
        full1 = A.cli_ok("kill", "export", "--full").stdout
        self.assertIn(" origin=", full1)
        ovr2 = ("lists=redis://127.0.0.1:%d/2" % self.redis.port,)
        A.cli_ok("kill", "import", "-", inp=full1, overrides=ovr2)
        full2 = A.cli_ok("kill", "export", "--full", overrides=ovr2).stdout
        l1, l2 = set(full1.splitlines()), set(full2.splitlines())
        self.assertEqual(len(l1), len(l2))
        self.assertEqual(sorted(l1 - l2)[:3], [], "changed by the full round trip: %r -> %r" % (
            sorted(l1 - l2)[:3], sorted(l2 - l1)[:3]))
        self.assertTrue(any("origin=auto-ban" in l or "origin=admin" in l for l in l1),
                        "no entry of another origin than import to check")
        say("g: export --full -> import -> export --full: %d entries, identical lines" % len(l1))
        self.r.call("SELECT", 2)
        self.r.call("FLUSHDB")
        self.r.call("SELECT", 0)

    # h -----------------------------------------------------------------

    def test_h_additions_on_top_then_changes(self):
        """New keys are compiled on top of the last full list (no rebuild of
        it); a changed or removed key rebuilds everything. Each step must be
        enforced on the other node either way."""
        A, B = self.A, self.B
        net, one, other = "198.51.100.0/24", "198.51.100.7", "198.51.100.8"
        for ip in (one, other):
            self.assertFalse(B.refuses(ip))
        mark = B.log_size()
        A.cli_ok("kill", "add", net, "--reason", "h base")
        wait_state([B], other, True, 1.0, time.monotonic(), "h: /24 added")
        time.sleep(0.3)     # both announcements of the /24 (keyspace event, PUBLISH) are in
        mark = B.log_size()
        A.cli_ok("kill", "add", one, "--reason", "h narrow")
        wait_state([B], one, True, 1.0, time.monotonic(), "h: /32 added")
        m = B.wait_log(r"lists reloaded: (\d+) kill.*additions compiled", mark)
        time.sleep(0.3)
        count = max(int(x) for x in re.findall(r"lists reloaded: (\d+) kill", B.log_since(mark)))
        # the same key again (new reason): a change, not an addition -- the
        # count stays and B still refuses
        mark = B.log_size()
        A.cli_ok("kill", "add", one, "--reason", "h narrow again")
        B.wait_log(r"lists reloaded: (\d+) kill.*snapshot built", mark)
        time.sleep(0.3)
        seen = B.log_since(mark)
        self.assertEqual(set(int(x) for x in re.findall(r"lists reloaded: (\d+) kill", seen)),
                         {count}, "re-adding a key changed the count:\n" + seen[-2000:])
        self.assertNotIn("additions compiled", seen, "a re-added key taken for a new one")
        self.assertTrue(B.refuses(one))
        # a changed key: full rebuild, still enforced
        mark = B.log_size()
        r = self.rcli("HSET", PREFIX + "kill:" + one, "reason", "h changed")
        self.assertEqual(r.returncode, 0, r.stderr)
        B.wait_log(r"lists reloaded: .*snapshot built", mark)
        self.assertTrue(B.refuses(one))
        # the /24 removed: its other addresses are free again, the /32 stays
        A.cli_ok("kill", "del", net)
        wait_state([B], other, False, 1.0, time.monotonic(), "h: /24 removed")
        self.assertTrue(B.refuses(one))
        # an accept entry added on top beats the kill entry below it
        A.cli_ok("accept", "add", one, "--reason", "h vouched")
        wait_state([B], one, False, 1.0, time.monotonic(), "h: accept added")
        A.cli_ok("accept", "del", one)
        wait_state([B], one, True, 1.0, time.monotonic(), "h: accept removed")
        A.cli_ok("kill", "del", one)
        wait_state([A, B], one, False, 1.0, time.monotonic(), "h: cleaned up")

    # i -----------------------------------------------------------------

    def test_i_resync_interval_stretches_for_big_lists(self):
        """The periodic full resync is a safety net; when a full load takes a
        while it runs at most 5 % of the time (20 loads' time apart), said
        once in the log, and lists stay enforced."""
        db = "3"
        c = Node("C", self.dir, self.redis.port, lists="redis://127.0.0.1:%d/%s" % (
            self.redis.port, db), lists_resync="1s")
        path = os.path.join(self.dir, "i-import.txt")
        with open(path, "w") as f:
            for i in range(60000):
                f.write("10.%d.%d.0/24\n" % (i // 256, i % 256))
        try:
            c.start()
            mark = c.log_size()
            c.cli_ok("kill", "import", path, "--reason", "feed i")
            m = c.wait_log(r"a full load takes ([\d.]+) s; resyncing every (\d+) s instead of "
                           r"every 1 s", mark, within=15.0)
            say("i: %s" % m.group(0))
            self.assertGreaterEqual(int(m.group(2)), 2)
            self.assertTrue(c.refuses("10.7.7.9"))
        finally:
            c.stop()
            self.rcli("-n", db, "FLUSHDB")

    # z -----------------------------------------------------------------

    def test_z_clean_exit_and_logs(self):
        for n in (self.A, self.B):
            rc = n.stop()
            self.assertEqual(rc, 0, "%s exit status on SIGTERM" % n.name)
            text = n.log_since(0)
            m = SANITIZER_RE.search(text)
            self.assertIsNone(m, "%s log:\n%s" % (n.name, text[max(0, m.start() - 200):][:4000]
                                                  if m else ""))
            self.assertEqual([c for c in n.exit_codes if c != 0], [], n.name)


if __name__ == "__main__":
    sys.exit(runner.main(tools=(REDIS_SERVER, REDIS_CLI)))
