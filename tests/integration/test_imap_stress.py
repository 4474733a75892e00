#!/usr/bin/python3
"""Many sessions, one mailbox: the IMAP door under concurrent change, against a model.

One portcullisd (services = smtp imap, and pop3 when the binary has the POP3
door) serves one user's INBOX. For STRESS_SECONDS (20 by default), at once:

  - WORKERS IMAP sessions (threads, raw sockets) each keep INBOX selected and
    loop over random operations on the messages they own (a share of the
    seed, plus what they append): UID STORE +/-FLAGS of \\Flagged, \\Answered
    and their own keyword, UID COPY and UID MOVE to "Other" (COPYUID),
    \\Deleted + UID EXPUNGE, APPEND with flags (APPENDUID), and a sync
    (NOOP, or FETCH 1:* (UID FLAGS Message-ID));
  - a deliverer sends mail through the SMTP gateway;
  - (with the POP3 door) a POP3 client logs in, STAT/UIDL/RETRs and quits in a
    loop, and each time a second POP3 login must get -ERR [IN-USE].

Every session checks what it is told as it goes (its "view"):
  - "* n EXPUNGE": 1 <= n <= messages in view; never in the answer to a
    FETCH, STORE or SEARCH (RFC 3501 §7.4.1); the UID it removes never
    comes back;
  - "* n EXISTS": never fewer than the view holds (only EXPUNGE shrinks);
  - FETCH: n within the view; a UID at a position never changes; UIDs grow
    with the sequence number; a UID always names the same Message-ID for every
    session (UIDs never reused); APPENDUID/COPYUID UIDs are new and growing.
At the end (all sessions did a last NOOP and FETCH), against the model:
  - INBOX and Other hold exactly the model's messages (by Message-ID, as a
    multiset for copies) with the model's flags and keywords (\\Seen and
    \\Recent aside: POP3 RETR may set \\Seen);
  - every message the SMTP gateway delivered was \\Recent in exactly one
    session, an appended one in at most one;
  - the daemon's log has no sanitizer report (runner), and no worker died.
Must run in < 60 s under ASan on 2 cores.

Run: PORTCULLIS_BIN=build/asan/bin python3 tests/integration/test_imap_stress.py
     STRESS_SECONDS=N  STRESS_SEED=N  (the RNG seed, printed on failure)
     STRESS_DOVECOT=1: the IMAP sessions talk to a private Dovecot on the
     same store instead (the SMTP gateway still delivers): the checks and
     the model hold for Dovecot with no KNOWN_VIOLATIONS at all, which is
     how the checker itself was checked.
"""
import collections
import os
import poplib
import random
import re
import smtplib
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import dovecot, runner  # noqa: E402
from harness.daemon import Daemon, exe  # noqa: E402
from harness.imapwire import RawImap, parse  # noqa: E402
from harness.ports import free_port, port_accepts  # noqa: E402
from harness.util import wait_until  # noqa: E402

USER = "stress@example.com"
PASSWORD = "stress-password"
SECONDS = float(os.environ.get("STRESS_SECONDS", "20"))
SEED = int(os.environ.get("STRESS_SEED", str(int(time.time()) % 100000)))
WORKERS = 4
SEED_MESSAGES = 40
DEBUG = os.environ.get("STRESS_DEBUG") == "1"
IGNORED = {b"\\Seen", b"\\Recent"}


# What the door does that the checks catch, left for the lead to decide
# (printed with a count and an example; the test fails on anything else):
KNOWN_VIOLATIONS = {
    # (P1, fixed since: a POP3 RETR of a message an IMAP session only
    # flagged meanwhile answered "-ERR [SYS/TEMP] Couldn't read the message.";
    # P2: a POP3 QUIT after a RETR of a message an IMAP session expunged
    # meanwhile answered "-ERR [SYS/TEMP] Couldn't delete all messages."
    # The store finds a renamed file by its base name and a \Seen for a
    # message gone is no error (mailstore_msg_open/set_flags, MAILSTORE_GONE);
    # test_pop3.py T1Basics test_retr_after_an_imap_flag_change and
    # test_expunged_meanwhile_is_not_an_error. Both are violations now.)
    # (R1, fixed since: a message the POP3 session saw first was \Recent in
    # no IMAP session; the POP3 door opens INBOX with mailstore_box_open_peek,
    # which takes no \Recent, as Dovecot's POP3 leaves it to IMAP)
}


