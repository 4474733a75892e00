"""IMAP on the wire, for tests that compare servers or check a session's view.

    c = RawImap(port)                  # greeting kept in c.greeting (exact bytes)
    untagged, tagged = c.cmd(b'FETCH 1 (FLAGS)')   # exact bytes, literals inlined
    c.send(b'...'); c.response()       # by hand (IDLE, pipelining)
    parse(b'* 1 FETCH (FLAGS (\\Seen) BODY[HEADER.FIELDS (FROM)] {5}\\r\\nab\\r\\n\\r\\n)')
        -> ['*', '1', 'FETCH', [b'FLAGS', [b'\\\\Seen'], b'BODY[HEADER.FIELDS (FROM)]', b'ab\\r\\n\\r\\n']]

parse() turns one response (as RawImap.response() returns it) into tokens
with the wire's representation choices taken out: an atom, a number, a
quoted string and a literal with the same content are the same bytes; NIL
(the bare atom) is None; a parenthesised list is a Python list; a FETCH item
name keeps its [section]<partial> (spaces and parentheses included), as the
client matches it. It does not check the grammar beyond what it needs.
"""

import re
import socket
import time


class RawImap:
    """An IMAP client that keeps the exact bytes of every answer."""

    def __init__(self, port, host="127.0.0.1", timeout=20, tag_prefix=b"c"):
        self.s = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self.buf = b""
        self.n = 0
        self.tag_prefix = tag_prefix
        self.greeting = self.line()

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def _more(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError("connection closed")
        self.buf += d

    def line(self):
        while b"\r\n" not in self.buf:
            self._more()
        i = self.buf.index(b"\r\n") + 2
        ln, self.buf = self.buf[:i], self.buf[i:]
        return ln

    def exact(self, n):
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self):
        """one whole response (untagged, tagged or continuation), literals inlined"""
        out = b""
        while True:
            ln = self.line()
            out += ln
            m = re.search(rb"\{(\d+)\}\r\n$", ln)
            if not m:
                return out
            out += self.exact(int(m.group(1)))

    def response_within(self, seconds):
        """a response if one starts within seconds, else None"""
        if b"\r\n" in self.buf:
            return self.response()
        self.s.settimeout(seconds)
        try:
            self._more()
        except socket.timeout:
            return None
        finally:
            self.s.settimeout(self.timeout)
        return self.response()

    def quiet_responses(self, quiet=1.0, limit=6.0):
        """untagged responses until none came for `quiet` seconds (at most `limit`)"""
        got, end = [], time.monotonic() + limit
        while time.monotonic() < end:
            r = self.response_within(min(quiet, max(0.05, end - time.monotonic())))
            if r is None:
                break
            got.append(r)
        return got

    def new_tag(self):
        self.n += 1
        return self.tag_prefix + b"%d" % self.n

    def send(self, data):
        self.s.sendall(data)

    def cmd(self, text):
        """send `tag text` (text may hold LITERAL+ literals); (untagged, tagged)"""
        tag = self.new_tag()
        self.s.sendall(tag + b" " + text + b"\r\n")
        return self.until_tagged(tag)

    def until_tagged(self, tag):
        untagged = []
        while True:
            r = self.response()
            if r.startswith(tag + b" "):
                return untagged, r
            untagged.append(r)


class ParseError(ValueError):
    pass


_ATOM_END = b" ()\r\n"


def parse(resp):
    """tokens of one response (see the module comment)"""
    toks, pos = _parse_list(resp, 0, top=True)
    return toks


def _parse_list(b, i, top=False):
    out = []
    n = len(b)
    while i < n:
        c = b[i:i + 1]
        if c == b" ":
            i += 1
        elif c == b"\r" and b[i:i + 2] == b"\r\n":
            if not top:
                raise ParseError("unterminated list")
            return out, i + 2
        elif c == b"(":
            sub, i = _parse_list(b, i + 1)
            out.append(sub)
        elif c == b")":
            if top:
                raise ParseError("unbalanced )")
            return out, i + 1
        elif c == b'"':
            j, s = i + 1, bytearray()
            while True:
                if j >= n:
                    raise ParseError("unterminated quoted string")
                ch = b[j]
                if ch == 0x5c:
                    s.append(b[j + 1])
                    j += 2
                elif ch == 0x22:
                    break
                else:
                    s.append(ch)
                    j += 1
            out.append(bytes(s))
            i = j + 1
        elif c in (b"{", b"~") and re.match(rb"~?\{(\d+)\+?\}\r\n", b[i:i + 30]):
            m = re.match(rb"~?\{(\d+)\+?\}\r\n", b[i:i + 30])
            ln = int(m.group(1))
            s = i + m.end()
            out.append(bytes(b[s:s + ln]))
            i = s + ln
        else:
            j = i
            while j < n and b[j:j + 1] not in _ATOM_END:
                if b[j:j + 1] == b"[":
                    k = b.find(b"]", j)
                    if k < 0:
                        raise ParseError("unterminated [")
                    j = k + 1
                else:
                    j += 1
            tok = bytes(b[i:j])
            out.append(None if tok == b"NIL" else tok)
            i = j
    if not top:
        raise ParseError("unterminated list")
    return out, i
