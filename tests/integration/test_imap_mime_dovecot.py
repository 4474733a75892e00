#!/usr/bin/python3
"""imap_mime and imap_search against a real Dovecot, byte for byte.

A private Dovecot (dovecot-imapd; its own config, base_dir and log, a
passwd-file passdb, IMAP on a free loopback port, TZ=UTC) serves a Maildir
this test fills with a corpus of real-world MIME shapes written straight into
cur/ (so bare-LF files stay bare LF): multipart/mixed, alternative, related,
digest, nested message/rfc822, encoded words, 8-bit headers and bodies, NUL
bytes, RFC 2231 parameters, groups and broken addresses, broken MIME
(missing end boundary, boundary prefixes, a boundary inside a header,
Content-Type without Mime-Version, garbage types), nesting past the limit,
header-only and empty messages.

For every message the same FETCH attributes go to Dovecot over a raw socket
(the exact bytes of each answer, literals included) and to
build/.../imap-mime-tool (imap_mime.c on the file): ENVELOPE, BODYSTRUCTURE,
BODY, RFC822.SIZE, RFC822.HEADER, and BODY.PEEK[...] of [], HEADER, TEXT,
every part number and its .MIME/.HEADER/.TEXT, HEADER.FIELDS (.NOT), missing
parts, partials <n.m> (inside, across a bare LF's CR, past the end). The value
after the item name must be byte-identical. Then SEARCH programs of every
RFC 3501 key (flags, keywords, UID and sequence sets, sizes, internal and
sent dates, header/address/subject substrings on decoded words, BODY/TEXT on
decoded transfer encodings and charsets, NOT/OR/nesting) must select the
same messages.

Accepted differences (not compared), with the reason:
  - a partial fetch right after another partial of the same message that
    ended just after a lone CR (a CR not before LF) in a message with bare
    LFs: Dovecot's per-mailbox partial cache then misplaces the start by
    one octet (its answer depends on the session's history); ours is the
    history-free answer, which Dovecot gives after any other partial fetch,
    so the test fetches another message's partial in between.
  - BODY/TEXT in the text of a multipart that has no part at all and whose
    last Content-Type is text/ or message/: Dovecot searches that text only
    when the message's structure is in its cache, and whether it is depends
    on the session's history; we never search it, as Dovecot does on a
    fresh mailbox, so SEARCH is compared before any FETCH.
  - a header's encoded word in a charset iconv does not know
    (=?x-unknown?q?abc?=, =?utf-8*en?q?lang?=): Dovecot compares its text
    without case folding, so it matches only keys written as Dovecot folds
    them (upper case); we fold it like all text. The random messages hold
    such words, but no SEARCH program looks for their text.
  - SEARCH CHARSET other than UTF-8/US-ASCII: Dovecot converts any iconv
    charset, we answer NO [BADCHARSET] as the issue asks; only the bogus
    charset case is compared (both refuse).

Run as root (CI): Dovecot refuses mail uid 0, so the store belongs to
"nobody". Skipped when dovecot is not installed.

Run: PORTCULLIS_BIN=build/asan/bin python3 tests/integration/test_imap_mime_dovecot.py
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import dovecot, runner  # noqa: E402
from harness.daemon import SANITIZER_RE, exe  # noqa: E402
from harness.imapwire import RawImap  # noqa: E402

TOOL = exe("imap-mime-tool")
DOVECOT = dovecot.DOVECOT
USER = "mime@example.com"
PASSWORD = "secret-pw"


def crlf(s):
    return s.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def mixed_msg():
    return crlf(b"""From: "Alice Example" <alice@example.com>
To: Bob <bob@example.org>, carol@example.net
Cc: undisclosed-recipients:;
Subject: A mixed message
Date: Mon, 7 Dec 2026 10:00:00 +0100
Message-ID: <mixed.1@example.com>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="XX-outer"

This is the preamble.

--XX-outer
Content-Type: multipart/alternative; boundary=XX-alt

--XX-alt
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Hello w=C3=B6rld, searchable QP t=
ext here.
--XX-alt
Content-Type: text/html; charset="UTF-8"
Content-ID: <html.1@example.com>
Content-Description: the HTML version

<p>Hello <b>world</b></p>
--XX-alt--

--XX-outer
Content-Type: application/pdf; name="report.pdf"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="report.pdf"; size=12
Content-Language: en, de-CH
Content-Location: http://example.com/report.pdf
Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==

JVBERi0xLjQKc2VjcmV0IGF0dGFjaG1lbnQgd29yZAo=
--XX-outer
Content-Type: message/rfc822

From: Dave <dave@example.com>
To: Alice <alice@example.com>
Subject: =?UTF-8?B?SW5uZXIgbcOkc3NhZ2U=?=
Date: Sun, 6 Dec 2026 09:00:00 -0500
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="inner"

--inner
Content-Type: text/plain

inner text part
with two lines
--inner
Content-Type: image/png
Content-Transfer-Encoding: base64

iVBORw0KGgo=
--inner--
--XX-outer--
This is the epilogue.
""")


def bare_lf_msg():
    return (b"From: lf@example.com\nTo: someone@example.com\nSubject: bare LF\n"
            b"Date: Tue, 1 Dec 2026 23:30:00 -0800\nMIME-Version: 1.0\n"
            b"Content-Type: multipart/mixed; boundary=b1\n\npre\n--b1\n"
            b"Content-Type: text/plain; charset=us-ascii\n\nline one\nline two\n\n"
            b"--b1\nContent-Type: text/plain; charset=iso-8859-1\n"
            b"Content-Transfer-Encoding: 8bit\n\ncaf\xe9 au lait\n--b1--\n")


def encoded_msg():
    return crlf(b"""From: =?ISO-8859-1?Q?Andr=E9?= Pirard <PIRARD@vm1.ulg.ac.be>