def has_pop3():
    """the binary knows the POP3 door (the pop3door branch is merged)"""
    try:
        with open(exe("portcullisd"), "rb") as f:
            return b"pop3_listen" in f.read()
    except OSError:
        return False


def message(msgid, text):
    return (b"From: stress@outside.test\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s>\r\n\r\n"
            b"%s\r\n" % (USER.encode(), msgid.encode(), msgid.encode(), text.encode()))


def msgid_of(hdr):
    m = re.search(rb"(?im)^Message-ID:\s*<([^>]*)>", hdr or b"")
    return m.group(1).decode() if m else None


class Shared:
    """what all sessions learn, and every violation found"""

    def __init__(self):
        self.lock = threading.Lock()
        self.uid_msgid = {"INBOX": {}, "Other": {}}   # folder -> uid -> Message-ID
        self.violations = []
        self.known_seen = collections.Counter()
        self.known_example = {}
        self.new_uids = {"INBOX": [], "Other": []}    # APPENDUID/COPYUID, in answer order
        self.smtp_sent = []                           # Message-IDs
        self.recent = collections.Counter()           # INBOX uid -> sessions that had it \Recent

    def bad(self, who, what):
        with self.lock:
            if len(self.violations) < 50:
                self.violations.append("%s: %s" % (who, what))

    def known(self, kind, who, what):
        """a violation of a kind in KNOWN_VIOLATIONS: counted and one example kept;
        of a kind no longer listed (fixed): a violation"""
        if kind not in KNOWN_VIOLATIONS:
            self.bad(who, "%s: %s" % (kind, what))
            return
        with self.lock:
            self.known_seen[kind] += 1
            self.known_example.setdefault(kind, "%s: %s" % (who, what))

    def uid_is(self, who, folder, uid, msgid):
        if msgid is None:
            return
        with self.lock:
            old = self.uid_msgid[folder].setdefault(uid, msgid)
        if old != msgid:
            self.bad(who, "%s UID %d was <%s>, now <%s> (UID reused)" % (folder, uid, old, msgid))


