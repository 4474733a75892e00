#!/usr/bin/env python3
"""The Postfix policy door's answers per second through a real Postfix.

Two private Postfix instances (tests/harness/postfix.py) side by side, the
same main.cf but for smtpd_relay_restrictions:

    no door     permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
    door        permit_mynetworks, permit_sasl_authenticated,
                check_policy_service inet:127.0.0.1:PORT, reject_unauth_destination

and portcullisd with `services = policy` behind the second.  SMTP clients on
127.0.0.5 (outside mynetworks = 127.0.0.1/32) pipeline MAIL, --rcpts RCPT
and RSET in one write per transaction, --sessions sessions in parallel, for
--seconds.  No DATA: what is measured is RCPT handling, where every RCPT
costs Postfix one policy request (one answer from the door).  Loads:

    local/no door    recipient in relay_domains, Postfix alone
    local/door       the same recipients; the door answers DUNNO to each
    relay/door       foreign recipients from an accept-listed client; the
                     door answers OK to each (relay granted by the door)

interleaved --repeats times; medians printed.  Every RCPT must get 250 (the
bench fails otherwise).  Then the door alone: --sessions raw connections
each pipelining requests straight at the policy socket.

    python3 tests/bench/policy_bench.py [--sessions 8] [--rcpts 50] [--seconds 5] [--repeats 3]

Not part of `make bench` (about a minute).  Needs root (Postfix) and
bin/portcullisd; PORTCULLIS_BIN as for the integration tests.
"""

import argparse
import os
import socket
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from harness.postfix import Lab                          # noqa: E402

OUTSIDE = "127.0.0.5"
TX_PER_CONN = 150     # below Postfix's junk-command limit (RSET) in the lab


class DoorLab(Lab):
    door = True

    def main_cf(self):
        door = ("check_policy_service inet:127.0.0.1:%d, " % self.milter_port) if self.door else ""
        self.main_cf_extra.update({
            "mynetworks": "127.0.0.1/32",
            "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, "
                                        + door + "reject_unauth_destination",
            "smtpd_policy_service_timeout": "10s",
            "smtpd_policy_service_max_idle": "300s",
            "smtpd_policy_service_default_action": "451 4.3.5 Server configuration problem",
            "default_process_limit": "200",
        })
        return super().main_cf()


class NoDoorLab(DoorLab):
    door = False


def read_replies(f, n):
    codes = []
    while len(codes) < n:
        line = f.readline()
        if not line:
            raise RuntimeError("connection closed after %d of %d replies" % (len(codes), n))
        if line[3:4] == b" ":
            codes.append(int(line[:3]))
    return codes


