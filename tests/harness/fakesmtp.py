"""The one scriptable fake SMTP server (a test downstream), and Wire.

    down = FakeSMTP()                 # listens on 127.0.0.1:down.port, threads
    down.mode = {"pipelining": True, "rcpt": b"450 4.2.0 later\\r\\n"}
    ... the gateway relays to [127.0.0.1]:down.port ...
    down.sessions[-1]["cmds"], down.transactions[-1]["raw"], ["dot"], ...
    down.stop()

Records.  One per connection in .sessions:
    cmds   every command line as received (bytes, CRLF kept)
    raw    the body of its current transaction as it arrives (stuffed)
    msgs   the bodies that got their final dot (stuffed)
    dot    a final dot came; closed: the session is over
    txns   its transactions (also in .transactions, in MAIL order):
           {"sender", "rcpts", "raw" (bytearray, grows as lines arrive),
            "dot", "closed", "session" (id), "nmail"}
    id, pending_after_mail, t_rcpt, t_hangup, t_354, mode (a copy), sock

Behaviour (mode, read when a session is accepted; defaults in brackets):
    greet        bytes sent on connect [220]
    pipelining   EHLO advertises PIPELINING
    ehlo_delay   seconds before answering EHLO
    ehlo, helo   the reply to EHLO / HELO
    on_mail      f(session, nth MAIL) -> "421" (421 and close) / "drop" / None
                 (or set .on_mail: read at each MAIL, so it reaches open sessions)
    check_mail   on MAIL: wait 0.2 s, record what else is already pending
    mail, rcpt   the reply to MAIL / RCPT (bytes, or a function(sock))
    mail_close   close right after the reply to MAIL
    rcpt_delay   seconds before answering RCPT
    rcpt_hang    never answer RCPT: wait for the gateway to hang up
    data         the reply to DATA [354]
    data_close   close right after the (non-354) DATA reply
    close_354    close right after the 354
    pause_354    seconds to read nothing after the 354, then go on
    stall        after 354 read nothing, answer nothing: wait stall_for s for the hang-up
    bulk         read the body in one go at the final dot (fast; no per-line progress)
    close_after_final   close right after the reply to the final dot
    421_after_final     0.1 s after that reply: 421 and close
    later_mail   a second MAIL on one connection: send this (may be b"") and close
    abort_after  after this many body octets: 421 and close
    body_reply   send this in the middle of the body (after abort_after octets), stay
    final        the reply to the final dot: bytes, or f(session, txn) -> bytes
    on_partial   f(session, txn) when the stream ends inside a body
    other        the reply to any other verb [500]; RSET/NOOP get 250
"""

import re
import select
import socket
import threading
import time


def unstuff(raw):
    """The message as the downstream would store it: one leading dot off."""
    return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in raw.split(b"\r\n"))


def stuff(msg):
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in msg.split(b"\r\n"))


