#!/usr/bin/python3
"""Counters of many gateways summed through Redis (issue 9, "Counters").

A private redis-server and two daemons (two state_dirs, node_name gw-a and
gw-b, the same Redis): each publishes its counters as PREFIXstats:NODE.
What an admin sees:
  - `portcullis stats` prints the sum of the live nodes, `--per-node` each,
    `--node NAME` one;
  - a node that dies ages out after three stats_publish_interval;
  - Redis down: `portcullis stats` prints this node's counters, says so on
    stderr, and exits 0.

Run: python3 tests/integration/test_stats_redis.py   (PORTCULLIS_BIN as for the others)
"""
import os
import smtplib
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_redis_lists import Node, wait_until  # noqa: E402
from harness import runner  # noqa: E402  (test_redis_lists put tests/ on the path)
from harness.daemon import SANITIZER_RE  # noqa: E402
from harness.ports import free_port  # noqa: E402
from harness.redis import PREFIX, REDIS_CLI, REDIS_SERVER, RedisServer  # noqa: E402

RELAY = 'verdicts_total{door="smtp",stage="RCPT",action="reject",reason="relay"}'


def parse(text, per_node=False):
    """`portcullis stats` lines -> {series: value} (or {(node, series): value})."""
    out = {}
    for line in text.splitlines():
        if per_node:        # "NODE SERIES VALUE"
            node, rest = line.split(" ", 1)
            series, value = rest.rsplit(" ", 1)
            out[(node, series)] = int(value)
        else:
            series, value = line.rsplit(" ", 1)
            out[series] = int(value)
    return out


class StatsRedis(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="portcullis-statsredis-")
        cls.redis = RedisServer(cls.dir)
        cls.redis.start()
        cls.nodes = {}
        for name in ("gw-a", "gw-b"):
            smtp = free_port()
            n = Node(name, cls.dir, cls.redis.port, services="milter smtp",
                     smtp_listen="127.0.0.1:%d" % smtp, node_name=name,
                     stats_publish_interval="1", myhostname="mx.example.com")
            n.smtp = smtp
            n.start()
            cls.nodes[name] = n

    @classmethod
    def tearDownClass(cls):
        for n in cls.nodes.values():
            n.stop()
            log = n.log_since(0)
            if SANITIZER_RE.search(log):
                raise AssertionError("sanitizer report in %s:\n%s" % (n.name, log[-3000:]))
        cls.redis.kill()

    def refuse_relays(self, node, count):
        """count RCPTs to a foreign domain from a client outside relay_networks."""
        s = smtplib.SMTP("127.0.0.1", node.smtp, timeout=10)
        s.ehlo("client.test")
        s.mail("sender@outside.test")
        for i in range(count):
            code, _ = s.rcpt("user%d@elsewhere.test" % i)
            self.assertEqual(code // 100, 5, "relay not refused")
        s.quit()

    def stats(self, node, *args):
        r = node.cli("stats", *args)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r

    def test_1_sum_per_node_and_ageing(self):
        a, b = self.nodes["gw-a"], self.nodes["gw-b"]
        self.refuse_relays(a, 2)
        self.refuse_relays(b, 3)
        # each node's own file counts its own refusals
        wait_until(lambda: parse(a.cli("stats", "--node", "gw-a").stdout).get(RELAY) == 2,
                   10, 0.2, "gw-a's counters in Redis")
        wait_until(lambda: parse(a.cli("stats", "--node", "gw-b").stdout).get(RELAY) == 3,
                   10, 0.2, "gw-b's counters in Redis")
        # the sum, from either node
        for n in (a, b):
            total = parse(self.stats(n).stdout)
            self.assertEqual(total.get(RELAY), 5, total)
            self.assertEqual(total.get('connections_total{door="smtp"}'), 2, total)
        per = parse(self.stats(a, "--per-node").stdout, per_node=True)
        self.assertEqual(per.get(("gw-a", RELAY)), 2, per)
        self.assertEqual(per.get(("gw-b", RELAY)), 3, per)
        # the keys as documented: a hash per node, with a TTL
        r = self.redis.client()
        self.assertEqual(r.call("HGET", PREFIX + "stats:gw-b", RELAY), b"3")
        ttl = r.call("TTL", PREFIX + "stats:gw-b")
        self.assertTrue(0 < ttl <= 3, ttl)
        r.close()
        # an unknown node: an error, not an empty list
        self.assertEqual(a.cli("stats", "--node", "gw-z").returncode, 1)
        # gw-b dies without a goodbye: after its TTL (3 intervals) the sum drops it
        b.kill_now()
        b.logf.close()
        wait_until(lambda: parse(a.cli("stats").stdout).get(RELAY) == 2, 10, 0.3,
                   "the dead node to age out of the sum")
        per = parse(self.stats(a, "--per-node").stdout, per_node=True)
        self.assertNotIn(("gw-b", RELAY), per)
        b.start()

    def test_2_redis_down(self):
        a = self.nodes["gw-a"]
        self.refuse_relays(a, 1)
        local = parse(a.cli("stats", "--node", "gw-a").stdout)
        self.redis.kill()
        try:
            mark = a.log_size()
            r = a.cli("stats")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("this node's counters only", r.stderr)
            self.assertIn("Redis", r.stderr)
            mine = parse(r.stdout)
            self.assertGreaterEqual(mine.get(RELAY, 0), 3, mine)   # 2 + 1, gw-a only
            self.assertIn("start_time_seconds", mine)               # the local file's form
            self.assertGreaterEqual(local.get(RELAY, 0), 2)
            # publishing fails quietly: one line, not one a second
            time.sleep(3.5)
            log = a.log_since(mark)
            self.assertLessEqual(log.count("counters not shared"), 1, log)
            # and mail still flows
            self.refuse_relays(a, 1)
        finally:
            self.redis.start()
        wait_until(lambda: parse(a.cli("stats", "--node", "gw-a").stdout).get(RELAY, 0) >= 4,
                   10, 0.3, "gw-a publishing again after Redis came back")


if __name__ == "__main__":
    sys.exit(runner.main(tools=(REDIS_SERVER, REDIS_CLI)))
