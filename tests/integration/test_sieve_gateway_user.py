#!/usr/bin/python3
"""User Sieve scripts at delivery into the bundled store, through the SMTP
gateway (issue 10): smtplib to portcullisd (services = smtp, delivery =
maildir:, a users file), a FakeSMTP as the relayhost, and what a user sees:
the files in the Maildir store (and, for fileinto + flags, a real Dovecot
reading them over IMAP), what reached the relayhost, the reply the client
got and the log line.

    fileinto :create + addflag   .Work/ holds it, flags and dovecot-keywords,
                                 Dovecot shows it in Work with the flags
    setflag                      INBOX copy with the Maildir flag
    discard                      250, nothing stored
    redirect                     the relayhost gets the message unchanged (plus
                                 X-Sieve-Redirected-From on top), nothing stored
    redirect loop                a message this user redirected before comes
                                 back: not redirected again, kept
    vacation                     one reply per sender within :days, none to <>,
                                 none to list mail (List-Id, Precedence: bulk);
                                 two messages at the same moment: one reply
    reject                       an RFC 5429 refusal (an MDN from <>) to the sender
    relayhost down               kept in INBOX, the log says why, 250 given
    broken script                kept in INBOX, the log says so
    server-level addflag         applies to the stored copy (multiscript)
    server addheader + addflag   the header once in the stored file, Return-Path:
                                 first, our Received: folded as without scripts
    two recipients               one with a script (fileinto), one without;
                                 also for a message big enough to be spooled

Run:  PORTCULLIS_BIN=$PWD/build/asan/bin python3 tests/integration/test_sieve_gateway_user.py
Last line printed: "N passed, N failed"; exit status 1 on any failure.
"""

import glob
import os
import re
import smtplib
import socket
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from harness import daemon as hdaemon, runner             # noqa: E402
from harness.client import make_message, new_marker       # noqa: E402
from harness.fakesmtp import FakeSMTP, unstuff            # noqa: E402
from harness.ports import free_port, port_accepts         # noqa: E402
from harness.util import wait_until                       # noqa: E402

SENDER = "sender@outside.test"
USERS = ["u%d@example.com" % i for i in range(1, 10)] + [
    "disc@example.com", "redir@example.com", "loop@example.com", "vac@example.com",
    "rej@example.com", "broken@example.com", "plain@example.com", "down@example.com"]

SCRIPTS = {
    # u1: the Dovecot-checked one
    "u1@example.com": r'''require ["fileinto", "imap4flags", "mailbox"];
if header :contains "subject" "WORK" {
    addflag "\\Flagged";
    addflag "$label1";
    fileinto :create "Work";
    stop;
}
''',
    "u2@example.com": r'''require ["imap4flags"];
setflag "\\Seen";
''',
    "disc@example.com": 'discard;\n',
    "redir@example.com": 'redirect "fwd@elsewhere.test";\n',
    "loop@example.com": 'redirect "fwd2@elsewhere.test";\n',
    "vac@example.com": r'''require ["vacation"];
vacation :days 1 :subject "Away" "I am away until Monday.";
''',
    "rej@example.com": r'''require ["reject"];
reject "I do not want mail about that.";
''',
    "broken@example.com": 'require ["fileinto"];\nfileinto "x"\nif true { keep; }\n',
    "down@example.com": 'redirect "fwd3@elsewhere.test";\n',
    "u5@example.com": r'''require ["environment", "fileinto", "mailbox", "variables"];
if environment :matches "remote-ip" "*" { set "ip" "${1}"; }
if environment :is "remote-ip" "127.0.0.1" { fileinto :create "FromLoopback"; }
''',
    "u3@example.com": r'''require ["fileinto", "mailbox"];
fileinto :create "Lists.Work";
''',
    # u6, u7: what the user level sees when the door's parse is handed over
    # (u6) and when the body makes it read the spool (u7): the same message
    "u6@example.com": r'''require ["fileinto", "mailbox", "envelope"];
if allof (exists "Return-Path", header :contains "return-path" "<sender@outside.test>",
          envelope :is "to" "u6@example.com", envelope :is "from" "sender@outside.test",
          header :contains "subject" "HANDED", exists "Received", size :over 100) {
    fileinto :create "AllSeen";
}
''',
    "u8@example.com": r'''require ["editheader", "fileinto", "mailbox"];
addheader "X-User-Tag" "u8";
fileinto :create "Edited";
''',
    "u7@example.com": r'''require ["fileinto", "mailbox", "envelope", "body"];
if allof (exists "Return-Path", header :contains "return-path" "<sender@outside.test>",
          envelope :is "to" "u7@example.com", header :contains "subject" "HANDED",
          body :contains "Test message body", size :over 100) {
    fileinto :create "AllSeen";
}
''',
}