class Session:
    """one IMAP session with INBOX selected, checking each answer against its view"""

    def __init__(self, name, port, shared):
        self.name = name
        self.shared = shared
        self.c = RawImap(port, timeout=30, tag_prefix=name.encode())
        self.view = []            # UID (or None: told by EXISTS, not fetched yet) per seq
        self.gone = set()         # UIDs expunged from the view
        self.recent = set()
        u, t = self.c.cmd(b"LOGIN %s %s" % (USER.encode(), PASSWORD.encode()))
        self.must(t, b"LOGIN")
        u, t = self.c.cmd(b"SELECT INBOX")
        self.must(t, b"SELECT")
        for r in u:
            m = re.match(rb"\* (\d+) EXISTS", r)
            if m:
                self.view = [None] * int(m.group(1))

    def must(self, tagged, what):
        if tagged.split(b" ")[1] != b"OK":
            raise AssertionError("%s: %s: %r" % (self.name, what, tagged))

    def bad(self, what):
        self.shared.bad(self.name, what)

    def cmd(self, text, kind=None):
        """run text; check every untagged answer; (untagged, tagged)"""
        u, t = self.c.cmd(text)
        head = text.split(b" ")[0].upper()
        no_expunge = head in (b"FETCH", b"STORE", b"SEARCH")
        before = len(self.shared.violations) + sum(self.shared.known_seen.values())
        for i, r in enumerate(u):
            self.rest = u[i + 1:]
            self.check(r, no_expunge, text)
        if DEBUG and len(self.shared.violations) + sum(self.shared.known_seen.values()) > before:
            print("\n%s %r ->\n%s" % (self.name, text[:60], b"".join(
                x if len(x) < 200 else x[:100] + b"...\r\n" for x in u + [t]).decode(errors="replace")))
        return u, t

    def exists_later(self, n):
        """an EXISTS of at least n comes later in the answer being checked"""
        return any(int(m.group(1)) >= n for m in
                   (re.match(rb"\* (\d+) EXISTS", x) for x in self.rest) if m)

    def check(self, r, no_expunge, text):
        m = re.match(rb"\* (\d+) (EXPUNGE|EXISTS|RECENT|FETCH)\b", r)
        if not m:
            return
        n, what = int(m.group(1)), m.group(2)
        if what == b"EXPUNGE":
            if no_expunge:
                self.bad("EXPUNGE in the answer to %r" % text[:40])
            if n > len(self.view):
                self.shared.known("S3", self.name, "* %d EXPUNGE (%d told to exist) in the answer "
                                  "to %r" % (n, len(self.view), text[:40]))
                self.view += [None] * (n - len(self.view))
            if not 1 <= n <= len(self.view):
                self.bad("* %d EXPUNGE with %d messages in view" % (n, len(self.view)))
                return
            uid = self.view.pop(n - 1)
            if uid is not None:
                self.gone.add(uid)
        elif what == b"EXISTS":
            if n < len(self.view):
                self.bad("* %d EXISTS with %d messages in view" % (n, len(self.view)))
            self.view += [None] * (n - len(self.view))
        elif what == b"FETCH":
            if n > len(self.view):
                if self.exists_later(n):
                    self.shared.known("S1", self.name, "* %d FETCH before the * %d EXISTS in the "
                                      "answer to %r" % (n, n, text[:40]))
                else:
                    self.shared.known("S2", self.name, "* %d FETCH (%d told to exist) in the answer "
                                      "to %r, which has no EXISTS" % (n, len(self.view), text[:40]))
                self.view += [None] * (n - len(self.view))
            if not 1 <= n <= len(self.view):
                self.bad("* %d FETCH with %d messages in view (%r)" % (n, len(self.view), r[:60]))
                return
            items = parse(r)[3]
            d = {items[k].upper(): items[k + 1] for k in range(0, len(items) - 1, 2)}
            if b"UID" in d:
                uid = int(d[b"UID"])
                if self.view[n - 1] is None:
                    self.view[n - 1] = uid
                elif self.view[n - 1] != uid:
                    self.bad("seq %d was UID %d, now UID %d" % (n, self.view[n - 1], uid))
                if uid in self.gone:
                    self.bad("UID %d came back after its EXPUNGE" % uid)
                if n > 1 and self.view[n - 2] is not None and self.view[n - 2] >= uid:
                    self.bad("UIDs not growing: seq %d UID %d, seq %d UID %d" % (
                        n - 1, self.view[n - 2], n, uid))
                for k, v in d.items():
                    if k.startswith(b"BODY[HEADER.FIELDS"):
                        self.shared.uid_is(self.name, "INBOX", uid, msgid_of(v))
                if b"FLAGS" in d and b"\\Recent" in d[b"FLAGS"]:
                    self.recent.add(uid)

    def sync(self, full=False):
        self.cmd(b"NOOP")
        if full or random.random() < 0.5:
            self.cmd(b"FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
                     if self.view else b"NOOP")

    def logout(self):
        try:
            self.c.cmd(b"LOGOUT")
        except (OSError, EOFError):
            pass
        self.c.close()


