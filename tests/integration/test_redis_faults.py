#!/usr/bin/python3
"""Redis faults under the shared lists: what a node does when Redis closes,
dies or comes back empty.

What it proves, with a private redis-server and real portcullisd nodes
(helpers from test_redis_lists.py):
  a  Redis closes the daemon's idle command connection (CLIENT KILL TYPE
     normal, or its own `timeout 1`), then a client sends an over-long
     command: the worker survives (no use-after-free), the auto-ban is
     written to Redis through a re-opened connection and refused by the
     other node.
  b  Redis dies in the middle of `portcullis kill import`: the CLI exits 2
     with a message naming Redis and how far it got, no sanitizer report.
  c  an auto-ban while Redis is down is enforced at once, stays enforced
     across the resync from a Redis restarted empty, and is written to Redis
     (and reaches the other node) once Redis is back.
  d  with Redis down, `kill list`, `accept list` and `explain` answer from
     the node's copy (lists_cache) and say so and as of when; writes fail.
  RedisRestartedEmpty: Redis restarted without its data (the generation
     mark gone): both nodes keep enforcing their lists and log the loss;
     `lists reseed` pushes a node's copy back (reasons, expiry kept),
     `lists accept-empty` makes every node take the empty lists.

Run: python3 tests/integration/test_redis_faults.py [Class.test_name]
     PORTCULLIS_BIN=build/asan/bin python3 tests/integration/test_redis_faults.py
Last line: "N passed, N failed"; exit 1 on a failure.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import milterclient as mc  # noqa: E402
from test_redis_lists import Node, say, wait_state, wait_until  # noqa: E402
from harness import runner  # noqa: E402  (tests/ is on the path: test_redis_lists put it there)
from harness.daemon import BIN, SANITIZER_RE  # noqa: E402
from harness.redis import PREFIX, REDIS_CLI, REDIS_SERVER, RedisServer  # noqa: E402
WORKER_DIED = re.compile(r"worker \(pid \d+\) (killed by signal|exited with status)")


def long_mail(node, ip):
    """An over-long MAIL FROM from ip through node's milter: the long-command
    ban. Returns the milter's reply."""
    sender = "<" + "x" * 585 + "@outside.test>"
    with mc.MilterClient("127.0.0.1", node.port, timeout=3) as c:
        c.connect(ip)
        c.helo("client.test")
        v = c.mail(sender, macros={"i": "4QUEUE", "{mail_addr}": sender[1:-1]})
        c.quit()
    return v


