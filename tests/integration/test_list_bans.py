#!/usr/bin/python3
"""Auto-bans on the file store under load, and a lock held by someone else.

What it proves, with a real portcullisd (milter and smtp workers) on
`lists = file:DIR` and a kill list of BANS_LIST_SIZE entries (default 50,000):
  a  3,000 long-command bans from 3,000 client addresses, sent by 24 threads
     through the milter: every one is recorded (`portcullis kill list`) and
     every one is refused afterwards by the milter, and a sample of them by
     the SMTP gateway worker (from those source addresses); the CPU time and
     the bytes the daemon wrote are printed (a ban costs a journal line, not a
     list rewrite).
  b  a process holds DIR/.lock (python flock): a hand-edit of kill.list and a
     new auto-ban are still enforced within a second or two; the ban is
     written to the store once the lock is free.

Run: python3 tests/integration/test_list_bans.py [Class.test_name]
     PORTCULLIS_BIN=build/asan/bin python3 tests/integration/test_list_bans.py
     BANS_LIST_SIZE=200000 BANS=3000 for the figures in the README.
Last line: "N passed, N failed"; exit 1 on a failure.
"""
import fcntl
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import milterclient as mc  # noqa: E402
import test_redis_lists as rl  # noqa: E402
from test_redis_lists import Node, say, wait_until  # noqa: E402
from harness import runner  # noqa: E402  (tests/ is on the path: test_redis_lists put it there)
from harness.daemon import SANITIZER_RE  # noqa: E402
from harness.ports import free_port  # noqa: E402
WORKER_DIED = re.compile(r"worker \(pid \d+\) (killed by signal|exited with status)")
LIST_SIZE = int(os.environ.get("BANS_LIST_SIZE", "50000"))
BANS = int(os.environ.get("BANS", "3000"))
LONG_SENDER = "<" + "x" * 585 + "@outside.test>"


def long_mail(port, ip):
    with mc.MilterClient("127.0.0.1", port, timeout=10) as c:
        c.connect(ip)
        c.helo("client.test")
        v = c.mail(LONG_SENDER, macros={"i": "4QUEUE", "{mail_addr}": LONG_SENDER[1:-1]})
        c.quit()
    return v