class Worker(threading.Thread):
    def __init__(self, n, port, shared, owned, deadline):
        super().__init__(name="worker%d" % n, daemon=True)
        self.n = n
        self.port = port
        self.shared = shared
        self.deadline = deadline
        self.rng = random.Random(SEED * 100 + n)
        self.keyword = b"$T%d" % n
        # the model of what this worker owns: Message-ID -> [folder, uid, flags]
        self.owned = {mid: ["INBOX", uid, set()] for mid, uid in owned}
        self.copies = []          # (Message-ID, flags) copied into Other
        self.ops = collections.Counter()
        self.error = None
        self.sess = None
        self.appended = 0

    def run(self):
        try:
            self.sess = Session("w%d" % self.n, self.port, self.shared)
            while time.monotonic() < self.deadline:
                self.step()
            self.sess.sync(full=True)
            self.sess.logout()
        except Exception as e:              # noqa: BLE001 (reported by the test)
            self.error = "%s: %r" % (self.name, e)

    def inbox(self):
        return [m for m, v in self.owned.items() if v[0] == "INBOX"]

    def step(self):
        s, rng = self.sess, self.rng
        mine = self.inbox()
        op = rng.choice(["flag", "flag", "flag", "copy", "move", "expunge", "append", "sync"])
        if op in ("flag", "copy", "move", "expunge") and not mine:
            op = "append"
        self.ops[op] += 1
        if op == "flag":
            mid = rng.choice(mine)
            folder, uid, flags = self.owned[mid]
            f = rng.choice([b"\\Flagged", b"\\Answered", self.keyword])
            sign = b"-" if f in flags and rng.random() < 0.6 else b"+"
            u, t = s.cmd(b"UID STORE %d %sFLAGS (%s)" % (uid, sign, f))
            s.must(t, b"UID STORE")
            (flags.discard if sign == b"-" else flags.add)(f)
        elif op in ("copy", "move"):
            mid = rng.choice(mine)
            folder, uid, flags = self.owned[mid]
            u, t = s.cmd(b"UID %s %d Other" % (op.upper().encode(), uid))
            s.must(t, op.encode())
            cu = re.search(rb"\[COPYUID (\d+) (\d+) (\d+)\]", b"".join(u) + t)
            if not cu or int(cu.group(2)) != uid:
                s.bad("UID %s %d: no COPYUID for it (%r)" % (op.upper(), uid, (b"".join(u) + t)[:120]))
                dst = None
            else:
                dst = int(cu.group(3))
                self.new_uid("Other", dst, mid)
            if op == "copy":
                self.copies.append((mid, frozenset(flags)))
            else:
                self.owned[mid] = ["Other", dst, flags]
        elif op == "expunge":
            mid = rng.choice(mine)
            uid = self.owned[mid][1]
            u, t = s.cmd(b"UID STORE %d +FLAGS.SILENT (\\Deleted)" % uid)
            s.must(t, b"STORE \\Deleted")
            u, t = s.cmd(b"UID EXPUNGE %d" % uid)
            s.must(t, b"UID EXPUNGE")
            del self.owned[mid]
        elif op == "append":
            self.appended += 1
            mid = "w%d.%d@stress" % (self.n, self.appended)
            flags = {f for f in (b"\\Flagged", self.keyword) if rng.random() < 0.5}
            data = message(mid, "appended by worker %d" % self.n)
            u, t = s.cmd(b"APPEND INBOX (%s) {%d+}\r\n" % (b" ".join(sorted(flags)), len(data)) + data)
            s.must(t, b"APPEND")
            au = re.search(rb"\[APPENDUID (\d+) (\d+)\]", t)
            if not au:
                s.bad("APPEND: no APPENDUID (%r)" % t)
                return
            uid = int(au.group(2))
            self.new_uid("INBOX", uid, mid)
            self.owned[mid] = ["INBOX", uid, flags]
        else:
            s.sync()

    def new_uid(self, folder, uid, mid):
        sh = self.shared
        with sh.lock:
            seen = sh.uid_msgid[folder].get(uid)
            sh.new_uids[folder].append(uid)
        if seen is not None and seen != mid:
            sh.bad(self.name, "%s: new UID %d was <%s> before (UID reused)" % (folder, uid, seen))
        sh.uid_is(self.name, folder, uid, mid)


class Deliverer(threading.Thread):
    def __init__(self, port, shared, deadline):
        super().__init__(name="smtp", daemon=True)
        self.port = port
        self.shared = shared
        self.deadline = deadline
        self.error = None

    def run(self):
        i = 0
        try:
            while time.monotonic() < self.deadline - 1:
                i += 1
                mid = "smtp%d@stress" % i
                with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as s:
                    s.sendmail("stress@outside.test", [USER], message(mid, "delivered %d" % i))
                with self.shared.lock:
                    self.shared.smtp_sent.append(mid)
                time.sleep(0.3)
        except Exception as e:              # noqa: BLE001
            self.error = "smtp: %r" % e


class Pop3(threading.Thread):
    """POP3 on the same mailbox: reads, never deletes; a second login is IN-USE"""

    def __init__(self, port, shared, deadline):
        super().__init__(name="pop3", daemon=True)
        self.port = port
        self.shared = shared
        self.deadline = deadline
        self.error = None
        self.sessions = self.retrs = self.in_use = 0
        self.failed = []          # (UID, the -ERR) of RETRs that failed

    def run(self):
        try:
            while time.monotonic() < self.deadline - 1:
                p = poplib.POP3("127.0.0.1", self.port, timeout=30)
                p.user(USER)
                p.pass_(PASSWORD)
                self.sessions += 1
                q = poplib.POP3("127.0.0.1", self.port, timeout=30)
                q.user(USER)
                try:
                    q.pass_(PASSWORD)
                    self.shared.bad("pop3", "a second POP3 login while one is open was let in")
                except poplib.error_proto as e:
                    if b"[IN-USE]" not in e.args[0]:
                        self.shared.bad("pop3", "second login: %r, not -ERR [IN-USE]" % e.args[0])
                    self.in_use += 1
                q.close()
                count, _ = p.stat()
                uidl = p.uidl()[1]
                if len(uidl) != count:
                    self.shared.bad("pop3", "STAT %d but UIDL %d lines" % (count, len(uidl)))
                uids = {int(x.split()[0]): int(x.split()[1][:8], 16) for x in uidl}
                for k in random.sample(range(1, count + 1), min(3, count)):
                    try:
                        lines = p.retr(k)[1]
                    except poplib.error_proto as e:
                        self.failed.append((uids[k], e.args[0]))
                        continue
                    data = b"\r\n".join(lines)
                    self.retrs += 1
                    if msgid_of(data) is None:
                        self.shared.bad("pop3", "RETR %d: no Message-ID (%r)" % (k, data[:80]))
                    self.shared.uid_is("pop3", "INBOX", uids[k], msgid_of(data))
                try:
                    p.quit()
                except poplib.error_proto as e:
                    if b"Couldn't delete" in e.args[0]:
                        self.shared.known("P2", "pop3", "QUIT without DELE after %d RETRs: %r" % (
                            min(3, count), e.args[0]))
                    else:
                        self.shared.bad("pop3", "QUIT: %r" % e.args[0])
                    p.close()
                time.sleep(0.2)
        except Exception as e:              # noqa: BLE001
            self.error = "pop3: %r" % e