GW = None
RELAY = None


def write_users(path):
    with open(path + ".tmp", "w") as f:
        for u in USERS:
            f.write("%s:{CRYPT}$y$j9T$notarealhash$%s::::::\n" % (u, "x" * 20))
    os.rename(path + ".tmp", path)


def write_script(d, user, text):
    p = os.path.join(d, "state", "sieve", "users", user + ".sieve")
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p + ".tmp", "w") as f:
        f.write(text)
    os.rename(p + ".tmp", p)


def make_gateway(name, relay_port):
    g = hdaemon.Daemon("sgu-" + name, (
        ("services", "smtp"), ("smtp_listen", "127.0.0.1:{port}"),
        ("myhostname", "mx.example.com"), ("mydomains", "example.com"),
        ("relay_networks", "127.0.0.2"), ("state_dir", "{dir}/state"),
        ("lists", "file:{dir}/lists"), ("users", "file:{dir}/users"),
        ("delivery", "maildir:{dir}/mail"), ("relayhost", "[127.0.0.1]:%d" % relay_port),
        ("smtp_timeout", "10"), ("log_level", "info")))
    write_users(g.path("users"))
    for u, t in SCRIPTS.items():
        write_script(g.dir, u, t)
    g.start(ready=lambda: "smtp ready on" in g.log_text() and port_accepts("127.0.0.1", g.port))
    return g


def maildir(g, user, folder="INBOX"):
    local, dom = user.split("@")
    md = g.path("mail", dom, local, "Maildir")
    return md if folder == "INBOX" else os.path.join(md, "." + folder)


def files(g, user, folder="INBOX"):
    md = maildir(g, user, folder)
    return sorted(glob.glob(os.path.join(md, "new", "*")) + glob.glob(os.path.join(md, "cur", "*")))


def stored_with(g, user, marker, folder="INBOX"):
    out = []
    for p in files(g, user, folder):
        with open(p, "rb") as f:
            if marker.encode() in f.read():
                out.append(p)
    return out


def send(g, rcpts, msg, sender=SENDER):
    """(code, text) of the final dot"""
    with smtplib.SMTP("127.0.0.1", g.port, timeout=30) as c:
        c.ehlo("client.sieve.test")
        code, text = c.mail(sender)
        assert code == 250, (code, text)
        for r in rcpts:
            code, text = c.rcpt(r)
            assert code == 250, (r, code, text)
        code, text = c.data(msg.encode() if isinstance(msg, str) else msg)
        return code, text.decode(errors="replace")


def relay_txns(rcpt):
    with RELAY.lock:
        return [t for t in RELAY.transactions if rcpt in t["rcpts"] and t["dot"]]


def txn_body(t):
    return unstuff(bytes(t["raw"]))


