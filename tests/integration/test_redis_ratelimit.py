#!/usr/bin/python3
"""Relay rate limits counted across two nodes through a real Redis.

relay_rate_limit = 6/1h for authenticated users: an authenticated user who
relays 3 recipients through node A and 3 through node B has used the limit,
and the 7th relayed recipient is refused 452 4.7.1 by either node. Local
recipients never count; another user has a limit of its own; an override
(@big.example:20/1h) lifts the domain's users. Also: with Redis killed, the
nodes keep answering (counting locally), never tempfailing for Redis.

Plays the MTA with milterclient.py; {auth_authen} arrives at MAIL as from
Postfix. Last line: "N passed, N failed".
"""
import os
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from milterclient import MilterClient                       # noqa: E402
import test_redis_lists as rl                                # noqa: E402
from harness import runner                                   # noqa: E402  (on the path now)
from harness.redis import RedisServer                        # noqa: E402

SYNC = 1.2	# counters are shared twice a second; allow a little more


def relay(node, user, rcpts, ip="127.0.0.50"):
    """One authenticated transaction through node: the RCPT replies."""
    out = []
    with MilterClient("127.0.0.1", node.port, timeout=5) as c:
        c.connect(ip)
        c.helo("client.test")
        m = c.mail("<%s>" % user, macros={"i": "4RATE1", "{mail_addr}": user,
                                         "{auth_authen}": user})
        if m not in (None, ("continue",)):
            return [m]
        for r in rcpts:
            out.append(c.rcpt("<%s>" % r))
        c.quit()
    return out


def ok(reply):
    return reply in (None, ("continue",))


class RateLimitAcrossNodes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="portcullis-rate-")
        os.chmod(cls.work, 0o755)
        cls.redis = RedisServer(cls.work)
        cls.redis.start()
        extra = {"relay_rate_limit": "6/1h",
                 "relay_rate_limit_overrides": "@big.example:20/1h"}
        cls.A = rl.Node("A", cls.work, cls.redis.port, **extra)
        cls.B = rl.Node("B", cls.work, cls.redis.port, **extra)
        cls.A.start()
        cls.B.start()

    @classmethod
    def tearDownClass(cls):
        for n in (cls.A, cls.B):
            n.stop()
        cls.redis.kill()

    def test_a_limit_holds_across_nodes(self):
        u = "alice@example.com"
        r1 = relay(self.A, u, ["r%d@other.org" % i for i in range(3)])
        self.assertTrue(all(ok(x) for x in r1), "A: %r" % r1)
        time.sleep(SYNC)
        r2 = relay(self.B, u, ["s%d@other.org" % i for i in range(3)] + ["local@example.com"])
        self.assertTrue(all(ok(x) for x in r2), "B: %r" % r2)
        time.sleep(SYNC)
        for node in (self.A, self.B):
            r3 = relay(node, u, ["t@other.org"])
            self.assertEqual((r3[0][0], r3[0][1]), ("tempfail", "452"), "%s: %r" % (node.name, r3))
            self.assertTrue(r3[0][2].startswith("4.7.1"), r3)
            self.assertIn("at most 6 recipients per 1h", r3[0][2])
        # local mail still flows for the same user
        r4 = relay(self.B, u, ["someone@example.com"])
        self.assertTrue(ok(r4[0]), r4)
        # another user has a count of their own
        r5 = relay(self.B, "bob@example.com", ["x@other.org"])
        self.assertTrue(ok(r5[0]), r5)

    def test_b_override_for_a_domain(self):
        u = "carol@big.example"
        r = relay(self.A, u, ["b%d@other.org" % i for i in range(10)])
        self.assertTrue(all(ok(x) for x in r), "override 20/1h: %r" % r)

    def test_c_redis_gone_counts_locally_never_tempfails(self):
        self.redis.kill()
        try:
            u = "dave@example.com"
            r = relay(self.A, u, ["d%d@other.org" % i for i in range(6)])
            self.assertTrue(all(ok(x) for x in r), "without Redis: %r" % r)
            r = relay(self.A, u, ["e@other.org"])
            self.assertEqual(r[0][1], "452", "the node's own count still limits: %r" % r)
            self.assertTrue(self.A.alive() and self.B.alive())
        finally:
            self.redis.start()


if __name__ == "__main__":
    sys.exit(runner.main())