def show(counter):
    return sorted("<%s> %s x%d" % (mid, " ".join(sorted(f.decode() for f in flags)), n)
                  for (mid, flags), n in counter.items())


class T01Stress(unittest.TestCase):
    maxDiff = None

    def test_concurrent_sessions_against_the_model(self):
        pop3 = has_pop3()
        imap_port, pop3_port = free_port(), free_port()
        conf = {
            "services": "smtp imap pop3" if pop3 else "smtp imap",
            "smtp_listen": "127.0.0.1:{port}",
            "imap_listen": "127.0.0.1:%d" % imap_port,
            "myhostname": "mx.example.com",
            "mydomains": "example.com",
            "state_dir": "{dir}/state",
            "delivery": "maildir:{dir}/state/mail",
            "auth_allow_plaintext": "yes",
            "auth_failure_delay": "0",
        }
        if pop3:
            conf["pop3_listen"] = "127.0.0.1:%d" % pop3_port
        against_dovecot = os.environ.get("STRESS_DOVECOT") == "1"
        if against_dovecot and os.getuid() == 0:
            conf["run_user"] = "nobody"
        d = Daemon("imapstress", conf)
        d.cli("user", "add", USER, "--password-stdin", input=PASSWORD + "\n")
        d.start()
        wait_until(lambda: port_accepts("127.0.0.1", imap_port), 10, what="the imap door")
        sh = Shared()
        dc = None
        try:
            if against_dovecot:
                secret = [ln.split(":")[1] for ln in open(d.path("state", "users"))
                          if ln.startswith(USER + ":")][0]
                dc = dovecot.Dovecot(d.dir, store=d.path("state", "mail"), users={USER: secret},
                                     protocols=("imap", "pop3") if pop3 else ("imap",),
                                     extra_conf="pop3_lock_session = yes\n")
                dc.start()
                imap_port, pop3_port = dc.imap_port, dc.pop3_port
            # the seed: SEED_MESSAGES appended, owned by worker i % WORKERS
            setup = Session("setup", imap_port, sh)
            u, t = setup.cmd(b"CREATE Other")
            setup.must(t, b"CREATE Other")
            owned = collections.defaultdict(list)
            for i in range(SEED_MESSAGES):
                mid = "seed%d@stress" % i
                data = message(mid, "seed %d" % i)
                u, t = setup.cmd(b"APPEND INBOX {%d+}\r\n" % len(data) + data)
                setup.must(t, b"APPEND")
                uid = int(re.search(rb"\[APPENDUID \d+ (\d+)\]", t).group(1))
                sh.uid_is("setup", "INBOX", uid, mid)
                owned[i % WORKERS].append((mid, uid))
            setup.logout()

            t0 = time.monotonic()
            deadline = t0 + SECONDS
            workers = [Worker(n, imap_port, sh, owned[n], deadline) for n in range(WORKERS)]
            others = [Deliverer(d.port, sh, deadline)]
            if pop3:
                others.append(Pop3(pop3_port, sh, deadline))
            for th in workers + others:
                th.start()
            for th in workers + others:
                th.join(SECONDS + 30)
                self.assertFalse(th.is_alive(), "%s hangs" % th.name)
            elapsed = time.monotonic() - t0
            errors = [th.error for th in workers + others if th.error]
            self.assertEqual(errors, [], "seed %d" % SEED)

            # the model
            want_inbox, want_other = collections.Counter(), collections.Counter()
            for w in workers:
                for mid, (folder, uid, flags) in w.owned.items():
                    (want_inbox if folder == "INBOX" else want_other)[(mid, frozenset(flags))] += 1
                for mid, flags in w.copies:
                    want_other[(mid, flags)] += 1
            for mid in sh.smtp_sent:
                want_inbox[(mid, frozenset())] += 1

            final = Session("final", imap_port, sh)
            got = {}
            for folder in ("INBOX", "Other"):
                u, t = final.c.cmd(b"SELECT " + folder.encode())
                final.must(t, b"SELECT")
                u, t = final.c.cmd(b"FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
                got[folder] = collections.Counter()
                for r in u:
                    items = parse(r)[3]
                    dd = {items[k].upper(): items[k + 1] for k in range(0, len(items) - 1, 2)}
                    mid = msgid_of(dd[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"])
                    sh.uid_is("final", folder, int(dd[b"UID"]), mid)
                    got[folder][(mid, frozenset(set(dd[b"FLAGS"]) - IGNORED))] += 1
                if folder == "INBOX":
                    final_uids = {int(parse(r)[3][parse(r)[3].index(b"UID") + 1]) for r in u}
            final.logout()

            # \Recent: each delivered message exactly once, an appended one at most once
            recent = collections.Counter()
            for w in workers:
                for uid in w.sess.recent:
                    recent[uid] += 1
                resurrected = w.sess.gone & final_uids
                if resurrected:
                    sh.bad(w.name, "UIDs it saw expunged are in INBOX at the end: %s" % sorted(resurrected))
            uid_of = {mid: uid for uid, mid in sh.uid_msgid["INBOX"].items()}
            for mid in sh.smtp_sent:
                uid = uid_of.get(mid)
                if uid is not None and recent[uid] == 0 and pop3:
                    sh.known("R1", "recent", "<%s> (UID %d) was \\Recent in no IMAP session" % (mid, uid))
                elif uid is not None and recent[uid] != 1:
                    sh.bad("recent", "<%s> (UID %d) was \\Recent in %d sessions" % (mid, uid, recent[uid]))
            told = sum(1 for mid in sh.smtp_sent if recent[uid_of.get(mid)] == 1)
            self.assertGreater(len(sh.smtp_sent), 10, "the SMTP gateway delivered too little")
            self.assertGreater(told, 0, "no delivered message was \\Recent anywhere")
            for uid, k in recent.items():
                if k > 1:
                    sh.bad("recent", "UID %d was \\Recent in %d sessions" % (uid, k))
            if pop3:
                for uid, err in others[1].failed:
                    if uid in final_uids:
                        sh.known("P1", "pop3", "RETR of UID %d (still in INBOX at the end): %r" % (
                            uid, err))
            for folder, uids in sh.new_uids.items():
                if len(set(uids)) != len(uids):
                    sh.bad("uids", "%s: a new UID given twice: %s" % (
                        folder, sorted(k for k, n in collections.Counter(uids).items() if n > 1)))

            ops = collections.Counter()
            for w in workers:
                ops.update(w.ops)
            print("\n%.1f s, seed %d: %s; %d delivered; %s" % (
                elapsed, SEED, dict(ops), len(sh.smtp_sent),
                "pop3: %d sessions, %d RETR, %d failed, %d IN-USE" % (
                    others[1].sessions, others[1].retrs, len(others[1].failed), others[1].in_use)
                if pop3 else "no POP3 door in this build"))
            for kind, k in sorted(sh.known_seen.items()):
                print("known %s (%s): %d times, e.g. %s" % (kind, KNOWN_VIOLATIONS[kind], k,
                                                           sh.known_example[kind]))
            self.assertEqual(sh.violations, [], "seed %d" % SEED)
            for folder, want in (("INBOX", want_inbox), ("Other", want_other)):
                self.assertEqual(
                    (show(got[folder] - want), show(want - got[folder])), ([], []),
                    "%s against the model (seed %d): (there and not in the model, "
                    "in the model and not there)" % (folder, SEED))
            self.assertGreater(sum(ops.values()), 200, "too few operations to mean anything")
        finally:
            if dc is not None:
                dc.close()
            d.stop()
            d.assert_clean()


if __name__ == "__main__":
    sys.exit(runner.main())