class Wire:
    """The server side of a test downstream: CRLF lines and DATA bodies read
    from a socket, what the peer already sent (without waiting), its EOF."""

    def __init__(self, c):
        self.c = c
        self.buf = bytearray()
        self.pos = 0

    def _fill(self):
        d = self.c.recv(262144)
        if not d:
            return False
        if self.pos > 262144:
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += d
        return True

    def line(self):
        """The next CRLF-terminated line, or None at end of stream."""
        start = self.pos
        while True:
            i = self.buf.find(b"\r\n", start)
            if i >= 0:
                l = bytes(self.buf[self.pos:i + 2])
                self.pos = i + 2
                return l
            start = max(self.pos, len(self.buf) - 1)
            base = self.pos
            if not self._fill():
                return None
            start -= base - self.pos     # _fill may have moved the buffer

    def body(self):
        """(raw body up to and including the CRLF before the final dot, True)
        or (what arrived before the stream ended, False)."""
        start = self.pos
        while True:
            if self.buf[self.pos:self.pos + 3] == b".\r\n":   # an empty message
                self.pos += 3
                return b"", True
            i = self.buf.find(b"\r\n.\r\n", start)
            if i >= 0:
                raw = bytes(self.buf[self.pos:i + 2])
                self.pos = i + 5
                return raw, True
            start = max(self.pos, len(self.buf) - 4)
            base = self.pos
            if not self._fill():
                return bytes(self.buf[self.pos:]), False
            start -= base - self.pos     # _fill may have moved the buffer

    def pending(self):
        """Whatever the peer has sent that we have not consumed (no waiting)."""
        while True:
            r, _, _ = select.select([self.c], [], [], 0)
            if not r:
                break
            try:
                d = self.c.recv(262144, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not d:
                break
            self.buf += d
        return bytes(self.buf[self.pos:])

    def wait_eof(self, limit):
        """Read and drop until the peer hangs up (True) or limit seconds pass."""
        self.c.settimeout(limit)
        try:
            while self.c.recv(65536):
                pass
            return True
        except OSError:
            return False


_ADDR_RE = re.compile(rb"^(?:MAIL FROM|RCPT TO):\s*<([^>]*)>", re.I)


def verbs(session):
    """The session's commands as upper-case verbs: ["EHLO", "MAIL", ...]."""
    return [c[:4].upper().decode("ascii", "replace") for c in session["cmds"]]


def _addr(line):
    m = _ADDR_RE.match(line)
    return (m.group(1).decode("utf-8", "replace") if m else
            "?" + line.decode("utf-8", "replace").strip())


class FakeSMTP:
    def __init__(self, mode=None, host="127.0.0.1", port=0, backlog=256, stall_for=9.0):
        self.sessions = []
        self.transactions = []
        self.errors = []          # anything but a connection error in a session thread
        self.mode = dict(mode or {})
        self.on_mail = None       # like mode["on_mail"], but read at each MAIL (live)
        self.stall_for = stall_for
        self.lock = threading.RLock()
        self.host = host
        self.port = port
        self.backlog = backlog
        self.sock = None
        self.listen()

    def listen(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.host, self.port))
        self.sock.listen(self.backlog)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept_loop, args=(self.sock,), daemon=True).start()

    def start(self):
        """Nothing to do: it listens from construction (kept for tests written
        against the old threading.Thread downstreams)."""
        return self

    def stop(self):
        """Stop listening and hang up every open session."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)    # wakes the accept()
        except OSError:
            pass
        self.sock.close()
        self.drop_all()

    def _accept_loop(self, ls):
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            with self.lock:
                rec = {"id": len(self.sessions) + 1, "cmds": [], "raw": bytearray(),
                       "msgs": [], "txns": [], "dot": False, "closed": False,
                       "pending_after_mail": None, "t_rcpt": None, "t_hangup": None,
                       "t_354": None, "mode": dict(self.mode), "sock": c}
                self.sessions.append(rec)
            threading.Thread(target=self._serve, args=(c, rec), daemon=True).start()

    def open_sessions(self):
        with self.lock:
            return [r for r in self.sessions if not r["closed"]]

    def drop_all(self):
        """Hang up every session still open (a cached one included)."""
        for r in self.open_sessions():
            try:
                r["sock"].shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def since(self, n):
        with self.lock:
            return list(self.sessions[n:])

    def reset(self):
        """Forget the records (and on_mail); mode stays."""
        with self.lock:
            self.sessions = []
            self.transactions = []
        self.on_mail = None

    # ---------------------------------------------------------------- serving
    def _serve(self, c, rec):
        mode = rec["mode"]
        w = Wire(c)

        def send(r):
            if callable(r):
                r(c)
            else:
                c.sendall(r)
        txn = None
        try:
            send(mode.get("greet", b"220 down ESMTP\r\n"))
            while True:
                line = w.line()
                if line is None:
                    break
                rec["cmds"].append(line)
                verb = line[:4].upper()
                if verb == b"EHLO":
                    time.sleep(mode.get("ehlo_delay", 0))
                    send(mode.get("ehlo", b"250-down\r\n" + (b"250-PIPELINING\r\n" if
                         mode.get("pipelining") else b"") + b"250 8BITMIME\r\n"))
                elif verb == b"HELO":
                    send(mode.get("helo", b"250 down\r\n"))
                elif verb == b"MAIL":
                    rec["nmail"] = rec.get("nmail", 0) + 1
                    if rec["nmail"] > 1 and "later_mail" in mode:
                        # a reused connection: the downstream ends it just now
                        if mode["later_mail"]:
                            send(mode["later_mail"])
                        break
                    hook = self.on_mail or mode.get("on_mail")
                    act = hook(rec, rec["nmail"]) if hook else None
                    if act == "421":
                        send(b"421 4.4.2 down: idle too long, closing\r\n")
                        break
                    if act == "drop":
                        break
                    txn = {"sender": _addr(line), "rcpts": [], "raw": bytearray(),
                           "dot": False, "closed": False, "session": rec["id"],
                           "nmail": rec["nmail"]}
                    with self.lock:
                        rec["txns"].append(txn)
                        self.transactions.append(txn)
                    if mode.get("check_mail"):
                        time.sleep(0.2)
                        rec["pending_after_mail"] = w.pending()
                    send(mode.get("mail", b"250 2.1.0 ok\r\n"))
                    if mode.get("mail_close"):
                        break
                elif verb == b"RCPT":
                    if txn is not None:
                        txn["rcpts"].append(_addr(line))
                    if mode.get("rcpt_hang"):
                        rec["t_rcpt"] = time.time()
                        if w.wait_eof(20):
                            rec["t_hangup"] = time.time()
                        break
                    time.sleep(mode.get("rcpt_delay", 0))
                    send(mode.get("rcpt", b"250 2.1.5 ok\r\n"))
                elif verb == b"DATA":
                    r = mode.get("data", b"354 go ahead\r\n")
                    rec["raw"] = bytearray()
                    if txn is None:     # DATA without MAIL: still record what comes
                        txn = {"sender": None, "rcpts": [], "raw": None, "dot": False,
                               "closed": False, "session": rec["id"], "nmail": 0}
                    txn["raw"] = rec["raw"]
                    send(r)
                    if not r.startswith(b"354"):
                        if mode.get("data_close"):
                            break
                        continue
                    rec["t_354"] = time.monotonic()
                    if mode.get("close_354"):
                        break
                    if mode.get("stall"):
                        time.sleep(self.stall_for)     # the gateway hangs up first
                        break
                    time.sleep(mode.get("pause_354", 0))
                    if not self._body(c, w, rec, txn, mode):
                        break
                    txn = None
                elif verb == b"QUIT":
                    send(b"221 2.0.0 bye\r\n")
                    break
                elif verb in (b"RSET", b"NOOP"):
                    if verb == b"RSET":
                        txn = None
                    send(b"250 2.0.0 ok\r\n")
                else:
                    send(mode.get("other", b"500 5.5.2 what\r\n"))
        except OSError:
            pass
        except Exception as e:      # a bug in the fake: the test reports .errors
            with self.lock:
                self.errors.append("session %d: %r" % (rec["id"], e))
        rec["closed"] = True
        for t in rec["txns"]:
            t["closed"] = True
        try:
            c.close()
        except OSError:
            pass

    def _final(self, c, rec, txn, mode):
        rec["dot"] = txn["dot"] = True
        rec["msgs"].append(bytes(rec["raw"]))
        f = mode.get("final", b"250 2.0.0 queued downstream\r\n")
        c.sendall(f(rec, txn) if callable(f) else f)
        if mode.get("close_after_final"):
            return False
        if mode.get("421_after_final"):
            time.sleep(0.1)
            c.sendall(b"421 4.4.2 down idle too long, closing\r\n")
            return False
        return True

    def _body(self, c, w, rec, txn, mode):
        """The message after 354; False when the session is over."""
        if mode.get("bulk"):
            raw, complete = w.body()
            rec["raw"] += raw
            if not complete:
                if mode.get("on_partial"):
                    mode["on_partial"](rec, txn)
                return False
            return self._final(c, rec, txn, mode)
        abort = mode.get("abort_after")
        said = False
        while True:
            l = w.line()
            if l is None:
                if mode.get("on_partial"):
                    mode["on_partial"](rec, txn)
                return False
            if l == b".\r\n":
                return self._final(c, rec, txn, mode)
            rec["raw"] += l
            if abort is not None and not said and len(rec["raw"]) >= abort:
                said = True
                if "body_reply" in mode:
                    c.sendall(mode["body_reply"])   # out of turn, and carry on reading
                    continue
                c.sendall(b"421 4.3.0 shutting down\r\n")
                c.shutdown(socket.SHUT_WR)
                w.wait_eof(1.0)
                return False