class RedisFaults(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="portcullis-redisfaults-")
        cls.redis = RedisServer(cls.dir)
        cls.redis.start()
        # no periodic resync: nothing but the test's own traffic re-opens a
        # command connection that Redis closed
        cls.A = Node("A", cls.dir, cls.redis.port, lists_resync="1h")
        cls.B = Node("B", cls.dir, cls.redis.port, lists_resync="1h")
        cls.A.start()
        cls.B.start()

    @classmethod
    def tearDownClass(cls):
        for n in (cls.A, cls.B):
            n.stop()
        cls.redis.kill(signal.SIGTERM)
        if os.environ.get("KEEP_LAB") == "1":
            print("kept %s" % cls.dir)
        else:
            shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        if not self.redis.alive():
            self.redis.start()
        for n in (self.A, self.B):
            self.assertTrue(n.alive(), "%s is not running" % n.name)

    def rcall(self, *args):
        r = self.redis.client()
        try:
            return r.call(*args)
        finally:
            r.close()

    def idle_normal_clients(self):
        """Normal (not pub/sub) clients other than the asking one."""
        text = self.rcall("CLIENT", "LIST", "TYPE", "normal").decode()
        return len([l for l in text.splitlines() if "cmd=client" not in l])

    def assert_node_healthy(self, node, mark):
        text = node.log_since(mark)
        m = SANITIZER_RE.search(text) or WORKER_DIED.search(text)
        self.assertIsNone(m, "%s log:\n%s" % (node.name, text[max(0, m.start() - 300):][:5000]
                                              if m else ""))

    def ban_after_idle_close(self, ip, close):
        A, B = self.A, self.B
        marks = {n.name: n.log_size() for n in (A, B)}
        # one write first, so the command connection exists and then idles
        A.cli_ok("kill", "add", "192.0.2.250", "--reason", "warm-up")
        wait_state([A], "192.0.2.250", True, 2.0, what="warm-up entry")
        close()
        v = long_mail(A, ip)
        self.assertEqual(v[:2], ("reject", "500"), v)
        t0 = time.monotonic()
        wait_until(lambda: self.rcall("HGET", PREFIX + "kill:" + ip, "origin") == b"auto-ban",
                   3.0, 0.05, "the ban of %s in Redis" % ip)
        got = wait_state([B], ip, True, 2.0, t0, "ban reaching B")
        say("ban of %s after the command connection was closed: in Redis, refused by B "
            "after %.3f s" % (ip, got["B"]))
        time.sleep(0.3)
        for n in (A, B):
            self.assert_node_healthy(n, marks[n.name])
        ttl = self.rcall("TTL", PREFIX + "kill:" + ip)
        self.assertTrue(3500 < ttl <= 3600, "TTL of the ban: %r" % ttl)
        A.cli_ok("kill", "del", ip)
        A.cli_ok("kill", "del", "192.0.2.250")

    def test_a1_ban_after_client_kill(self):
        def close():
            killed = self.rcall("CLIENT", "KILL", "TYPE", "normal")
            say("CLIENT KILL TYPE normal closed %d connection(s)" % killed)
        self.ban_after_idle_close("198.51.100.61", close)

    def test_a2_ban_after_redis_timeout(self):
        def close():
            self.rcall("CONFIG", "SET", "timeout", "1")
            # Redis closes idle clients from its cron; subscribers are exempt
            wait_until(lambda: self.idle_normal_clients() == 0, 10, 0.1,
                       "Redis closing the idle command connections")
        try:
            self.ban_after_idle_close("198.51.100.62", close)
        finally:
            self.rcall("CONFIG", "SET", "timeout", "0")

    def test_b_import_while_redis_dies(self):
        A = self.A
        path = os.path.join(self.dir, "import-b.txt")
        n = 400000
        with open(path, "w") as f:
            for i in range(n):
                f.write("10.%d.%d.%d --reason bulk\n" % (i >> 16, (i >> 8) & 255, i & 255))
        cmd = [os.path.join(BIN, "portcullis"), "-c", A.conf, "kill", "import", path]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        probe = self.redis.client()
        try:
            wait_until(lambda: probe.call("DBSIZE") > 5000, 60, 0.01, "the import under way")
        finally:
            probe.close()
        self.redis.kill()
        out, err = p.communicate(timeout=60)
        say("import with Redis killed mid-way: exit %d, %s" % (p.returncode, err.strip()[-300:]))
        self.assertIsNone(SANITIZER_RE.search(err), err[-4000:])
        self.assertEqual(p.returncode, 2, out + err)
        self.assertRegex(err, r"portcullis: import stopped: Redis at 127\.0\.0\.1:\d+/0: .*"
                              r"entries confirmed written before")
        self.redis.start()
        # both nodes notice Redis again and keep serving
        wait_state([self.A, self.B], "192.0.2.251", False, 5.0, what="nodes after the restart")

    def test_c_ban_while_redis_down_is_kept_and_saved(self):
        A, B = self.A, self.B
        ip = "198.51.100.63"
        marks = {n.name: n.log_size() for n in (A, B)}
        self.redis.kill()
        time.sleep(0.3)
        v = long_mail(A, ip)
        self.assertEqual(v[:2], ("reject", "500"), v)
        wait_state([A], ip, True, 1.0, what="ban enforced on A with Redis down")
        time.sleep(1.0)
        self.redis.start()          # empty: no persistence in this lab
        t0 = time.monotonic()
        wait_until(lambda: self.rcall("HGET", PREFIX + "kill:" + ip, "origin") == b"auto-ban",
                   40.0, 0.1, "the waiting ban saved to Redis")
        got = wait_state([B], ip, True, 2.0, t0, "the saved ban reaching B")
        say("ban made while Redis was down: saved %.1f s after Redis came back, refused by B "
            "after %.1f s" % (time.monotonic() - t0, got["B"]))
        # A never stopped enforcing it, across its full resync from an empty Redis
        self.assertTrue(A.refuses(ip))
        A.wait_log(r"1 ban\(s\) enforced on this node but not saved yet", marks["A"], 1.0)
        for n in (A, B):
            self.assert_node_healthy(n, marks[n.name])
        A.cli_ok("kill", "del", ip)

    def test_d_reads_answer_from_the_local_copy_while_redis_is_down(self):
        A = self.A
        ip, ok = "198.51.100.64", "198.51.100.65"
        A.cli_ok("kill", "add", ip, "--reason", "test d")
        A.cli_ok("accept", "add", ok, "--reason", "partner")
        # the node's copy follows at its next full build (~10 s after changes)
        def cached():
            try:
                with open(A.cache_kill_list) as f:
                    return ip in f.read()
            except OSError:
                return False
        wait_until(cached, 45.0, 0.2, "the entry in A's local copy")  # ~10 s; more on a loaded machine
        self.redis.kill()
        where = r"cannot reach Redis at 127\.0\.0\.1:%d/0" % self.redis.port
        copy = r"the %s list below is this node's copy \(\S+lists-cache\), as of 20\d\d-"
        r = A.cli("kill", "list")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stderr, where + r".*; " + copy % "kill")
        self.assertRegex(r.stdout, r"(?m)^198\.51\.100\.64\s+origin=admin .*reason=test d$")
        r = A.cli("accept", "list")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stderr, copy % "accept")
        self.assertRegex(r.stdout, r"(?m)^198\.51\.100\.65\s")
        r = A.cli("explain", "--client", ip, "--from", "a@b.example", "--rcpt", "u@example.com")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stderr, copy % "kill")
        self.assertIn("kill list", r.stdout)
        say("d: with Redis down, kill list answers from the copy: %s"
            % r.stderr.splitlines()[0][-90:])
        # a write still fails, and says why
        r = A.cli("kill", "add", "198.51.100.66")
        self.assertEqual(r.returncode, 2)
        self.assertRegex(r.stderr, where)
        self.redis.start()      # empty: the nodes keep their lists until told
        wait_until(lambda: "this node's copy" not in A.cli("kill", "list").stderr, 10, 0.3,
                   "Redis back")
        A.cli("lists", "accept-empty")

    def test_z_clean_exit(self):
        for n in (self.A, self.B):
            rc = n.stop()
            self.assertEqual(rc, 0, "%s exit status on SIGTERM" % n.name)
            self.assert_node_healthy(n, 0)