To: =?US-ASCII?Q?Keith_Moore?= <moore@cs.utk.edu>, "quoted \\"name\\"" <q@example.com>
Cc: Group One: a@example.com, (comment only) b@example.com;, "Empty Group":;
Bcc: broken@, <@route1,@route2:user@example.com>, just-a-name
Reply-To: (Reply Person) reply@example.com
Sender: "Sender" <sender@example.com>
Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= and  more   spaces	tabs
 folded subject line
In-Reply-To: <parent@example.com>
Message-ID: <encoded.1@example.com>
Date: Fri, 4 Dec 2026 12:34:56 +0000

Plain body without MIME headers.
The word needle appears here.
""")


def eightbit_msg():
    return crlf(b"From: J\xc3\xb6rg <joerg@example.com>\nTo: x@example.com\n"
                b"Subject: Gr\xc3\xbc\xc3\x9fe raw 8-bit \"quotes\" and \\ backslash\n"
                b"Date: Thu, 3 Dec 2026 08:00:00 +0200\nMIME-Version: 1.0\n"
                b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
                b"Sch\xc3\xb6ne Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln\n")


def nul_msg():
    return crlf(b"From: nul@example.com\nSubject: has a NUL\nDate: Wed, 2 Dec 2026 10:00:00 +0000\n\n"
                b"before\x00after\nsecond line\n")


def broken_msg():
    # no end boundary; a boundary line inside a part's header; prefix boundaries
    return crlf(b"""From: broken@example.com
Subject: broken MIME
Date: Sat, 5 Dec 2026 18:00:00 +0000
Mime-Version: 1.0
Content-Type: multipart/mixed; boundary="ab"

--ab
Content-Type: multipart/mixed; boundary="abc"

--abc
Content-Type: text/plain
--ab
Content-Type: text/plain; format=flowed

after an interrupted header
--abc
not a part of abc any more
--ab--trailing garbage
epilogue line
""")


def no_mime_version_msg():
    return crlf(b"""From: nomime@example.com
Subject: CTE without Mime-Version
Content-Transfer-Encoding: base64
Content-ID: <ignored@example.com>

aGVsbG8gd29ybGQ=
""")


def ct_only_msg():
    return crlf(b"""From: ctonly@example.com
Subject: Content-Type without Mime-Version
Content-Type: TEXT/HTML; CHARSET=ISO-8859-1; Format=Flowed
Content-Transfer-Encoding: Quoted-Printable
Content-Disposition: inline
Content-Disposition: attachment; filename=second.txt

<b>bold=20text</b>
""")


def digest_msg():
    return crlf(b"""From: digest@example.com
Subject: a digest
MIME-Version: 1.0
Content-Type: multipart/digest; boundary="d"

--d

From: one@example.com
Subject: first in digest

first body
--d
Content-Type: text/plain

explicitly text
--d--
""")


def rfc2231_msg():
    return crlf(b"""From: params@example.com
Subject: RFC 2231
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=p

--p
Content-Type: application/x-stuff;
 title*0*=us-ascii'en'This%20is%20even%20more%20;
 title*1*=%2A%2A%2Afun%2A%2A%2A%20;
 title*2="isn't it!"
Content-Disposition: attachment; filename*=UTF-8''%E2%82%AC%20rates.txt

stuff
--p
Content-Type: text/plain; charset="us-ascii"; name*0="a"; name*2="c"

missing index
--p
Content-Type: text/plain; a="1\\"2"; b=
Content-Type: text/html

first Content-Type wins
--p
Content-Type: text
Content-Transfer-Encoding: 7bit garbage

no subtype
--p
Content-Type: text/plain garbage; charset=utf-8

garbage after subtype
--p--
""")


def top_rfc822_msg():
    return crlf(b"""From: outer@example.com
Subject: top-level message/rfc822
MIME-Version: 1.0
Content-Type: message/rfc822

From: inner@example.com
Subject: the inner one
Content-Type: multipart/alternative; boundary=z
MIME-Version: 1.0

--z
Content-Type: text/plain

plain
--z
Content-Type: text/enriched

<bold>rich</bold>
--z--
""")


def header_only_msg():
    return b"From: hdr@example.com\r\nSubject: no body and no blank line\r\nX-Last: yes"


def empty_lines_msg():
    return b"\r\n\r\nbody of a message with no header\r\n"


def deep_msg(levels):
    head = b"From: deep@example.com\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    out = head
    for i in range(levels):
        out += b"Content-Type: multipart/mixed; boundary=\"lvl%d\"\r\n\r\n--lvl%d\r\n" % (i, i)
    out += b"Content-Type: text/plain\r\n\r\ndeepest\r\n"
    for i in reversed(range(levels)):
        out += b"--lvl%d--\r\n" % i
    return out


def deep_rfc822_msg(levels):
    out = b""
    for i in range(levels):
        out += b"Subject: level %d\r\nContent-Type: message/rfc822\r\n\r\n" % i
    out += b"Subject: bottom\r\n\r\nbottom body\r\n"
    return out


def related_msg():
    return crlf(b"""From: "Doe, John" <john.doe@example.com>
To: "Smith\\, Jane" <jane@example.com>
Subject: =?iso-8859-1?q?caf=E9?= =?utf-8?b?IGF1IGxhaXQ=?=
Date: 1 Jan 2026 00:00:00 GMT
MIME-Version: 1.0 (generated)
Content-Type: multipart/related; boundary="rel"; type="text/html"

--rel
Content-Type: text/html; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

<p>Caf=E9 cr=E8me br=FBl=E9e</p>
--rel
Content-Type: image/gif
Content-ID: <img1>
Content-Transfer-Encoding: base64