class T1UserScripts(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        global GW, RELAY
        RELAY = FakeSMTP()
        GW = make_gateway("main", RELAY.port)

    @classmethod
    def tearDownClass(cls):
        if GW is not None:
            GW.stop()
        if RELAY is not None:
            RELAY.stop()

    def test_01_fileinto_create_flags_keywords(self):
        m = new_marker("work")
        code, _ = send(GW, ["u1@example.com"], make_message(m, subject="WORK %s" % m))
        self.assertEqual(code, 250)
        self.assertEqual(stored_with(GW, "u1@example.com", m), [], "also in the INBOX")
        got = stored_with(GW, "u1@example.com", m, "Work")
        self.assertEqual(len(got), 1, files(GW, "u1@example.com", "Work"))
        name = os.path.basename(got[0])
        flags = name.rsplit(":2,", 1)[1] if ":2," in name else ""
        self.assertIn("F", flags, name)
        with open(os.path.join(maildir(GW, "u1@example.com", "Work"), "dovecot-keywords")) as f:
            kw = dict(l.split(None, 1)[::-1] for l in f.read().splitlines() if l.strip())
        letter = chr(ord("a") + int(kw["$label1"]))
        self.assertIn(letter, flags, (name, kw))
        self.assertIn("Return-Path: <%s>" % SENDER, open(got[0]).read())
        self.assertRegex(GW.log_text(), r"sieve: u1@example.com: .*fileinto Work")

    def test_02_setflag_seen(self):
        m = new_marker("seen")
        self.assertEqual(send(GW, ["u2@example.com"], make_message(m))[0], 250)
        got = stored_with(GW, "u2@example.com", m)
        self.assertEqual(len(got), 1)
        self.assertRegex(os.path.basename(got[0]), r":2,[A-Z]*S")

    def test_03_discard(self):
        m = new_marker("disc")
        self.assertEqual(send(GW, ["disc@example.com"], make_message(m))[0], 250)
        self.assertEqual(files(GW, "disc@example.com"), [])
        self.assertRegex(GW.log_text(), r"sieve: disc@example.com: discard")

    def test_04_redirect_unchanged(self):
        m = new_marker("redir")
        msg = make_message(m, body=["line one", ".leading dot", "", "last"])
        self.assertEqual(send(GW, ["redir@example.com"], msg)[0], 250)
        ts = relay_txns("fwd@elsewhere.test")
        self.assertEqual(len(ts), 1, RELAY.transactions)
        self.assertEqual(ts[0]["sender"], SENDER)
        body = txn_body(ts[0])
        self.assertTrue(body.startswith(b"X-Sieve-Redirected-From: <redir@example.com>\r\n"),
                        body[:200])
        self.assertIn(msg.encode(), body, "the message is not unchanged")
        self.assertNotIn(b"Return-Path:", body)
        self.assertEqual(files(GW, "redir@example.com"), [])

    def test_05_redirect_loop_kept(self):
        m = new_marker("loop")
        msg = make_message(m, extra_headers=["X-Sieve-Redirected-From: <loop@example.com>"])
        self.assertEqual(send(GW, ["loop@example.com"], msg)[0], 250)
        self.assertEqual(relay_txns("fwd2@elsewhere.test"), [])
        self.assertEqual(len(stored_with(GW, "loop@example.com", m)), 1)
        self.assertRegex(GW.log_text(), r"sieve: loop@example.com: redirect loop")

    def test_06_vacation_once_never_to_null_or_lists(self):
        sender = "friend@outside.test"
        for i in range(2):
            m = new_marker("vac%d" % i)
            self.assertEqual(send(GW, ["vac@example.com"],
                                  make_message(m, from_=sender, to="vac@example.com"),
                                  sender=sender)[0], 250)
            self.assertEqual(len(stored_with(GW, "vac@example.com", m)), 1)
        ts = relay_txns(sender)
        self.assertEqual(len(ts), 1, "one reply within :days")
        self.assertEqual(ts[0]["sender"], "")
        body = txn_body(ts[0])
        self.assertIn(b"I am away until Monday.", body)
        self.assertIn(b"Subject: Away", body)
        self.assertRegex(body, rb"(?i)auto-submitted: auto-replied")
        # none to the null sender, none to list mail
        m = new_marker("vacnull")
        self.assertEqual(send(GW, ["vac@example.com"], make_message(m, to="vac@example.com"),
                              sender="")[0], 250)
        for hdr, who in (("List-Id: <list.outside.test>", "list1@outside.test"),
                         ("Precedence: bulk", "list2@outside.test")):
            m = new_marker("vaclist")
            self.assertEqual(send(GW, ["vac@example.com"],
                                  make_message(m, from_=who, to="vac@example.com",
                                               extra_headers=[hdr]), sender=who)[0], 250)
            self.assertEqual(len(stored_with(GW, "vac@example.com", m)), 1)
            self.assertEqual(relay_txns(who), [], hdr)
        with RELAY.lock:
            to_null = [t for t in RELAY.transactions if t["rcpts"] == [""]]
        self.assertEqual(to_null, [])

    def test_07_reject_sends_refusal(self):
        sender = "pest@outside.test"
        m = new_marker("rej")
        self.assertEqual(send(GW, ["rej@example.com"], make_message(m, from_=sender),
                              sender=sender)[0], 250)
        ts = relay_txns(sender)
        self.assertEqual(len(ts), 1)
        self.assertEqual(ts[0]["sender"], "")
        body = txn_body(ts[0])
        self.assertIn(b"report-type=disposition-notification", body)
        self.assertIn(b"I do not want mail about that.", body)
        self.assertIn(b"Final-Recipient: rfc822; rej@example.com", body)
        self.assertIn(m.encode(), body)     # the original header section
        self.assertEqual(files(GW, "rej@example.com"), [])

    def test_08_broken_script_kept(self):
        m = new_marker("broken")
        self.assertEqual(send(GW, ["broken@example.com"], make_message(m))[0], 250)
        self.assertEqual(len(stored_with(GW, "broken@example.com", m)), 1)
        self.assertRegex(GW.log_text(),
                         r"sieve: broken@example.com: the user script is broken: .*"
                         r"broken@example.com(\.sieve)?:\d+:\d+: .*kept in INBOX")

    def test_09_two_recipients_one_with_script(self):
        for big in (False, True):
            m = new_marker("two")
            body = ["x" * 76] * (2000 if big else 1)
            code, _ = send(GW, ["u3@example.com", "plain@example.com"], make_message(m, body=body))
            self.assertEqual(code, 250)
            self.assertEqual(len(stored_with(GW, "u3@example.com", m, "Lists.Work")), 1, big)
            self.assertEqual(stored_with(GW, "u3@example.com", m), [], big)
            self.assertEqual(len(stored_with(GW, "plain@example.com", m)), 1, big)

    def test_10_script_change_in_force(self):
        """the compiled-script cache follows the file"""
        m = new_marker("chg")
        self.assertEqual(send(GW, ["u4@example.com"], make_message(m))[0], 250)
        self.assertEqual(len(stored_with(GW, "u4@example.com", m)), 1)
        write_script(GW.dir, "u4@example.com", 'discard;\n')
        time.sleep(1.1)     # in force within a second (the file is looked at once a second)
        m = new_marker("chg2")
        self.assertEqual(send(GW, ["u4@example.com"], make_message(m))[0], 250)
        self.assertEqual(stored_with(GW, "u4@example.com", m), [])
        write_script(GW.dir, "u4@example.com", 'keep;\n')
        time.sleep(1.1)
        m = new_marker("chg3")
        self.assertEqual(send(GW, ["u4@example.com"], make_message(m))[0], 250)
        self.assertEqual(len(stored_with(GW, "u4@example.com", m)), 1)


    def test_11_server_level_flags_reach_the_store(self):
        """a server script's imap4flags apply at delivery, before the user's"""
        p = os.path.join(GW.dir, "state", "sieve", "server.sieve")
        with open(p + ".tmp", "w") as f:
            f.write('require ["imap4flags"];\n'
                    'if header :contains "subject" "SERVERFLAG" { addflag "\\\\Flagged"; }\n')
        os.rename(p + ".tmp", p)
        time.sleep(1.0)     # the watcher publishes within a second
        m = new_marker("srvflag")
        self.assertEqual(send(GW, ["u2@example.com", "plain@example.com", "broken@example.com"],
                              make_message(m, subject="SERVERFLAG %s" % m))[0], 250)
        got = stored_with(GW, "broken@example.com", m)  # its own script does not compile
        self.assertEqual(len(got), 1)
        self.assertRegex(os.path.basename(got[0]), r":2,F")
        got = stored_with(GW, "u2@example.com", m)     # u2: setflag "\\Seen" (replaces)
        self.assertEqual(len(got), 1)
        self.assertRegex(os.path.basename(got[0]), r":2,[A-Z]*S")
        got = stored_with(GW, "plain@example.com", m)  # no script of its own
        self.assertEqual(len(got), 1)
        self.assertRegex(os.path.basename(got[0]), r":2,F")
        m = new_marker("srvplain")
        self.assertEqual(send(GW, ["plain@example.com"], make_message(m))[0], 250)
        got = stored_with(GW, "plain@example.com", m)
        self.assertEqual(len(got), 1)
        self.assertNotIn(":2,", got[0])


    def test_12_environment_remote_ip(self):
        m = new_marker("env")
        self.assertEqual(send(GW, ["u5@example.com"], make_message(m))[0], 250)
        self.assertEqual(len(stored_with(GW, "u5@example.com", m, "FromLoopback")), 1)


    def test_13_server_edits_and_flags_stored_once(self):
        """a server script that edits the header and acts on the store: the
        edit is done once, at the door; the delivery does not apply it again
        (the stored file has the header once, Return-Path: first, and our
        Received: folded as without scripts)"""
        p = os.path.join(GW.dir, "state", "sieve", "server.sieve")
        with open(p + ".tmp", "w") as f:
            f.write('require ["imap4flags", "editheader"];\n'
                    'if header :contains "subject" "EDITFLAG" {\n'
                    '    addheader "X-Srv-Tag" "tagged";\n'
                    '    addflag "\\\\Flagged";\n'
                    '}\n')
        os.rename(p + ".tmp", p)
        time.sleep(1.0)     # the watcher publishes within a second

        def received(raw):
            """our Received: field, as its lines"""
            lines = raw.split(b"\r\n")
            i = next(k for k, l in enumerate(lines) if l.startswith(b"Received:"))
            j = i + 1
            while lines[j][:1] in (b" ", b"\t"):
                j += 1
            return lines[i:j]

        m0 = new_marker("noedit")
        self.assertEqual(send(GW, ["plain@example.com"], make_message(m0))[0], 250)
        plain = open(stored_with(GW, "plain@example.com", m0)[0], "rb").read()
        for rcpts, big in ((["plain@example.com"], False), (["plain@example.com"], True),
                           (["u2@example.com", "plain@example.com"], False)):
            m = new_marker("editflag")
            body = ["y" * 76] * (2000 if big else 1)
            self.assertEqual(send(GW, rcpts, make_message(m, subject="EDITFLAG %s" % m,
                                                          body=body))[0], 250)
            for r in rcpts:
                got = stored_with(GW, r, m)
                self.assertEqual(len(got), 1, (r, big))
                raw = open(got[0], "rb").read()
                self.assertTrue(raw.startswith(b"Return-Path: <%s>\r\n" % SENDER.encode()),
                                (r, big, raw[:200]))
                self.assertEqual(raw.count(b"X-Srv-Tag:"), 1, (r, big, raw[:400]))
                self.assertEqual(len(received(raw)), len(received(plain)), (r, big, raw[:400]))
                self.assertEqual([l[:1] for l in received(raw)],
                                 [l[:1] for l in received(plain)], (r, big))
                self.assertRegex(os.path.basename(got[0]), r":2,[A-Z]*[FS]")
            got = stored_with(GW, "plain@example.com", m)
            self.assertRegex(os.path.basename(got[0]), r":2,F")
        os.unlink(p)
        time.sleep(1.0)

    def test_14_user_level_sees_the_message_as_stored(self):
        """with a server script (it runs at the door, in the same job) the user
        level sees the same fields as when it reads the stored file: our
        Return-Path: and Received:, the envelope, the size"""
        p = os.path.join(GW.dir, "state", "sieve", "server.sieve")
        with open(p + ".tmp", "w") as f:
            f.write('if header :contains "subject" "NEVER-MATCHES" { discard; }\n')
        os.rename(p + ".tmp", p)
        time.sleep(1.0)     # the watcher publishes within a second
        try:
            m = new_marker("handed")
            self.assertEqual(send(GW, ["u6@example.com", "u7@example.com"],
                                  make_message(m, subject="HANDED %s" % m))[0], 250)
            for u in ("u6@example.com", "u7@example.com"):
                self.assertEqual(len(stored_with(GW, u, m, "AllSeen")), 1, u)
                self.assertEqual(stored_with(GW, u, m), [], u)
            # a user-level edit on the handed-over parse: the body where it was
            m = new_marker("handedit")
            self.assertEqual(send(GW, ["u8@example.com"], make_message(m))[0], 250)
            got = stored_with(GW, "u8@example.com", m, "Edited")
            self.assertEqual(len(got), 1)
            raw = open(got[0], "rb").read()
            self.assertEqual(raw.count(b"X-User-Tag: u8\r\n"), 1, raw[:300])
            self.assertEqual(raw.count(b"Return-Path:"), 1, raw[:300])
            self.assertTrue(raw.endswith(b"\r\n\r\nTest message body.\r\nEND-%s\r\n"
                                         % m.encode()), raw[-200:])
        finally:
            os.unlink(p)
            time.sleep(1.0)


class T2RelayhostDown(unittest.TestCase):
    def test_redirect_with_relayhost_down_is_kept(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]       # bound, never listening: refused
        g = make_gateway("down", dead)
        try:
            m = new_marker("down")
            code, _ = send(g, ["down@example.com"], make_message(m))
            self.assertEqual(code, 250)
            self.assertEqual(len(stored_with(g, "down@example.com", m)), 1)
            self.assertRegex(g.log_text(),
                             r"sieve: down@example.com: the relayhost did not take the redirect "
                             r"to <fwd3@elsewhere.test>: 451 4.4.1 .*kept in INBOX")
        finally:
            g.stop()
            s.close()


class T4VacationRace(unittest.TestCase):
    """two messages from one sender to the same user, delivered at the same
    moment: one vacation reply (the tracking file's check and record are
    one step under its lock). The relayhost answers RCPT after 1 s, so
    both deliveries plan before either reply is sent."""

    def test_two_concurrent_messages_one_reply(self):
        import threading
        relay = FakeSMTP(mode={"rcpt_delay": 1.0})
        g = make_gateway("vacrace", relay.port)
        try:
            sender = "racer@outside.test"
            marks = [new_marker("race%d" % i) for i in range(2)]
            codes = [None, None]
            go = threading.Barrier(2)

            def one(i):
                go.wait()
                codes[i] = send(g, ["vac@example.com"],
                                make_message(marks[i], from_=sender, to="vac@example.com"),
                                sender=sender)[0]
            ts = [threading.Thread(target=one, args=(i,)) for i in range(2)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(60)
            self.assertEqual(codes, [250, 250])
            for m in marks:
                self.assertEqual(len(stored_with(g, "vac@example.com", m)), 1)
            with relay.lock:
                replies = [t for t in relay.transactions if sender in t["rcpts"] and t["dot"]]
            self.assertEqual(len(replies), 1, "one vacation reply: %d" % len(replies))
        finally:
            g.stop()
            relay.stop()


class T3Dovecot(unittest.TestCase):
    """fileinto + flags as a real Dovecot sees them"""

    def test_dovecot_sees_folder_and_flags(self):
        try:
            import test_mailstore_dovecot as tmd
        except Exception as e:      # noqa: BLE001
            raise unittest.SkipTest("test_mailstore_dovecot: %s" % e)
        if not os.path.exists(tmd.DOVECOT):
            raise unittest.SkipTest("dovecot not installed")
        import tempfile
        import shutil
        base = tempfile.mkdtemp(prefix="pc-sieve-dovecot-")
        dc = tmd.Dovecot(base)
        dc.start()
        relay = FakeSMTP()
        g = hdaemon.Daemon("sgu-dovecot", (
            ("services", "smtp"), ("smtp_listen", "127.0.0.1:{port}"),
            ("myhostname", "mx.example.com"), ("mydomains", "example.com"),
            ("state_dir", "{dir}/state"), ("lists", "file:{dir}/lists"),
            ("users", "file:{dir}/users"), ("delivery", "maildir:%s" % dc.store),
            ("relayhost", "[127.0.0.1]:%d" % relay.port), ("log_level", "info")))
        try:
            write_users(g.path("users"))
            write_script(g.dir, "u1@example.com", SCRIPTS["u1@example.com"])
            g.start(ready=lambda: "smtp ready on" in g.log_text() and
                    port_accepts("127.0.0.1", g.port))
            m = new_marker("dcwork")
            self.assertEqual(send(g, ["u1@example.com"], make_message(m, subject="WORK %s" % m))[0],
                             250)
            for root, dirs, fs in os.walk(dc.store):
                for n in dirs + fs:
                    os.chown(os.path.join(root, n), dc.uid, dc.gid)
            c = dc.imap("u1@example.com")
            try:
                exists, _ = tmd.imap_select(c, "Work")
                self.assertEqual(exists, 1)
                msgs = tmd.imap_messages(c)
                self.assertEqual(len(msgs), 1)
                flags = list(msgs.values())[0][0]
                self.assertIn("\\Flagged", flags)
                self.assertIn("$label1", flags)
                typ, data = c.uid("FETCH", str(list(msgs)[0]), "(BODY.PEEK[])")
                self.assertIn(m.encode(), data[0][1])
                exists, _ = tmd.imap_select(c, "INBOX")
                self.assertEqual(exists, 0)
            finally:
                c.logout()
        finally:
            g.stop()
            relay.stop()
            dc.stop()
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(runner.main())