class RedisRestartedEmpty(unittest.TestCase):
    """Redis restarted without its data: the nodes keep their lists until an
    admin says which lists are right (`lists reseed` / `lists accept-empty`)."""

    kept, vouched = "192.0.2.90", "192.0.2.91"

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="portcullis-redisempty-")
        cls.redis = RedisServer(cls.dir)
        cls.redis.start()
        cls.A = Node("A", cls.dir, cls.redis.port, lists_resync="2s")
        cls.B = Node("B", cls.dir, cls.redis.port, lists_resync="2s")
        cls.A.start()
        cls.B.start()

    @classmethod
    def tearDownClass(cls):
        for n in (cls.A, cls.B):
            n.stop()
        cls.redis.kill(signal.SIGTERM)
        if os.environ.get("KEEP_LAB") == "1":
            print("kept %s" % cls.dir)
        else:
            shutil.rmtree(cls.dir, ignore_errors=True)

    def rcall(self, *args):
        r = self.redis.client()
        try:
            return r.call(*args)
        finally:
            r.close()

    def restart_empty(self):
        marks = {n.name: n.log_size() for n in (self.A, self.B)}
        self.redis.kill()
        self.redis.start()      # no RDB, no AOF: empty
        self.assertEqual(self.rcall("DBSIZE"), 0)
        # reconnected (backoff from 0.1 s) and several full resyncs (2 s) later
        time.sleep(5.0)
        for n in (self.A, self.B):
            self.assertTrue(n.refuses(self.kept), "%s forgot its lists" % n.name)
        for n in (self.A, self.B):
            n.wait_log(r"the lists in the shared store are gone \(its generation mark \S+ "
                       r"vanished.*until `portcullis lists reseed` or `portcullis lists "
                       r"accept-empty`", marks[n.name], 5.0)
        return marks

    def test_a_kept_then_reseeded(self):
        A, B = self.A, self.B
        gen = self.rcall("GET", PREFIX + "generation")
        A.cli_ok("kill", "add", self.kept, "--reason", "must survive")
        A.cli_ok("kill", "add", "192.0.2.92", "--ttl", "1h", "--reason", "timed")
        wait_state([A, B], self.kept, True, 1.0, what="entry added")
        # the local copies follow (full resync every 2 s here)
        def cached(n):
            try:
                with open(n.cache_kill_list) as f:
                    return self.kept in f.read()
            except OSError:
                return False
        wait_until(lambda: cached(A) and cached(B), 8.0, 0.1, "the entry in both local copies")
        marks = self.restart_empty()
        self.assertTrue(gen, "no generation mark in Redis after the nodes started")
        say("Redis restarted empty: both nodes keep refusing %s and log the loss" % self.kept)
        r = B.cli_ok("lists", "reseed")
        say("B: " + r.stdout.strip())
        self.assertRegex(r.stdout, r"^lists reseed: 2 kill and 0 accept entries pushed from "
                                   r"\S+ \(this node's copy of 20\d\d-")
        self.assertEqual(self.rcall("HGET", PREFIX + "kill:" + self.kept, "reason"),
                         b"must survive")
        ttl = self.rcall("TTL", PREFIX + "kill:192.0.2.92")
        self.assertTrue(3000 < ttl <= 3600, ttl)
        self.assertNotEqual(self.rcall("GET", PREFIX + "generation"), gen)
        for n in (A, B):
            n.wait_log(r"lists are marked again", marks[n.name], 5.0)
        time.sleep(2.5)
        for n in (A, B):
            self.assertTrue(n.refuses(self.kept))
        r = A.cli("lists", "reseed")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("nothing to do", r.stderr)

    def test_b_accept_empty(self):
        A, B = self.A, self.B
        wait_state([A, B], self.kept, True, 1.0, what="state before")
        self.restart_empty()
        r = A.cli_ok("lists", "accept-empty")
        say("A: " + r.stdout.strip())
        self.assertRegex(r.stdout, r"^lists accept-empty: every node now enforces the store's "
                                   r"lists as they are \(0 kill, 0 accept entries\)")
        got = wait_state([A, B], self.kept, False, 3.0, what="empty lists accepted")
        say("accept-empty: both nodes accept %s again after %s" % (self.kept, got))
        self.assertEqual(A.cli("lists", "accept-empty").returncode, 1)

    def test_z_clean_exit(self):
        for n in (self.A, self.B):
            rc = n.stop()
            self.assertEqual(rc, 0, "%s exit status on SIGTERM" % n.name)
            text = n.log_since(0)
            m = SANITIZER_RE.search(text) or WORKER_DIED.search(text)
            self.assertIsNone(m, text[max(0, m.start() - 300):][:4000] if m else "")


if __name__ == "__main__":
    sys.exit(runner.main(tools=(REDIS_SERVER, REDIS_CLI)))