def family(pid):
    """pid and its children (the workers)."""
    out = [pid]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    st = f.read()
                if int(st.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def usage(pids):
    """(CPU seconds, bytes written) summed over pids."""
    cpu, wchar = 0.0, 0
    tick = os.sysconf("SC_CLK_TCK")
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            with open("/proc/%d/io" % p) as f:
                for line in f:
                    if line.startswith("wchar:"):
                        wchar += int(line.split()[1])
        except OSError:
            pass
    return cpu, wchar


class ListBans(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="portcullis-bans-")
        cls.lists = os.path.join(cls.dir, "lists")
        os.makedirs(cls.lists)
        now = int(time.time())
        with open(os.path.join(cls.lists, "kill.list"), "w") as f:
            f.write("# %d entries written by test_list_bans.py\n" % LIST_SIZE)
            for i in range(LIST_SIZE):
                f.write("10.%d.%d.%d added=%d expires=0 origin=import reason=feed\n"
                        % (i >> 16, (i >> 8) & 255, i & 255, now))
        cls.smtp_port = free_port()
        cls.node = Node("F", cls.dir, 0, lists="file:" + cls.lists,
                        services="milter, smtp", smtp_listen="127.0.0.1:%d" % cls.smtp_port,
                        delivery="maildir:" + os.path.join(cls.dir, "mail"))
        cls.node.start()

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()
        if os.environ.get("KEEP_LAB") == "1":
            print("kept %s" % cls.dir)
        else:
            shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        self.assertTrue(self.node.alive(), self.node.log_since()[-3000:])

    def listed(self):
        out = self.node.cli_ok("kill", "list").stdout
        return {l.split()[0]: l for l in out.splitlines() if l.strip()}

    def test_a_thousands_of_bans_all_recorded_and_enforced(self):
        node = self.node
        ips = ["127.%d.%d.%d" % (1 + i // 62500, i // 250 % 250, i % 250 + 1)
               for i in range(BANS)]
        pids = family(node.proc.pid)
        cpu0, w0 = usage(pids)
        log0 = node.log_size()
        errors, nxt, lock = [], [0], threading.Lock()

        def worker():
            while True:
                with lock:
                    if nxt[0] >= len(ips):
                        return
                    ip = ips[nxt[0]]
                    nxt[0] += 1
                try:
                    v = long_mail(node.port, ip)
                    if v[:2] != ("reject", "500"):
                        errors.append((ip, v))
                except Exception as e:      # noqa: BLE001
                    errors.append((ip, repr(e)))
        t0 = time.monotonic()
        threads = [threading.Thread(target=worker) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent = time.monotonic() - t0
        self.assertEqual(errors[:5], [], "%d errors" % len(errors))

        count = [0]

        def all_listed():
            have = self.listed()
            count[0] = sum(1 for ip in ips if ip in have and "origin=auto-ban" in have[ip])
            return count[0] == len(ips)
        try:
            wait_until(all_listed, 60, 0.5, "all %d bans in `kill list`" % len(ips))
        except AssertionError:
            pass
        recorded = time.monotonic() - t0
        time.sleep(0.5)
        cpu1, w1 = usage(pids)
        logged = node.log_size() - log0
        say("a: %d bans on a %d-entry list: sent in %.1f s, %d recorded after %.1f s; daemon "
            "CPU %.1f s, %.1f MB written (%.1f MB of it log lines)"
            % (len(ips), LIST_SIZE, sent, count[0], recorded, cpu1 - cpu0, (w1 - w0) / 1e6,
               logged / 1e6))
        self.assertEqual(count[0], len(ips), "bans recorded in the store")
        # enforced: every banned address is refused at MAIL by the milter
        refused = 0
        for ip in ips:
            v = node.mail(ip)
            if v[0] == "reject" and v[1] == "550" and rl.KILL_TEXT.match(v[2]):
                refused += 1
        self.assertEqual(refused, len(ips), "only %d of %d bans enforced" % (refused, len(ips)))
        # ... and by the other worker, the SMTP gateway (it followed the
        # journal): a sample, from the banned source addresses themselves
        greeted = []
        for ip in ips[::max(1, len(ips) // 60)]:
            s = socket.create_connection(("127.0.0.1", self.smtp_port), 5, source_address=(ip, 0))
            try:
                s.settimeout(5)
                greeting = s.recv(512).decode(errors="replace")
            finally:
                s.close()
            if not greeting.startswith("554 5.7.1"):
                greeted.append((ip, greeting.strip()))
        self.assertEqual(greeted, [], "the smtp worker does not enforce these bans")
        text = node.log_since(log0)
        self.assertNotIn("queue full", text)
        self.assertIsNone(SANITIZER_RE.search(text) or WORKER_DIED.search(text), text[-3000:])

    def test_b_lock_held_does_not_freeze_enforcement(self):
        node = self.node
        lockpath = os.path.join(self.lists, ".lock")
        hand, banned = "192.0.2.77", "192.0.2.78"
        self.assertFalse(node.refuses(hand))
        self.assertFalse(node.refuses(banned))
        mark = node.log_size()
        fd = os.open(lockpath, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # the ban first: on a watcher stuck on the lock nothing else moves
            v = long_mail(node.port, banned)
            self.assertEqual(v[:2], ("reject", "500"), v)
            t0 = time.monotonic()
            wait_until(lambda: node.refuses(banned), 2.0, 0.05, "ban enforced while locked")
            say("b: ban enforced %.3f s after the command, lock held" % (time.monotonic() - t0))
            with open(os.path.join(self.lists, "kill.list"), "a") as f:
                f.write("%s reason=hand-edit while locked\n" % hand)
            t0 = time.monotonic()
            wait_until(lambda: node.refuses(hand), 3.0, 0.05, "hand-edit enforced while locked")
            say("b: hand-edit enforced %.3f s after the write, lock held"
                % (time.monotonic() - t0))
            node.wait_log(r"ban\(s\) enforced on this node but not saved yet.*held by another",
                          mark, 3.0)
            time.sleep(1.0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        t0 = time.monotonic()
        wait_until(lambda: banned in self.listed(), 35, 0.2, "the ban saved after the unlock")
        say("b: ban in the store %.1f s after the lock was released" % (time.monotonic() - t0))
        self.assertIn("origin=auto-ban", self.listed()[banned])
        self.assertTrue(node.refuses(banned) and node.refuses(hand))

    def test_z_clean_exit(self):
        rc = self.node.stop()
        self.assertEqual(rc, 0)
        text = self.node.log_since(0)
        self.assertIsNone(SANITIZER_RE.search(text) or WORKER_DIED.search(text), text[-3000:])


if __name__ == "__main__":
    sys.exit(runner.main())