R0lGODlhAQABAAAAACw=
--rel--
""")


def long_header_msg():
    to = b", ".join(b"user%d@example.com" % i for i in range(40))
    return crlf(b"From: long@example.com\nTo: " + to + b"\nSubject: " + b"word " * 60 +
                b"\nX-Folded: one\n\ttwo\n   three\nDate: garbage date\n\nshort\n")


def odd_headers_msg():
    return crlf(b"""From: "a b"@example.com, user@[192.0.2.1], <>, "J\xc3\xb6rg" <j@example.com>
From: second-from@example.com
To: (only a comment)
Cc: "x\\"y" <xy@example.com>, Name With Spaces <nws @ example . com>
Subject : spaced colon
Subject: second subject wins?
Garbage line without a colon
X-Whitespace-Only:
 \t
Date: Mon, 30 Nov 2026 22:00:00 -1100 (folded
 comment)
Message-ID: <\xc3\xa9t\xc3\xa9@example.com>
In-Reply-To: "a\\"b\\"c\\"d\\"e\\"f" <x@y>
Content-Type: text/plain (a comment); charset="iso-8859-1" (another)
MIME-Version: 1.0

body
""")


def boundary_edge_msg():
    long_b = b"L" * 90
    return crlf(b"From: edge@example.com\nSubject: boundary edges\nMIME-Version: 1.0\n"
                b"Content-Type: multipart/mixed; boundary=\"" + long_b + b"\"\n\n"
                b"--" + long_b + b"\nContent-Type: multipart/alternative; boundary=\"" + long_b[:80] + b"-x\"\n\n"
                b"--" + long_b[:80] + b"-x   \nContent-Type: text/plain\n\nalt one\n"
                b"--" + long_b[:80] + b"-x\nContent-Type: text/plain\n\nalt two\n"
                b"--" + long_b[:80] + b"-x--\n"
                b"--" + long_b + b"\nContent-Type: multipart/mixed\n\nno boundary param\n"
                b"--" + long_b + b"\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
                b"U3ViamVjdDogaGk=\n"
                b"--" + long_b + b"\nContent-Type: text/plain\nX-No-Blank: line\n"
                b"--" + long_b + b"--\n")


def cr_mix_msg():
    return (b"From: crmix@example.com\r\nSubject: mixed line ends\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=m\n\r\n--m\r\nContent-Type: text/plain\n\n"
            b"a\rb\r\nc\nd\n\r\n--m\nContent-Type: text/plain\r\n\r\nlast\n--m--")


def nul_header_msg():
    return crlf(b"From: Nul\x00Name <nul@example.com>\nSubject: nul\x00in subject\n"
                b"Content-Type: text/plain; name=\"a\x00b\"\nMIME-Version: 1.0\n\nx\x00y\n")


# ---- random MIME trees (seeded): the shapes nobody thought of ----

def rand_msg(rnd):
    eol = rnd.choice([b"\r\n", b"\n", None])

    def nl():
        return eol if eol is not None else rnd.choice([b"\r\n", b"\n"])

    def word():
        return rnd.choice([b"alpha", b"Beta", b"g\xc3\xa4mma", b"=?utf-8?q?d=C3=A9lta?=",
                           b"\"quoted word\"", b"(comment)", b"x", b"tab\there", b"semi;colon",
                           b"caf\xe9", b"=?utf-8?b?invalid", b"=?x-unknown?q?abc?=",
                           b"=?utf-8?q?a_b?= =?utf-8?q?c?=", b"=?UTF-8?B?w6k=?=", b"=?iso-8859-1?q?=E9t=E9?=",
                           b"=?utf-8?q?x?=y", b"=?utf-8*en?q?lang?="])

    def addr():
        return rnd.choice([b"user@example.com", b"Name <n@example.org>", b"\"Q, N\" <q@x.y>",
                           b"grp: a@b.c, d@e.f;", b"<>", b"broken@", b"=?iso-8859-1?q?J=F6rg?= <j@x>",
                           b"a@b.c (Comment Name)", b"@r:x@y.z", b"no-at-sign"])

    def ctype(kind, boundary=None):
        if kind == "multipart":
            sub = rnd.choice([b"mixed", b"alternative", b"digest", b"related", b"MIXED"])
            q = rnd.choice([b"\"%s\"", b"%s", b"%s"]) % boundary
            extra = rnd.choice([b"", b"; charset=x", b" (c)", b";\r\n\ttype=\"text/html\""])
            if rnd.random() < 0.1:  # RFC 2231 continuations make the boundary
                return b"multipart/" + sub + b"; boundary*0=" + boundary[:2] + b"; boundary*1=" + boundary[2:]
            return b"multipart/" + sub + b"; boundary=" + q + extra.replace(b"\r\n", nl())
        if kind == "rfc822":
            return rnd.choice([b"message/rfc822", b"MESSAGE/RFC822", b"message/rfc822; x=y"])
        return rnd.choice([b"text/plain", b"text/html; charset=utf-8", b"TEXT/PLAIN; CHARSET=\"ISO-8859-1\"",
                           b"application/octet-stream; name=a.bin", b"image/png", b"text",
                           b"text/plain garbage", b"text/plain; name*0=a; name*1=b",
                           b"text/plain; filename*=utf-8''%E2%82%AC", b"", b"multipart/mixed"])

    def headers(kind, boundary, top, mime):
        hs = []
        if top or rnd.random() < 0.3:
            for name in rnd.sample([b"From", b"To", b"Cc", b"Subject", b"Date", b"Message-ID",
                                    b"Reply-To", b"Sender", b"In-Reply-To", b"Bcc"], rnd.randint(0, 6)):
                if name in (b"From", b"To", b"Cc", b"Reply-To", b"Sender", b"Bcc"):
                    v = b", ".join(addr() for _ in range(rnd.randint(1, 3)))
                elif name == b"Date":
                    v = rnd.choice([b"Mon, 7 Dec 2026 10:00:00 +0100", b"garbage", b"1 Jan 2026 00:00 GMT"])
                else:
                    v = b" ".join(word() for _ in range(rnd.randint(0, 4)))
                if rnd.random() < 0.2:
                    v = v + nl() + rnd.choice([b" ", b"\t"]) + word()
                hs.append(name + rnd.choice([b": ", b":", b" : ", b":  "]) + v)
        if mime and rnd.random() < 0.8:
            hs.append(b"MIME-Version: 1.0")
        if kind != "text" or rnd.random() < 0.8:
            hs.append(rnd.choice([b"Content-Type: ", b"content-type:", b"CONTENT-TYPE:  "]) + ctype(kind, boundary))
        for extra in (b"Content-Transfer-Encoding: " + rnd.choice([b"7bit", b"base64", b"Quoted-Printable", b"x-weird", b""]),
                      b"Content-Disposition: " + rnd.choice([b"inline", b"attachment; filename=\"f.txt\"", b";x=y", b""]),
                      b"Content-Language: " + rnd.choice([b"en", b"en, de", b"(c) fr", b""]),
                      b"Content-ID: <" + word() + b">", b"Content-Description: " + word(),
                      b"Content-Location: http://x/" + word(), b"Content-MD5: abc=="):
            if rnd.random() < 0.15:
                hs.append(extra)
        if rnd.random() < 0.05:
            hs.append(b"no colon here")
        if rnd.random() < 0.05:
            hs.append(b"X-CR: a\rb")
        if rnd.random() < 0.04:
            hs.insert(0, b" leading-blank: x")
        rnd.shuffle(hs)
        return hs

    bnum = [0]

    def part(depth, top, parents):
        kinds = ["text"] * 4 + (["multipart", "multipart", "rfc822"] if depth < 4 else [])
        kind = rnd.choice(kinds)
        boundary = None
        if kind == "multipart":
            bnum[0] += 1
            if parents and rnd.random() < 0.3:
                boundary = parents[-1] + rnd.choice([b"", b"x", b"-1"])  # prefixes
            else:
                boundary = b"bnd" + str(bnum[0]).encode() + rnd.choice([b"", b"==", b"_.-"])
        hs = headers(kind, boundary, top, top)
        out = b""
        if rnd.random() < 0.9 or not hs:
            out = nl().join(hs) + nl() + nl()
        else:
            out = nl().join(hs) + nl()
        if kind == "text":
            lines = [rnd.choice([b"text line", b"", b"--" + (parents[-1] if parents else b"x") + b"zz",
                                 b"caf\xc3\xa9", b"a\x00b", b"SGVsbG8=", b"=C3=A9", b"- -", b"a\rb",
                                 b"=c3=a9 lower", b"soft=  ", b"=ZZbad", b"trail   ", b"caf\xe9 latin",
                                 b"w6l0w6k=", b"end=", b"=\r", b"x=3", b"\xff\xfe bad utf8"])
                     for _ in range(rnd.randint(0, 5))]
            out += nl().join(lines)
            if lines and rnd.random() < 0.7:
                out += nl()
        elif kind == "rfc822":
            out += part(depth + 1, True, parents)
        else:
            if rnd.random() < 0.5:
                out += b"preamble" + nl()
            for _ in range(rnd.randint(0, 3)):
                out += b"--" + boundary + rnd.choice([b"", b"", b"  ", b" trailing"]) + nl()
                out += part(depth + 1, False, parents + [boundary])
                if not out.endswith((b"\n",)):
                    out += nl()
            if rnd.random() < 0.85:
                out += b"--" + boundary + b"--" + nl()
                if rnd.random() < 0.4:
                    out += b"epilogue" + nl()
        return out

    return part(0, True, [])


RANDOM_SEARCHES = [
    b"BODY text", b"BODY hello", b"TEXT alpha", b"TEXT \"text/html\"", b"BODY preamble",
    b"CHARSET UTF-8 FROM j\xc3\xb6rg", b"SUBJECT delta", b"SUBJECT \"quoted word\"",
    b"HEADER Content-Type mixed", b"CHARSET UTF-8 BODY caf\xc3\xa9", b"TEXT SGVsbG8",
    b"SENTBEFORE 1-Jan-2026", b"SENTON 7-Dec-2026", b"SENTSINCE 2-Jan-2026", b"CC grp",
    b"TO MISSING_DOMAIN", b"FROM \"Q, N\"", b"BCC comment", b"HEADER Reply-To x", b"HEADER Sender y.z",
    b"TEXT \"no colon\"", b"BODY \"=C3=A9\"", b"CHARSET UTF-8 BODY \xc3\xa9", b"TEXT \"a b\"",
    b"LARGER 300", b"OR BODY epilogue TEXT epilogue", b"NOT TEXT line",
    b"CHARSET UTF-8 SUBJECT caf\xc3\xa9", b"SUBJECT \"a bc\"", b"SUBJECT invalid",
    b"CHARSET UTF-8 SUBJECT \xc3\xa9t\xc3\xa9", b"SUBJECT xy", b"SUBJECT \"x y\"",
    b"CHARSET UTF-8 TEXT \xc3\xa9t\xc3\xa9", b"HEADER In-Reply-To \"a b\"",
    b"FROM caf", b"CHARSET UTF-8 FROM \xc3\xa9", b"TO \"quoted word\"", b"SUBJECT \"(comment)\"",
    b"BODY lower", b"BODY \"soft\"", b"BODY \"softtrail\"", b"BODY \"soft=\"", b"BODY zzbad",
    b"BODY \"trail  \"", b"BODY latin", b"CHARSET UTF-8 BODY \"caf\xc3\xa9 latin\"", b"BODY end",
    b"BODY x=3", b"BODY \"bad utf8\"", b"CHARSET UTF-8 BODY \xc3\xa9t\xc3\xa9", b"BODY \"=c3\"",
]
RANDOM_SEED = int(os.environ.get("IMAP_MIME_SEED", "20261206"))
RANDOM_COUNT = int(os.environ.get("IMAP_MIME_RANDOM", "150"))
RANDOM_ATTS = ["BODYSTRUCTURE", "BODY", "ENVELOPE", "RFC822.SIZE", "BODY.PEEK[TEXT]",
               "BODY.PEEK[1]", "BODY.PEEK[1.MIME]", "BODY.PEEK[2]", "BODY.PEEK[1.1]", "BODY.PEEK[2.MIME]",
               "BODY.PEEK[1.HEADER]", "BODY.PEEK[1.TEXT]", "BODY.PEEK[HEADER.FIELDS (From Content-Type)]",
               "BODY.PEEK[]<7.50>", "BODY.PEEK[1.2.MIME]", "BODY.PEEK[2.1.TEXT]", "BODY.PEEK[1.1.1]",
               "BODY.PEEK[HEADER.FIELDS.NOT (Subject Content-Type)]", "BODY.PEEK[1]<3.20>",
               "BODY.PEEK[2.HEADER.FIELDS (From To)]", "BODY.PEEK[1.1.HEADER]"]


CORPUS = [
    ("mixed", mixed_msg(), "RS"),
    ("bare_lf", bare_lf_msg(), "F"),
    ("encoded", encoded_msg(), ""),
    ("eightbit", eightbit_msg(), "S"),
    ("nul", nul_msg(), "T"),
    ("broken", broken_msg(), "D"),
    ("no_mime_version", no_mime_version_msg(), "a"),
    ("ct_only", ct_only_msg(), "ab"),
    ("digest", digest_msg(), ""),
    ("rfc2231", rfc2231_msg(), "S"),
    ("top_rfc822", top_rfc822_msg(), ""),
    ("header_only", header_only_msg(), ""),
    ("empty_lines", empty_lines_msg(), ""),
    ("deep", deep_msg(105), ""),
    ("deep_rfc822", deep_rfc822_msg(105), ""),
    ("related", related_msg(), "F"),
    ("long_header", long_header_msg(), ""),
    ("empty", b"", ""),
    ("odd_headers", odd_headers_msg(), ""),
    ("boundary_edge", boundary_edge_msg(), ""),
    ("cr_mix", cr_mix_msg(), ""),
    ("nul_header", nul_header_msg(), ""),
]
# Date: forms for SENT*: each its own message (zones, obsolete forms, broken ones)
DATES = [
    b"Mon, 7 Dec 2026 23:30:00 -0500", b"7 Dec 2026 00:30 +0100", b"Tue, 08 Dec 26 01:00:00 GMT",
    b"Sun, 6 Dec 2026 23:59:59 EST", b"Sun, 6 Dec 2026 22:00:00 PDT", b"6 Dec 2026 23:00:00 Z",
    b"6 Dec 2026 23:00:00 a", b"6 Dec 2026 23:00:00 n", b"6 Dec 2026 23:00:00 y", b"6 Dec 2026 23:00:00 Y",
    b"6 dec 2026 12.30.00 UT", b"6 December 2026 12:00:00 +0000", b"Sunday, 6 Dec 2026 12:00 +0000",
    b"6 Dec 2026 12:00:60 +0000", b"31 Nov 2026 12:00 +0000", b"6 Dec 2026 24:00 +0000",
    b"6 Dec 1899 12:00 +0000", b"6 Dec 69 12:00 +0000", b"6 Dec 2026 12 +0000",
    b"(comment) 6 Dec 2026 (c) 12:00 (c) +0000", b"6 Dec 2026 12:00 +00:00", b"6 Dec 2026 12:00 XYZ",
    b"2026-12-06T12:00:00Z", b"", b"Mon,7 Dec 2026 1:05 -1200", b"Mon, 7 Dec 2026 01:05 +1400",
]
CORPUS += [("huge_header", b"From: big@example.com\r\nSubject: " + b"long subject words " * 1500 +
            b"\r\nTo: " + b", ".join(b"\"User %d\" <u%d@example.com>" % (i, i) for i in range(900)) +
            b"\r\nX-Folded: " + b"\r\n\t".join(b"fold%d" % i for i in range(3000)) +
            b"\r\nContent-Type: text/plain; " + b"; ".join(b"p%d=v%d" % (i, i) for i in range(300)) +
            b"\r\nMIME-Version: 1.0\r\n\r\nbody\r\n", "")]
CORPUS += [("date%d" % i, b"From: d@example.com\r\nDate: " + d + b"\r\nSubject: date\r\n\r\nx\r\n", "")
           for i, d in enumerate(DATES)]
KEYWORDS = ["$Label1", "Project"]
MTIME0 = 1796000000  # 2026-11-29 ~ (internal dates a day apart)

BASE_ATTS = [
    "ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822.SIZE", "RFC822.HEADER",
    "BODY.PEEK[]", "BODY.PEEK[HEADER]", "BODY.PEEK[TEXT]",
    "BODY.PEEK[HEADER.FIELDS (From Subject X-Folded)]",
    "BODY.PEEK[HEADER.FIELDS.NOT (From Subject)]",
    "BODY.PEEK[HEADER.FIELDS (Nonexistent)]",
    "BODY.PEEK[]<0.10>", "BODY.PEEK[]<5.100000>", "BODY.PEEK[]<100000.5>",
    "BODY.PEEK[TEXT]<3.7>", "BODY.PEEK[HEADER]<2.20>",
    "BODY.PEEK[1]", "BODY.PEEK[1.MIME]", "BODY.PEEK[2]", "BODY.PEEK[9]",
    "BODY.PEEK[1.1]", "BODY.PEEK[1.2]", "BODY.PEEK[1.1.MIME]", "BODY.PEEK[1.9.9]",
    "BODY.PEEK[1.HEADER]", "BODY.PEEK[1.TEXT]",
    "BODY.PEEK[2.1]", "BODY.PEEK[2.MIME]",
    "BODY.PEEK[3]", "BODY.PEEK[3.MIME]", "BODY.PEEK[3.1]<1.4>",
    "BODY.PEEK[4]", "BODY.PEEK[4.HEADER]", "BODY.PEEK[4.TEXT]", "BODY.PEEK[4.MIME]",
    "BODY.PEEK[4.1]", "BODY.PEEK[4.2]", "BODY.PEEK[4.2.MIME]",
    "BODY.PEEK[4.HEADER.FIELDS (Subject)]", "BODY.PEEK[4.HEADER.FIELDS.NOT (Subject)]",
    "BODY.PEEK[1]<2.3>", "BODY.PEEK[2]<0.1>",
    "BODY.PEEK[3.HEADER]", "BODY.PEEK[3.TEXT]", "BODY.PEEK[4.1.MIME]", "BODY.PEEK[1.1.1]",
    "BODY.PEEK[HEADER.FIELDS (To Cc Bcc Date Message-ID)]",
]
# partials across converted line ends: every start offset of a short window
PARTIAL_MSGS = ("bare_lf", "cr_mix", "nul", "nul_header")
PARTIAL_ATTS = ["BODY.PEEK[]<%d.3>" % k for k in range(0, 90)] + \
    ["BODY.PEEK[1]<%d.2>" % k for k in range(0, 30)] + \
    ["BODY.PEEK[TEXT]<%d.1>" % k for k in range(0, 30)]

SEARCHES = [
    "ALL", "ANSWERED", "UNANSWERED", "DELETED", "UNDELETED", "DRAFT", "UNDRAFT",
    "FLAGGED", "UNFLAGGED", "SEEN", "UNSEEN", "RECENT", "NEW", "OLD",
    "KEYWORD $Label1", "KEYWORD Project", "UNKEYWORD $Label1", "KEYWORD NoSuchWord",
    "1:3", "2,4,6:*", "*", "UID 1:5", "UID 3,*", "NOT 1:4",
    "LARGER 500", "SMALLER 300", "LARGER 0", "SMALLER 100000",
    "BEFORE 1-Dec-2026", "ON 1-Dec-2026", "SINCE 5-Dec-2026", "BEFORE 1-Jan-2000",
    "SENTBEFORE 3-Dec-2026", "SENTON 2-Dec-2026", "SENTSINCE 4-Dec-2026",
    "SENTON 1-Jan-2026", "SENTBEFORE 1-Jan-1971", "NOT SENTBEFORE 1-Jan-1971",
    "FROM alice", "FROM ALICE@EXAMPLE", "FROM \"Alice Example\"", "FROM andr\xe9",
    "TO bob", "TO moore", "CC \"group one\"", "BCC route", "BCC user@example.com",
    "SUBJECT mixed", "SUBJECT \"more spaces tabs\"", "SUBJECT gr\xfc\xdfe", "SUBJECT caf\xe9",
    "SUBJECT \"\"", "HEADER X-Folded two", "HEADER X-Folded \"\"", "HEADER Message-ID encoded",
    "HEADER Content-Type multipart", "HEADER Subject =?UTF-8?",
    "BODY needle", "BODY NEEDLE", "BODY \"searchable QP text\"", "BODY w\xf6rld",
    "BODY \"caf\xe9 au lait\"", "BODY secret", "BODY attachment", "BODY cr\xe8me",
    "BODY \"bold text\"", "BODY rich", "BODY deepest", "BODY bottom", "BODY after",
    "TEXT needle", "TEXT \"subject: a mixed\"", "TEXT dave@example.com", "TEXT preamble",
    "TEXT \"Content-Type: image/png\"", "TEXT k\xf6ln",
    "OR FLAGGED SEEN", "OR (FROM alice) (BODY needle)", "NOT (OR DRAFT DELETED)",
    "(SEEN FLAGGED)", "OR OR ANSWERED DRAFT NOT SMALLER 400",
    "CHARSET UTF-8 BODY w\xf6rld", "CHARSET US-ASCII SUBJECT mixed",
    "FROM second-from", "FROM j\xf6rg", "FROM \"a b\"", "TO comment", "CC nws",
    "SUBJECT \"second subject\"", "SUBJECT \"spaced colon\"", "HEADER Garbage \"\"",
    "SENTON 30-Nov-2026", "SENTON 1-Dec-2026", "BODY last", "TEXT \"nul\"",
    "HEADER X-Whitespace-Only \"\"", "BODY hi", "TEXT \"Subject: hi\"", "BODY \"alt two\"",
] + ["SENTON %d-%s-%d" % (d, mon, y) for (d, mon, y) in
     [(30, "Nov", 2026), (31, "Dec", 1969), (1, "Jan", 1970), (6, "Dec", 1969)] +
     [(d, "Dec", 2026) for d in range(1, 10)]] + \
    ["SENTBEFORE 7-Dec-2026", "SENTSINCE 7-Dec-2026", "NOT SENTON 6-Dec-2026"]


class Dovecot(dovecot.Dovecot):
    """the harness' private Dovecot (tests/harness/dovecot.py) for USER, its
    time zone UTC as the tool's; fill() puts a corpus in USER's INBOX"""

    def __init__(self, workdir):
        super().__init__(workdir, users={USER: "{PLAIN}" + PASSWORD}, mechanisms="plain",
                         extra_conf="import_environment = TZ\n", env={"TZ": "UTC"})
        self.port = self.imap_port

    def maildir(self, user=USER, folder="INBOX"):
        return super().maildir(user, folder)

    def fill(self, corpus):
        """before start(), which gives the store to the mail user"""
        md = self.maildir()
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(md, sub), exist_ok=True)
        with open(os.path.join(md, "dovecot-keywords"), "w") as f:
            for i, k in enumerate(KEYWORDS):
                f.write("%d %s\n" % (i, k))
        for i, (name, data, flags) in enumerate(corpus):
            fn = os.path.join(md, "cur", "%d.M%dP1.mimetest:2,%s" % (
                MTIME0 + i * 86400, i, "".join(sorted(flags, key=lambda c: (c.islower(), c)))))
            with open(fn, "wb") as f:
                f.write(data)
            os.utime(fn, (MTIME0 + i * 86400, MTIME0 + i * 86400))


def literalize(prog):
    """8-bit strings go as LITERAL+ literals (RFC 3501 has no 8-bit quoted strings)"""
    out = b""
    for m in re.finditer(rb'"(?:[^"\\]|\\.)*"|[^ ()]+|[ ()]', prog):
        tok = m.group(0)
        if any(c > 127 for c in tok):
            if tok.startswith(b'"'):
                tok = tok[1:-1]
            tok = b"{%d+}\r\n" % len(tok) + tok
        out += tok
    return out


def fetch_value(resp, att):
    """the value bytes of the one item in '* n FETCH (NAME value)'"""
    m = re.match(rb"\* \d+ FETCH \(", resp)
    assert m, resp[:200]
    rest = resp[m.end():]
    assert rest.endswith(b")\r\n"), rest[-50:]
    rest = rest[:-3]
    if rest.startswith(b"BODY[") or rest.startswith(b"BINARY["):
        end = rest.index(b"]") + 1
        m2 = re.match(rb"<\d+>", rest[end:])
        if m2:
            end += m2.end()
    else:
        end = rest.index(b" ")
    assert rest[end:end + 1] == b" ", rest[:100]
    return rest[end + 1:]


def tool_fetch(path, atts):
    p = subprocess.run([TOOL, "fetch", path] + atts, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    assert not SANITIZER_RE.search(p.stderr.decode(errors="replace")), p.stderr.decode()
    out, vals = p.stdout, []
    while out:
        nl = out.index(b"\n")
        n = int(out[:nl])
        vals.append(out[nl + 1:nl + 1 + n])
        out = out[nl + 2 + n:]
    assert len(vals) == len(atts)
    return vals


class RandomMimeDovecot(unittest.TestCase):
    """random MIME trees (IMAP_MIME_SEED, IMAP_MIME_RANDOM): FETCH answers identical"""

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(DOVECOT):
            raise unittest.SkipTest("dovecot not installed (apt-get install dovecot-imapd)")
        import random
        rnd = random.Random(RANDOM_SEED)
        cls.msgs = [("random%d" % i, rand_msg(rnd), "") for i in range(RANDOM_COUNT)]
        cls.tmp = tempfile.mkdtemp(prefix="pc-imap-mime-random-")
        os.chmod(cls.tmp, 0o755)
        cls.dc = Dovecot(cls.tmp)
        cls.dc.fill(cls.msgs)
        cls.dc.start()
        cls.c = RawImap(cls.dc.port)
        cls.c.cmd(b"LOGIN %s %s" % (USER.encode(), PASSWORD.encode()))
        _, r = cls.c.cmd(b"SELECT INBOX")
        assert b" OK" in r, r
        cls.files = sorted(os.listdir(os.path.join(cls.dc.maildir(), "cur")))

    @classmethod
    def tearDownClass(cls):
        cls.dc.stop()
        if not os.environ.get("KEEP_LAB"):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_2_random_fetch(self):
        bad = []
        for i, (name, data, _) in enumerate(self.msgs):
            path = os.path.join(self.dc.maildir(), "cur", self.files[i])
            ours = tool_fetch(path, RANDOM_ATTS)
            for att, mine in zip(RANDOM_ATTS, ours):
                untagged, tagged = self.c.cmd(b"FETCH %d (%s)" % (i + 1, att.encode()))
                fetches = [u for u in untagged if re.match(rb"\* \d+ FETCH", u)]
                theirs = fetch_value(fetches[0], att)
                if theirs != mine:
                    bad.append("%s (seed %d) %s:\n  msg %r\n  dovecot %r\n  ours    %r" % (
                        name, RANDOM_SEED, att, data[:1500], theirs[:800], mine[:800]))
        self.assertEqual(bad, [], "%d differences:\n%s" % (len(bad), "\n".join(bad[:6])))


    def test_1_random_search(self):
        env = dict(os.environ, TZ="UTC")
        bad = []
        for prog in RANDOM_SEARCHES:
            raw = literalize(prog)
            untagged, tagged = self.c.cmd(b"SEARCH " + raw)
            want = b"".join(u for u in untagged if u.startswith(b"* SEARCH"))
            p = subprocess.run([TOOL, "search", self.dc.maildir(), raw], capture_output=True,
                               env=env, timeout=300)
            self.assertEqual(p.returncode, 0, p.stderr)
            if p.stdout != want:
                bad.append("%s: dovecot %r ours %r" % (prog, want, p.stdout))
        self.assertEqual(bad, [], "\n".join(bad))


class ImapMimeDovecot(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(DOVECOT):
            raise unittest.SkipTest("dovecot not installed (apt-get install dovecot-imapd)")
        cls.tmp = tempfile.mkdtemp(prefix="pc-imap-mime-dovecot-")
        os.chmod(cls.tmp, 0o755)
        cls.dc = Dovecot(cls.tmp)
        cls.dc.fill(CORPUS)
        cls.dc.start()
        cls.c = RawImap(cls.dc.port)
        _, r = cls.c.cmd(b"LOGIN %s %s" % (USER.encode(), PASSWORD.encode()))
        assert b" OK" in r, r
        _, r = cls.c.cmd(b"SELECT INBOX")
        assert b" OK" in r, r
        cls.files = sorted(os.listdir(os.path.join(cls.dc.maildir(), "cur")))
        assert len(cls.files) == len(CORPUS)

    @classmethod
    def tearDownClass(cls):
        try:
            cls.c.cmd(b"LOGOUT")
        except Exception:
            pass
        cls.dc.stop()
        if not os.environ.get("KEEP_LAB"):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def path(self, i):
        """message i's file (Dovecot renames it when flags change)"""
        cur = os.path.join(self.dc.maildir(), "cur")
        key = self.files[i].split(":")[0]
        for f in os.listdir(cur):
            if f.split(":")[0].split(",")[0] == key:
                return os.path.join(cur, f)
        raise AssertionError("message %d is gone" % i)

    def test_1_search(self):
        """every SEARCH program selects what Dovecot selects (before any FETCH sets \\Seen)"""
        env = dict(os.environ, TZ="UTC")
        bad = []
        for prog in SEARCHES:
            raw = prog.encode("latin-1").decode("latin-1").encode("utf-8")
            if "CHARSET" not in prog and any(ord(ch) > 127 for ch in prog):
                raw = b"CHARSET UTF-8 " + raw
            raw = literalize(raw)
            untagged, tagged = self.c.cmd(b"SEARCH " + raw)
            want = b"".join(u for u in untagged if u.startswith(b"* SEARCH"))
            p = subprocess.run([TOOL, "search", self.dc.maildir(), raw],
                               capture_output=True, env=env, timeout=120)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertFalse(SANITIZER_RE.search(p.stderr.decode(errors="replace")), p.stderr)
            if p.stdout != want:
                bad.append("%s: dovecot %r, ours %r (%s)" % (prog, want, p.stdout, tagged))
        self.assertEqual(bad, [], "\n".join(bad))

    def test_1_search_badcharset(self):
        """a charset we do not search: both refuse with BADCHARSET"""
        _, tagged = self.c.cmd(b"SEARCH CHARSET X-NO-SUCH-CHARSET BODY x")
        self.assertIn(b"[BADCHARSET", tagged)
        p = subprocess.run([TOOL, "search", self.dc.maildir(), "CHARSET X-NO-SUCH-CHARSET BODY x"],
                           capture_output=True, timeout=60)
        self.assertIn(b"NO [BADCHARSET", p.stdout)

    def test_2_fetch(self):
        """every FETCH attribute of every corpus message is byte-identical to Dovecot's"""
        bad = []
        for i, (name, data, _) in enumerate(CORPUS):
            ours = tool_fetch(self.path(i), BASE_ATTS)
            for att, mine in zip(BASE_ATTS, ours):
                untagged, tagged = self.c.cmd(b"FETCH %d (%s)" % (i + 1, att.encode()))
                self.assertIn(b" OK", tagged, (name, att, tagged))
                fetches = [u for u in untagged if re.match(rb"\* \d+ FETCH", u)]
                self.assertEqual(len(fetches), 1, (name, att, untagged))
                theirs = fetch_value(fetches[0], att)
                if theirs != mine:
                    bad.append("%s %s:\n  dovecot %r\n  ours    %r" % (name, att, theirs[:600], mine[:600]))
        self.assertEqual(bad, [], "%d differences:\n%s" % (len(bad), "\n".join(bad)))

    def test_2_partials(self):
        """partial fetches starting on every octet, through CRs we insert and NULs we replace"""
        bad = []
        names = [c[0] for c in CORPUS]
        for i, (name, data, _) in enumerate(CORPUS):
            if name not in PARTIAL_MSGS:
                continue
            # another message's partial first: Dovecot keeps the last partial's
            # position per mailbox, and with a lone CR that cache shifts its answer
            other = names.index("bare_lf" if name != "bare_lf" else "cr_mix") + 1
            ours = tool_fetch(self.path(i), PARTIAL_ATTS)
            for att, mine in zip(PARTIAL_ATTS, ours):
                self.c.cmd(b"FETCH %d (BODY.PEEK[]<1.1>)" % other)
                untagged, tagged = self.c.cmd(b"FETCH %d (%s)" % (i + 1, att.encode()))
                fetches = [u for u in untagged if re.match(rb"\* \d+ FETCH", u)]
                theirs = fetch_value(fetches[0], att)
                if theirs != mine:
                    bad.append("%s %s: dovecot %r ours %r" % (name, att, theirs, mine))
        self.assertEqual(bad, [], "%d differences:\n%s" % (len(bad), "\n".join(bad[:40])))

    def test_3_rfc822(self):
        """RFC822 and RFC822.TEXT (which set \\Seen, so last)"""
        bad = []
        for i, (name, data, _) in enumerate(CORPUS):
            for att in ("RFC822", "RFC822.TEXT"):
                mine = tool_fetch(self.path(i), [att])[0]
                untagged, tagged = self.c.cmd(b"FETCH %d (%s)" % (i + 1, att.encode()))
                fetches = [u for u in untagged if re.match(rb"\* \d+ FETCH", u)]
                resp = fetches[0]
                m = re.search(att.encode() + rb" ", resp)
                theirs = resp[m.end():]
                # FLAGS (\Seen) may follow or precede the item
                theirs = re.sub(rb" FLAGS \([^)]*\)\)\r\n$", b")\r\n", theirs)[:-3]
                if theirs != mine:
                    bad.append("%s %s: dovecot %r ours %r" % (name, att, theirs[:300], mine[:300]))
        self.assertEqual(bad, [], "\n".join(bad))


if __name__ == "__main__":
    sys.exit(runner.main(require=(), tools=(TOOL,)))