def smtp_worker(port, domain, rcpts, deadline, out, idx):
    done = 0
    bad = None
    while time.monotonic() < deadline and bad is None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((OUTSIDE, 0))
        s.connect(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        read_replies(f, 1)
        s.sendall(b"EHLO client.bench.test\r\n")
        read_replies(f, 1)
        batch = (b"MAIL FROM:<sender@outside.test>\r\n" + b"".join(
            b"RCPT TO:<u%d@%s>\r\n" % (i, domain.encode()) for i in range(rcpts)) + b"RSET\r\n")
        for _ in range(TX_PER_CONN):
            if time.monotonic() >= deadline:
                break
            s.sendall(batch)
            codes = read_replies(f, rcpts + 2)
            if any(c != 250 for c in codes):
                bad = "replies %s" % sorted(set(codes))
                break
            done += rcpts
        try:
            s.sendall(b"QUIT\r\n")
        except OSError:
            pass
        s.close()
    out[idx] = (done, bad)


def smtp_load(port, domain, args):
    out = [None] * args.sessions
    deadline = time.monotonic() + args.seconds
    t0 = time.monotonic()
    ts = [threading.Thread(target=smtp_worker, args=(port, domain, args.rcpts, deadline, out, i))
          for i in range(args.sessions)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    took = time.monotonic() - t0
    bad = [o[1] for o in out if o[1]]
    if bad:
        raise RuntimeError("a RCPT was not accepted: %s" % bad[0])
    return sum(o[0] for o in out) / took


def door_worker(port, deadline, out, idx):
    req = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
           b"client_address=127.0.0.5\nclient_name=unknown\nhelo_name=client.bench.test\n"
           b"sender=sender@outside.test\nrecipient=u@other.org\nqueue_id=\n"
           b"instance=1.2.3\nsize=0\n\n")
    batch = req * 100
    s = socket.create_connection(("127.0.0.1", port))
    n = 0
    while time.monotonic() < deadline:
        s.sendall(batch)
        want = 100
        buf = b""
        while buf.count(b"\n\n") < want:
            d = s.recv(65536)
            if not d:
                raise RuntimeError("door closed the connection")
            buf += d
        if buf.count(b"action=OK\n\n") != want:
            raise RuntimeError("unexpected answers: %r" % buf[:80])
        n += want
    s.close()
    out[idx] = n


def door_load(port, args):
    out = [0] * args.sessions
    deadline = time.monotonic() + args.seconds
    t0 = time.monotonic()
    ts = [threading.Thread(target=door_worker, args=(port, deadline, out, i))
          for i in range(args.sessions)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(out) / (time.monotonic() - t0)


def worker_cpu(master_pid):
    """CPU seconds used so far by the daemon's worker(s) (children of the master)."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                st = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(st[1]) == master_pid:
            total += (int(st[11]) + int(st[12])) / tck
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--rcpts", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    plain = NoDoorLab(milter=False, ipv6=False, name="portcullis-policy-bench")
    door = DoorLab(milter=False, ipv6=False, name="portcullis-policy-bench")
    try:
        door.start_daemon(services="policy", milter_listen=None, log_level="warn",
                          policy_listen="inet:127.0.0.1:%d" % door.milter_port)
        door.accept_add(OUTSIDE)
        time.sleep(1.5)
        # warm-up: Postfix spawns its smtpd processes, they open their policy connections
        smtp_load(plain.smtp_port, "example.com", argparse.Namespace(**dict(vars(args), seconds=1)))
        smtp_load(door.smtp_port, "other.org", argparse.Namespace(**dict(vars(args), seconds=1)))
        runs = {"local/no door": [], "local/door": [], "relay/door": []}
        cpu = []
        for r in range(args.repeats):
            for name, port, dom in (("local/no door", plain.smtp_port, "example.com"),
                                    ("local/door", door.smtp_port, "example.com"),
                                    ("relay/door", door.smtp_port, "other.org")):
                c0 = worker_cpu(door.daemon_proc.pid)
                t0 = time.monotonic()
                rate = smtp_load(port, dom, args)
                if port == door.smtp_port:
                    cpu.append((worker_cpu(door.daemon_proc.pid) - c0) /
                               (rate * (time.monotonic() - t0)) * 1e6)
                runs[name].append(rate)
                print("round %d  %-14s %8.0f RCPT/s" % (r + 1, name, rate), flush=True)
        direct = door_load(door.milter_port, args)
        print()
        print("%d sessions x %d RCPT per transaction, %.0f s per run, medians of %d:" % (
            args.sessions, args.rcpts, args.seconds, args.repeats))
        base = statistics.median(runs["local/no door"])
        for name, v in runs.items():
            m = statistics.median(v)
            print("  %-14s %8.0f RCPT/s   %.2f x no door" % (name, m, m / base))
        print("  door CPU       %8.1f us per answer (median)" % statistics.median(cpu))
        print("  door alone     %8.0f answers/s (%d python clients pipelining 100 requests)" % (
            direct, args.sessions))
        bad = door.sanitizer_reports()
        if bad:
            print("sanitizer reports:\n" + "\n".join(bad[:20]))
            return 1
    finally:
        door.close()
        plain.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
