#!/usr/bin/python3
"""Differential test: the same (script, message, envelope) through our Sieve
interpreter and through Debian's dovecot-sieve `sieve-test` (Pigeonhole
0.5.19), comparing the action lists: fileinto targets and flags, redirect
addresses, reject texts, vacation decisions (period, subject), discard, and
the implicit keep with its flags.

Cases come from a generator with a fixed seed (covering every base test,
match type, comparator, address part and action; every third case variables,
match values, regex, date, index and editheader), so a failure is
reproducible: each differing case is written to DIR/case-N.{sieve,eml}.

Known deviations, kept out of the generator: regex syntax (Pigeonhole uses
POSIX regcomp(), we use PCRE2, a superset), and a Pigeonhole :matches bug
("R?:*" matches "report": after "?", a literal before "*" is not compared).

Run: python3 tests/sieve/differential.py [-n 600] [--seed 5228]
     (SIEVE_BIN: directory holding sieve-conformance, default build/asan/bin)
Last line: "sieve differential: N cases, N identical, N differ".
Needs sieve-test (apt-get install dovecot-sieve); says SKIP without it.
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("SIEVE_BIN", os.path.join(REPO, "build", "asan", "bin"))

WORDS = ["Hello", "world", "offer", "Invoice", "meeting", "URGENT", "free", "lunch",
         "report", "Re:", "spam", "news", "x", "Weekly"]
LOCALS = ["alice", "bob", "carol", "dave", "list-owner", "bob+news", "Eve.Smith"]
DOMAINS = ["example.org", "example.com", "Sub.Example.NET", "lists.example.com"]


def addr(r):
    return "%s@%s" % (r.choice(LOCALS), r.choice(DOMAINS))


def message(r):
    frm, to = addr(r), addr(r)
    subj = " ".join(r.choice(WORDS) for _ in range(r.randint(1, 4)))
    hdr = ["From: %s <%s>" % (r.choice(["Alice A", "Bob", "\"Carol, C\""]), frm)
           if r.random() < 0.5 else "From: %s" % frm,
           "To: %s" % (to if r.random() < 0.7 else "%s, %s" % (to, addr(r))),
           "Subject: %s" % subj]
    if r.random() < 0.5:
        hdr.append("X-Score: %d" % r.randint(0, 20))
    if r.random() < 0.3:
        hdr.append("Cc: %s" % addr(r))
    if r.random() < 0.3:
        hdr.append("X-Mailer: %s" % r.choice(WORDS))
    body = " ".join(r.choice(WORDS) for _ in range(r.randint(0, 30)))
    return "\n".join(hdr) + "\n\n" + body + "\n", frm, to, subj


def key_from(r, value):
    """a key that sometimes matches value"""
    c = r.random()
    if c < 0.3 and value:
        i = r.randint(0, len(value) - 1)
        return value[i:i + r.randint(1, 6)]
    if c < 0.45:
        return value.upper() if r.random() < 0.5 else value.lower()
    if c < 0.6 and value:
        return value[:r.randint(0, len(value))] + "*"
    if c < 0.7 and value:
        return "?" + value[1:]
    if c < 0.8:
        return "*" + r.choice(WORDS).lower() + "*"
    return r.choice(WORDS + LOCALS + DOMAINS)


def q(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test(r, env, depth=0):
    frm, to, subj = env
    kind = r.choice(["header", "header", "address", "envelope", "exists", "size", "true",
                     "not", "anyof", "allof", "relational", "subaddress", "body"])
    if depth > 1 and kind in ("not", "anyof", "allof"):
        kind = "header"
    mt = r.choice([":is", ":contains", ":matches"])
    cmp = r.choice(["", "", ' :comparator "i;octet"', ' :comparator "i;ascii-casemap"'])
    if kind == "header":
        h = r.choice(["subject", "Subject", "x-mailer", "x-none"])
        keys = [key_from(r, subj) for _ in range(r.randint(1, 2))]
        return "header %s%s %s [%s]" % (mt, cmp, q(h), ", ".join(map(q, keys)))
    if kind == "address":
        part = r.choice([":all", ":localpart", ":domain"])
        h = r.choice(["from", "to", "cc", ["from", "to"]])
        hs = q(h) if isinstance(h, str) else "[%s]" % ", ".join(map(q, h))
        val = frm if part == ":all" else frm.split("@")[0 if part == ":localpart" else 1]
        return "address %s %s%s %s %s" % (part, mt, cmp, hs, q(key_from(r, val)))
    if kind == "envelope":
        part = r.choice([":all", ":localpart", ":domain"])
        e = r.choice(["from", "to"])
        v = frm if e == "from" else to
        val = v if part == ":all" else v.split("@")[0 if part == ":localpart" else 1]
        return "envelope %s %s%s %s %s" % (part, mt, cmp, q(e), q(key_from(r, val)))
    if kind == "exists":
        hs = r.sample(["subject", "x-score", "cc", "x-mailer", "from", "x-none"], r.randint(1, 2))
        return "exists [%s]" % ", ".join(map(q, hs))
    if kind == "size":
        return "size %s %d" % (r.choice([":over", ":under"]), r.choice([10, 100, 150, 300, 1000]))
    if kind == "true":
        return r.choice(["true", "false"])
    if kind == "not":
        return "not " + test(r, env, depth + 1)
    if kind in ("anyof", "allof"):
        return "%s (%s)" % (kind, ", ".join(test(r, env, depth + 1)
                                            for _ in range(r.randint(1, 3))))
    if kind == "relational":
        rel = r.choice(["gt", "ge", "lt", "le", "eq", "ne"])
        if r.random() < 0.5:
            return 'header :value %s :comparator "i;ascii-numeric" "x-score" "%d"' % (
                q(rel), r.randint(0, 20))
        return 'address :count %s :comparator "i;ascii-numeric" ["to", "cc"] "%d"' % (
            q(rel), r.randint(0, 3))
    if kind == "subaddress":
        return "envelope %s :is \"to\" %s" % (r.choice([":user", ":detail"]),
                                             q(r.choice(["bob", "news", "", "alice"])))
    if r.random() < 0.5:
        return "body %s :contains %s" % (r.choice([":raw", ":text", ':content "text"',
                                                  ':content "text/plain"', ':content "image"']),
                                        q(r.choice(WORDS)))
    if r.random() < 0.5:
        return 'header :count %s :comparator "i;ascii-numeric" ["to", "subject", "x-none"] "%d"' % (
            q(r.choice(["gt", "eq", "lt"])), r.randint(0, 3))
    return "body :contains %s" % q(r.choice(WORDS))


def action(r):
    a = r.choice(["keep", "keep", "discard", "fileinto", "fileinto", "redirect", "stop",
                  "flags", "reject", "vacation", "copyinto"])
    if a == "keep":
        return r.choice(["keep;", 'keep :flags "\\\\Seen";', 'keep :flags "\\Seen";'])
    if a == "fileinto":
        return "fileinto %s;" % q(r.choice(["Junk", "INBOX.Lists", "Work", "INBOX"]))
    if a == "copyinto":
        return "fileinto :copy :flags [%s] %s;" % (
            q(r.choice(["\\Flagged", "$label1", "\\Seen \\Answered", "\\\\Bogus"])),
            q(r.choice(["Archive", "Junk"])))
    if a == "redirect":
        return "redirect %s%s;" % (r.choice(["", ":copy "]), q(r.choice(
            ["fwd@example.net", "Boss <boss@example.com>", "x@example.org"])))
    if a == "flags":
        return "%s %s;" % (r.choice(["addflag", "setflag", "removeflag"]),
                           q(r.choice(["\\Seen", "$spam", "\\Flagged $work", "\\\\Seen"])))
    if a == "reject":
        return "reject %s;" % q(r.choice(["not wanted", "go away"]))
    if a == "vacation":
        return "vacation :days %d :subject %s%s %s;" % (
            r.randint(1, 9), q("Away"),
            r.choice(["", " :addresses [%s]" % q(addr(r)), " :from %s" % q(addr(r)),
                      " :mime", " :handle %s" % q("h1")]), q("I am away."))
    return a + ";"


def script(r, env):
    lines = ['require ["fileinto", "envelope", "copy", "relational", "subaddress",'
             ' "imap4flags", "reject", "vacation", "body", "comparator-i;ascii-numeric"];']
    for _ in range(r.randint(1, 3)):
        blk = " ".join(action(r) for _ in range(r.randint(1, 2)))
        s = "if %s { %s }" % (test(r, env), blk)
        if r.random() < 0.4:
            s += " elsif %s { %s }" % (test(r, env), action(r))
        if r.random() < 0.4:
            s += " else { %s }" % action(r)
        lines.append(s)
    if r.random() < 0.3:
        lines.append(action(r))
    return "\n".join(lines) + "\n"


DATES = ["Sun, 06 Dec 2026 20:13:52 +0100", "Mon, 1 Feb 2021 03:04:05 -0800",
         "Tue, 29 Feb 2028 23:59:59 +0000", "6 Dec 2026 20:13 +0530"]


def message2(r):
    """a message with repeated fields and a Date, for index/date/editheader"""
    text, frm, to, subj = message(r)
    hdr, body = text.split("\n\n", 1)
    extra = ["Received: from relay%d.example.net by mx.example.com; %s" % (i, r.choice(DATES))
             for i in range(r.randint(1, 3))]
    extra.append("Date: %s" % r.choice(DATES))
    if r.random() < 0.5:
        extra.append("X-Tag: %s" % r.choice(WORDS))
        extra.append("X-Tag: %s" % r.choice(WORDS))
    return "\n".join(extra + [hdr]) + "\n\n" + body, frm, to, subj


def test2(r, env):
    frm, to, subj = env
    k = r.choice(["regex", "matches", "string", "date", "index", "exists", "header"])
    if k == "regex":
        # POSIX ERE syntax only: Pigeonhole uses regcomp(), we use PCRE2 (a superset)
        pat = r.choice(["^(\\w+) (\\w+)", "^[Rr][Ee]:", "([a-z]+)$", "^[A-Z]", "o(.)f"])
        return "header :regex %s %s" % (q("subject"), q(pat))
    if k == "matches":
        # not "R?:*": Pigeonhole 0.5.19 lets "?LITERAL*" match without comparing
        # LITERAL ("R?:*" matches "report"), a bug we do not copy
        return "header :matches %s %s" % (q("subject"), q(r.choice(["* *", "*", "?*e*", "Re:*"])))
    if k == "string":
        return "string %s %s %s" % (r.choice([":is", ":contains", ":matches"]),
                                    q(r.choice(["${a}", "${1}", "${a}${b}", "${1}-${2}"])),
                                    q(r.choice(["", "x", "*", "hello", "a*"])))
    if k == "date":
        part = r.choice(["year", "month", "day", "hour", "weekday", "zone", "date", "time"])
        zone = r.choice(["", ' :zone "+0000"', ' :zone "-0800"', " :originalzone"])
        return "date%s %s %s %s" % (zone, q(r.choice(["date", "received"])), q(part),
                                    q(r.choice(["2026", "12", "06", "19", "0", "+0100",
                                                "2026-12-06", "*"])))
    if k == "index":
        return "header :index %d%s %s %s" % (r.randint(1, 3), r.choice(["", " :last"]),
                                              q(r.choice(["received", "x-tag"])),
                                              q(r.choice(["*relay1*", "*", "free"])))
    if k == "exists":
        return "exists %s" % q(r.choice(["x-tag", "x-added", "subject", "date"]))
    return "header :contains %s %s" % (q(r.choice(["x-added", "x-tag", "subject"])),
                                       q(r.choice(WORDS)))


def action2(r):
    k = r.choice(["set", "fileintovar", "addheader", "deleteheader", "keep", "discard",
                  "flags"])
    if k == "set":
        mod = r.choice(["", ":lower ", ":upper ", ":upperfirst ", ":length ", ":quotewildcard "])
        return "set %s%s %s;" % (mod, q(r.choice(["a", "b"])),
                                 q(r.choice(["${1}", "${2}", "Val*", "${a}x", "${0}"])))
    if k == "fileintovar":
        return "fileinto :create %s;" % q(r.choice(["F.${a}", "G.${1}", "INBOX.${b}", "H"]))
    if k == "addheader":
        return "addheader %s%s %s;" % (r.choice(["", ":last "]), q(r.choice(["X-Added", "X-Tag"])),
                                       q(r.choice(["one", "${1}", "two words"])))
    if k == "deleteheader":
        return "deleteheader %s%s;" % (r.choice(["", ":index 1 ", ":index 1 :last "]),
                                       q(r.choice(["x-tag", "received", "subject", "x-added"])))
    if k == "flags":
        return "addflag %s;" % q(r.choice(["${a}", "\\Seen", "$x"]))
    return k + ";"


def script2(r, env):
    lines = ['require ["fileinto", "variables", "regex", "date", "index", "editheader",'
             ' "mailbox", "imap4flags", "relational", "comparator-i;ascii-numeric"];']
    for _ in range(r.randint(2, 4)):
        blk = " ".join(action2(r) for _ in range(r.randint(1, 3)))
        s = "if %s { %s }" % (test2(r, env), blk)
        if r.random() < 0.4:
            s += " else { %s }" % action2(r)
        lines.append(s)
    return "\n".join(lines) + "\n"


def pigeonhole(st, sieve, eml, frm, to, tmp):
    p = subprocess.run(["sieve-test", "-x", "+editheader", "-O", "-o", "mail_uid=65534", "-o", "mail_gid=65534",
                        "-o", "first_valid_uid=1", "-o", "mail_location=maildir:" + tmp + "/m",
                        "-f", frm, "-a", to, "-r", to, sieve, eml],
                       capture_output=True, text=True, timeout=30)
    out = p.stdout
    if "Performed actions:" not in out:
        return ["COMPILE-ERROR" if "failed to compile" in p.stderr else "RUNTIME-ERROR"]
    acts, section, cur, body = [], None, None, None
    for line in out.splitlines():
        t = line.strip()
        if t == "START MESSAGE" and cur and isinstance(cur[1], dict):
            body = []
            continue
        if body is not None:
            if t == "END MESSAGE":
                cur[1]["reason"] = "\n".join(body)
                body = None
            else:
                body.append(line)
            continue
        if t == "Performed actions:":
            section = ""
            continue
        if t == "Implicit keep:":
            section = "implicit "
            continue
        if section is None or not t or t == "(none)":
            continue
        if t.startswith("* "):
            cur = None
            item = t[2:]
            if item.startswith("store message in folder: "):
                cur = [section + "store " + item[len("store message in folder: "):], []]
                acts.append(cur)
            elif item.startswith("redirect message to: "):
                acts.append(["redirect " + item[len("redirect message to: "):].strip("<>"), None])
            elif item == "discard":
                acts.append(["discard", None])
            elif item.startswith("reject message with reason: "):
                acts.append(["reject " + item[len("reject message with reason: "):], None])
            elif item.startswith("send vacation message"):
                cur = ["vacation", {}]
                acts.append(cur)
            else:
                acts.append([item, None])
        elif t.startswith("+ add IMAP flags: ") and cur and isinstance(cur[1], list):
            cur[1].extend(t[len("+ add IMAP flags: "):].lower().split())
        elif t.startswith("=> ") and cur and isinstance(cur[1], dict):
            k, _, v = t[3:].partition(":")
            cur[1][k.strip()] = v.strip()
    res = []
    for a, extra in acts:
        if isinstance(extra, list):
            res.append(a + (" flags:" + " ".join(sorted(set(extra))) if extra else ""))
        elif isinstance(extra, dict):
            res.append("vacation %s %s from=%s reason=%s" % (
                extra.get("seconds", ""), extra.get("subject", ""), extra.get("from", ""),
                extra.get("reason", "")))
        else:
            res.append(a)
    return sorted(res)


def ours(sieve, eml, frm, to):
    p = subprocess.run([os.path.join(BIN, "sieve-conformance"), "--run", sieve, eml, frm, to],
                       capture_output=True, text=True, timeout=30)
    if p.returncode != 0 or "Sanitizer" in p.stderr or "runtime error:" in p.stderr:
        return ["CRASH " + p.stderr[-200:]]
    return sorted(l for l in p.stdout.splitlines() if l)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=5228)
    ap.add_argument("--keep", default=None, help="directory for differing cases")
    a = ap.parse_args()
    if shutil.which("sieve-test") is None:
        print("SKIP sieve differential: sieve-test not installed (dovecot-sieve)")
        return 0
    r = random.Random(a.seed)
    tmp = tempfile.mkdtemp(prefix="pc-sieve-diff-")
    os.chmod(tmp, 0o777)	# sieve-test drops to mail_uid
    keep = a.keep or tmp
    same = differ = 0
    for i in range(a.n):
        if i % 3 == 2:	# every third case: variables, regex, date, index, editheader
            text, frm, to, subj = message2(r)
            src = script2(r, (frm, to, subj))
        else:
            text, frm, to, subj = message(r)
            src = script(r, (frm, to, subj))
        sieve, eml = os.path.join(tmp, "s%d.sieve" % i), os.path.join(tmp, "m%d.eml" % i)
        with open(sieve, "w") as f:
            f.write(src)
        with open(eml, "w") as f:
            f.write(text)
        want, got = pigeonhole("sieve-test", sieve, eml, frm, to, tmp), ours(sieve, eml, frm, to)
        if want == got:
            same += 1
            continue
        differ += 1
        shutil.copy(sieve, os.path.join(keep, "case-%d.sieve" % i))
        shutil.copy(eml, os.path.join(keep, "case-%d.eml" % i))
        if differ <= 10:
            print("DIFFER case %d (from %s to %s): pigeonhole %s, ours %s\n%s" % (
                i, frm, to, want, got, src))
    print("sieve differential: %d cases, %d identical, %d differ" % (a.n, same, differ))
    if not differ:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
