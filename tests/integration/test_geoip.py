#!/usr/bin/python3
"""GeoIP: the client's country from geoip_database, through every door.

Tiny .mmdb files are written with scripts/geoip-mmdb.pl (Debian's
libmaxmind-db-writer-perl), the same script `make run` builds the demo's
country database with.  One lab: a private Postfix with the milter in front
of an smtp-sink, and one portcullisd running the milter, the SMTP gateway
(relayhost = the sink) and the policy door.  Asserts what clients were told,
what reached the sink, what `explain` printed and what the daemon logged.
T4Redis runs a second daemon (policy door) on a private redis-server, where
country entries are pushed with plain redis-cli and by the CLI.

Run:  python3 tests/integration/test_geoip.py [-v] [Class[.test_name] ...]
Env:  PORTCULLIS_BIN (default <repo>/bin), KEEP_LAB=1, LAB_VERBOSE=1
Last line printed: "N passed, N failed"; exit status 1 on any failure.

The database (client addresses are loopback; IPv6 ones reach the policy door
and `explain` as text):
    127.0.0.5  XX   kill list: country:XX
    127.0.0.6  YY   accept list: country:YY (may relay)
    127.0.0.7  XX   accept list by address: the accept list comes first
    127.0.0.8  WW   becomes XX when the file is replaced
    127.0.0.9  --   not in the database
    2001:db8::/64   ZZ (IPv6), ::ffff:127.0.0.5 is 127.0.0.5 (v4-mapped)
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import daemon as hdaemon, runner            # noqa: E402
from harness.client import SmtpClient, make_message, new_marker  # noqa: E402
from harness.ports import free_port                      # noqa: E402
from harness.postfix import Lab, daemon_config_text      # noqa: E402
from harness.redis import RedisServer                    # noqa: E402

LAB = None
GW_PORT = None
POLICY_PORT = None
MMDB_SCRIPT = os.path.join(hdaemon.REPO, "scripts", "geoip-mmdb.pl")
SENDER = "sender@outside.test"
FOREIGN = "user@other.org"
LOCAL = "user@example.com"
LIST_DELAY = 1.0        # a list change is enforced within this (README)
RELOAD_DELAY = 3.0      # a replaced geoip_database is in force within this
HELO = "client.portcullis.test"

RANGES = [
    ("127.0.0.5", "127.0.0.5", "XX"),
    ("127.0.0.6", "127.0.0.6", "YY"),
    ("127.0.0.7", "127.0.0.7", "XX"),
    ("127.0.0.8", "127.0.0.8", "WW"),
    ("2001:db8::", "2001:db8::ffff:ffff:ffff:ffff", "ZZ"),
]


def write_mmdb(path, ranges, field=None):
    """ranges: (low, high, CC); written by the Perl writer, renamed into place."""
    fd, txt = tempfile.mkstemp(prefix="ranges.", suffix=".txt", dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as f:
        f.write("# test ranges\n")
        for r in ranges:
            f.write("%s,%s,%s\n" % r)
    cmd = ["perl", MMDB_SCRIPT] + (["--field", field] if field else []) + [path, txt]
    subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.unlink(txt)


def db_path():
    return LAB.path("GeoIP-test.mmdb")


def setUpModule():
    global LAB, GW_PORT, POLICY_PORT
    for exe in ("portcullisd", "portcullis"):
        p = hdaemon.exe(exe)
        if not os.access(p, os.X_OK):
            raise RuntimeError("%s is missing: build with `make` first" % p)
    LAB = Lab(milter=True, ipv6=False, name="portcullis-geoip")
    write_mmdb(db_path(), RANGES)
    GW_PORT = free_port()           # free_port never repeats one (the lab's included)
    POLICY_PORT = free_port()
    LAB.start_daemon(**daemon_overrides())


def daemon_overrides(**extra):
    o = {"services": "milter smtp policy",
         "smtp_listen": "127.0.0.1:%d" % GW_PORT,
         "policy_listen": "inet:127.0.0.1:%d" % POLICY_PORT,
         "relayhost": "[127.0.0.1]:%d" % LAB.sink_port,
         "myhostname": "mx.example.com",
         "geoip_database": db_path()}
    o.update(extra)
    return o


def tearDownModule():
    global LAB
    if LAB is None:
        return
    try:
        LAB.stop_daemon()
        reports = LAB.sanitizer_reports()
        if reports:
            print("SANITIZER REPORTS in %s:\n%s" % (LAB.daemon_log, "\n".join(reports[:20])))
            raise AssertionError("sanitizer reports in the daemon log")
    finally:
        LAB.close()
        LAB = None


def gw_client(source):
    return SmtpClient("127.0.0.1", GW_PORT, source, HELO)


def gw_mail(source, sender=SENDER):
    """Connect to the gateway from source, EHLO, MAIL: (code, text) of MAIL,
    or of the greeting when that is a refusal (a kill-listed client is
    refused at connect, whatever the entry)."""
    c = gw_client(source)
    try:
        code, text = c.connect()
        if code != 220:
            return code, text
        c.ehlo()
        return c.mail(sender)
    finally:
        c.close()


def policy_ask(client_address, recipient=FOREIGN, sender=SENDER):
    req = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
           "protocol_name": "ESMTP", "client_address": client_address,
           "client_name": "unknown", "helo_name": "client.test", "sender": sender,
           "recipient": recipient}
    s = socket.create_connection(("127.0.0.1", POLICY_PORT), timeout=5)
    try:
        s.sendall(("".join("%s=%s\n" % kv for kv in req.items()) + "\n").encode())
        buf = b""
        while b"\n\n" not in buf:
            d = s.recv(4096)
            if not d:
                break
            buf += d
    finally:
        s.close()
    return buf.decode().strip()


def explain(client, *extra):
    p = LAB.cli("explain", "--client", client, "--from", SENDER, "--rcpt", LOCAL, *extra,
                check=False)
    return p


def poll(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("%s: not within %.1fs" % (what, timeout))
        time.sleep(0.1)


KILL_TEXT = "550 5.7.1 Client host [127.0.0.5] (country XX) is on the kill list"
# the gateway refuses a kill-listed client in its greeting, as for kill-ip
GW_KILL_TEXT = "554" + KILL_TEXT[3:]


class T1Doors(unittest.TestCase):
    """kill add / accept add country:XX, seen through each door."""

    @classmethod
    def setUpClass(cls):
        LAB.kill_add("country:xx", reason="geoip test")      # canonical: country:XX
        LAB.accept_add("country:YY")
        LAB.accept_add("127.0.0.7")
        time.sleep(LIST_DELAY)

    @classmethod
    def tearDownClass(cls):
        LAB.kill_del("country:XX", check=False)
        LAB.accept_del("country:YY", check=False)
        LAB.accept_del("127.0.0.7", check=False)

    def test_01_entries_are_canonical(self):
        self.assertIn("country:XX", LAB.kill_list())
        self.assertIn("country:YY", LAB.accept_list())
        p = LAB.cli("kill", "add", "country:XYZ", check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("two-letter country code", p.stderr)

    def test_02_gateway_refuses_killed_country_and_logs_it(self):
        mark = LAB.log_mark()
        code, text = gw_mail("127.0.0.5")
        self.assertEqual("%d %s" % (code, text), GW_KILL_TEXT)
        log = poll(lambda: [l for l in LAB.daemon_log_since(mark).splitlines()
                            if "reason=kill-country" in l], 5, "verdict log line")
        self.assertIn("from unknown[127.0.0.5]", log[0])
        self.assertIn(" country=XX ", log[0])

    def test_03_other_and_unknown_countries_pass(self):
        for src in ("127.0.0.8", "127.0.0.9"):
            code, text = gw_mail(src)
            self.assertEqual(code, 250, "%s: %d %s" % (src, code, text))

    def test_04_accept_listed_address_beats_killed_country(self):
        code, text = gw_mail("127.0.0.7")
        self.assertEqual(code, 250, text)

    def test_05_accept_listed_country_relays_through_the_gateway(self):
        m = new_marker("geo-relay")
        c = gw_client("127.0.0.6")
        c.connect()
        c.ehlo()
        self.assertEqual(c.mail(SENDER)[0], 250)
        self.assertEqual(c.rcpt(FOREIGN)[0], 250, c.transcript())
        code, text = c.data(make_message(m, to=FOREIGN))
        c.quit()
        self.assertEqual(code, 250, text)
        got = LAB.wait_for_message(m)
        self.assertIn(FOREIGN, got[0].text)
        # a client of another country may not relay
        c = gw_client("127.0.0.8")
        c.connect()
        c.ehlo()
        c.mail(SENDER)
        code, text = c.rcpt(FOREIGN)
        c.quit()
        self.assertEqual(code, 550, text)
        self.assertIn("Relay access denied", text)

    def test_06_policy_door_ipv4_ipv6_and_v4_mapped(self):
        self.assertEqual(policy_ask("127.0.0.5"),
                         "action=" + KILL_TEXT)
        # Postfix may write a v4-mapped address: the same client, the same country
        self.assertEqual(policy_ask("::ffff:127.0.0.5"), "action=" + KILL_TEXT)
        self.assertEqual(policy_ask("127.0.0.6"), "action=OK")       # accept-listed: relays
        # not listed: Postfix's own relay rules decide
        self.assertEqual(policy_ask("2001:db8::7"), "action=DUNNO")
        LAB.kill_add("country:ZZ")
        try:
            poll(lambda: "(country ZZ)" in policy_ask("2001:db8::7"), LIST_DELAY + 2,
                 "IPv6 client's country refused")
            self.assertEqual(policy_ask("2001:db8::7"),
                             "action=550 5.7.1 Client host [2001:db8::7] (country ZZ) "
                             "is on the kill list")
        finally:
            LAB.kill_del("country:ZZ")

    def test_07_explain_shows_the_country(self):
        for client, cc in (("127.0.0.5", "XX"), ("::ffff:127.0.0.5", "XX"),
                           ("2001:db8::1", "ZZ"), ("127.0.0.6", "YY")):
            p = explain(client)
            self.assertIn("country=%s\n" % cc, p.stdout, client)
        p = explain("127.0.0.9")
        self.assertIn("country=unknown\n", p.stdout)
        p = explain("127.0.0.5")
        self.assertIn(KILL_TEXT[:3], p.stdout)
        self.assertIn("[kill-country]", p.stdout)
        self.assertEqual(p.returncode, 1)
        # --country: what if the client were elsewhere
        p = explain("127.0.0.9", "--country", "xx")
        self.assertIn("country=XX (--country)", p.stdout)
        self.assertIn("(country XX) is on the kill list [kill-country]", p.stdout)

    def test_08_postfix_milter_refuses_killed_country(self):
        m = new_marker("geo-milter")
        c = LAB.send("127.0.0.5", SENDER, [LOCAL], make_message(m))
        st = c.step("MAIL")
        self.assertIsNotNone(st, c.transcript())
        self.assertEqual("%d %s" % (st.code, st.text), KILL_TEXT, c.transcript())
        # the accept-listed country's mail goes through Postfix to the sink
        m2 = new_marker("geo-milter-ok")
        c = LAB.send("127.0.0.6", SENDER, [FOREIGN], make_message(m2, to=FOREIGN))
        self.assertEqual(c.step("<message>").code, 250, c.transcript())
        LAB.wait_for_message(m2)
        LAB.assert_never_delivered(m)


class T2Reload(unittest.TestCase):
    """A replaced geoip_database is in force within seconds; one that does
    not open is logged and the previous one stays."""

    @classmethod
    def setUpClass(cls):
        LAB.kill_add("country:XX")
        time.sleep(LIST_DELAY)

    @classmethod
    def tearDownClass(cls):
        LAB.kill_del("country:XX", check=False)
        write_mmdb(db_path(), RANGES)

    def test_01_replaced_file_is_reloaded_live(self):
        self.assertEqual(gw_mail("127.0.0.8")[0], 250)
        mark = LAB.log_mark()
        write_mmdb(db_path(), [r if r[0] != "127.0.0.8" else ("127.0.0.8", "127.0.0.8", "XX")
                               for r in RANGES])
        t0 = time.monotonic()
        code, text = poll(lambda: (lambda r: r if r[0] == 554 else None)(gw_mail("127.0.0.8")),
                          RELOAD_DELAY, "the new database")
        self.assertIn("(country XX)", text)
        sys.stderr.write("[reload seen after %.1fs] " % (time.monotonic() - t0))
        poll(lambda: "geoip_database %s reloaded" % db_path() in LAB.daemon_log_since(mark),
             2, "reload log line")

    def test_02_corrupt_replacement_keeps_the_old_database(self):
        mark = LAB.log_mark()
        tmp = db_path() + ".new"
        with open(tmp, "wb") as f:
            f.write(b"\x00not a maxmind database" * 100)
        os.rename(tmp, db_path())
        poll(lambda: "cannot reload" in LAB.daemon_log_since(mark), RELOAD_DELAY + 2,
             "reload error logged")
        log = LAB.daemon_log_since(mark)
        self.assertIn(db_path(), log)
        self.assertIn("previous database stays in force", log)
        code, text = gw_mail("127.0.0.5")
        self.assertEqual("%d %s" % (code, text), GW_KILL_TEXT)
        self.assertTrue(LAB.daemon_alive())
        # and a good file after the bad one is taken again
        write_mmdb(db_path(), RANGES)
        poll(lambda: "reloaded" in LAB.daemon_log_since(mark), RELOAD_DELAY + 2,
             "good file after a bad one")


class T3Start(unittest.TestCase):
    """geoip_database problems at start: exit 1, the file named."""

    def start_with(self, *flags, **o):
        d = tempfile.mkdtemp(prefix="geo-start.", dir=LAB.dir)
        conf = os.path.join(d, "portcullis.cf")
        port = free_port()
        with open(conf, "w") as f:
            f.write(daemon_config_text(port, d, **o))
        os.mkdir(os.path.join(d, "lists"))
        return hdaemon.run_bin("portcullisd", "-c", conf, "-f", *flags)

    def test_01_missing_database(self):
        missing = os.path.join(LAB.dir, "no-such.mmdb")
        p = self.start_with(geoip_database=missing)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("geoip_database: %s: No such file or directory" % missing, p.stderr)
        # the configuration check (-t) says the same
        p = self.start_with("-t", geoip_database=missing)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("geoip_database: %s: No such file or directory" % missing, p.stderr)

    def test_02_corrupt_database(self):
        bad = os.path.join(LAB.dir, "corrupt.mmdb")
        with open(bad, "wb") as f:
            f.write(os.urandom(4096))
        p = self.start_with(geoip_database=bad)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("geoip_database: %s: not a MaxMind DB file" % bad, p.stderr)

    def test_03_other_layout_with_geoip_country_field(self):
        other = os.path.join(LAB.dir, "other-layout.mmdb")
        write_mmdb(other, [("127.0.0.5", "127.0.0.5", "QQ")], field="location.cc")
        p = LAB.cli("-o", "geoip_database=" + other, "-o", "geoip_country_field=location.cc",
                    "explain", "--client", "127.0.0.5", "--from", SENDER, "--rcpt", LOCAL,
                    check=False)
        self.assertIn("country=QQ\n", p.stdout, p.stderr)
        # the default field finds nothing in that layout
        p = LAB.cli("-o", "geoip_database=" + other, "explain", "--client", "127.0.0.5",
                    "--from", SENDER, "--rcpt", LOCAL, check=False)
        self.assertIn("country=unknown\n", p.stdout, p.stderr)


class T4Redis(unittest.TestCase):
    """country:XX entries shared through Redis like any other: pushed with
    plain redis-cli, or by the CLI, and enforced by a daemon on that Redis."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="geo-redis.", dir=LAB.dir)
        cls.redis = RedisServer(cls.dir)
        cls.redis.start()
        cls.redis_port = cls.redis.port
        cls.policy_port = free_port()
        cls.conf = os.path.join(cls.dir, "portcullis.cf")
        cls.d = hdaemon.Daemon("geo-redis", dir=cls.dir, port=cls.policy_port, conf=cls.conf,
                               text=daemon_config_text(
            free_port(), cls.dir, services="policy", milter_listen=None,
            policy_listen="inet:127.0.0.1:%d" % cls.policy_port,
            lists="redis://127.0.0.1:%d/0" % cls.redis_port,
            geoip_database=db_path()))
        os.mkdir(os.path.join(cls.dir, "state"))
        cls.d.start()           # the policy door listens

    @classmethod
    def tearDownClass(cls):
        cls.d.stop(10)
        cls.redis.kill()
        reports = cls.d.sanitizer_lines()
        if reports:
            raise AssertionError("sanitizer reports:\n" + "\n".join(reports[:20]))

    @classmethod
    def rcli(cls, *args):
        p = subprocess.run(["redis-cli", "-p", str(cls.redis_port)] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=10)
        return p.stdout.strip()

    def ask(self, client):
        global POLICY_PORT
        saved, POLICY_PORT = POLICY_PORT, self.policy_port
        try:
            return policy_ask(client)
        finally:
            POLICY_PORT = saved

    def test_01_pushed_with_redis_cli(self):
        self.assertEqual(self.ask("127.0.0.5"), "action=DUNNO")
        self.rcli("HSET", "portcullis:kill:country:XX", "origin", "admin", "reason", "by hand")
        self.rcli("PUBLISH", "portcullis:changes", "kill country:XX")
        poll(lambda: self.ask("127.0.0.5") == "action=" + KILL_TEXT, LIST_DELAY + 1,
             "country entry pushed with redis-cli")
        self.rcli("DEL", "portcullis:kill:country:XX")
        self.rcli("PUBLISH", "portcullis:changes", "kill country:XX")
        poll(lambda: self.ask("127.0.0.5") == "action=DUNNO", LIST_DELAY + 1, "entry removed")

    def test_02_cli_writes_the_documented_key(self):
        p = self.d.cli("accept", "add", "country:yy", "--ttl", "1h", check=False, timeout=20)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(self.rcli("EXISTS", "portcullis:accept:country:YY"), "1")
        ttl = int(self.rcli("TTL", "portcullis:accept:country:YY"))
        self.assertTrue(3500 < ttl <= 3600, ttl)
        poll(lambda: self.ask("127.0.0.6") == "action=OK", LIST_DELAY + 1,
             "accept-listed country through Redis")


CASES = (T1Doors, T2Reload, T3Start, T4Redis)


if __name__ == "__main__":
    sys.exit(runner.main(cases=CASES, cleanup=lambda: LAB is not None and LAB.close()))
