"""A small, strict, pure-Python milter client (the MTA side, protocol 6).

What it is: a stand-in for Postfix's milter8 client, so a test can play the
MTA with any client address and host name and time each reply precisely.
Wire format (sendmail libmilter mfdef.h, Postfix milter8.c): every packet is
a 4-byte big-endian length N, then N bytes: a one-byte command and its data.
Strings are NUL-terminated; CONNECT carries hostname, family, a 16-bit
network-order port and the address; MAIL and RCPT carry argv as consecutive
strings; SMFIC_MACRO carries the stage's command byte then name/value pairs.

    c = MilterClient(host, port, timeout=5)      connect + OPTNEG
    c.connect(ip, hostname=None, port=12345)     -> reply or None (no reply asked)
    c.helo(name) / c.mail(addr, *esmtp, macros={...}) / c.rcpt(addr, *esmtp)
    c.data() / c.header(name, value) / c.eoh() / c.body(bytes) / c.eom()
    c.abort() / c.quit() / c.close()

Each stage returns the milter's reply as a tuple:
    ('continue',) ('accept',) ('discard',) ('reject',) ('tempfail',)
    ('reject', '550', '5.7.1 text')  ('tempfail', '452', '4.5.3 text')
for SMFIR_REPLYCODE (the kind follows the first digit), ('skip',), or
('shutdown',); None when the stage was declined (SMFIP_NO*) or no reply
was promised (SMFIP_NR_*).  EOM also collects modification requests
(c.modifications).  SMFIR_PROGRESS is swallowed (it resets the timer).

Contract: every read has a timeout (MilterTimeout); a malformed packet, an
unexpected reply, a reply the milter promised not to send, or a closed
socket raises MilterProtocolError.  Never retries, never reconnects.
Loopback or any inet address; no DNS.
"""

import select
import socket
import struct
import time

# commands (MTA -> milter)
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_QUIT_NC = b"K"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"

# replies (milter -> MTA)
SMFIR_ADDRCPT = b"+"
SMFIR_DELRCPT = b"-"
SMFIR_ADDRCPT_PAR = b"2"
SMFIR_SHUTDOWN = b"4"
SMFIR_ACCEPT = b"a"
SMFIR_REPLBODY = b"b"
SMFIR_CONTINUE = b"c"
SMFIR_DISCARD = b"d"
SMFIR_CHGFROM = b"e"
SMFIR_CONN_FAIL = b"f"
SMFIR_ADDHEADER = b"h"
SMFIR_INSHEADER = b"i"
SMFIR_SETSYMLIST = b"l"
SMFIR_CHGHEADER = b"m"
SMFIR_PROGRESS = b"p"
SMFIR_QUARANTINE = b"q"
SMFIR_REJECT = b"r"
SMFIR_SKIP = b"s"
SMFIR_TEMPFAIL = b"t"
SMFIR_REPLYCODE = b"y"

# protocol flags
SMFIP_NOCONNECT = 0x00000001
SMFIP_NOHELO = 0x00000002
SMFIP_NOMAIL = 0x00000004
SMFIP_NORCPT = 0x00000008
SMFIP_NOBODY = 0x00000010
SMFIP_NOHDRS = 0x00000020
SMFIP_NOEOH = 0x00000040
SMFIP_NR_HDR = 0x00000080
SMFIP_NOUNKNOWN = 0x00000100
SMFIP_NODATA = 0x00000200
SMFIP_SKIP = 0x00000400
SMFIP_RCPT_REJ = 0x00000800
SMFIP_NR_CONN = 0x00001000
SMFIP_NR_HELO = 0x00002000
SMFIP_NR_MAIL = 0x00004000
SMFIP_NR_RCPT = 0x00008000
SMFIP_NR_DATA = 0x00010000
SMFIP_NR_UNKN = 0x00020000
SMFIP_NR_EOH = 0x00040000
SMFIP_NR_BODY = 0x00080000
SMFIP_HDR_LEADSPC = 0x00100000
# Postfix milter_protocol = 6 offers every defined bit (MILTER8_V6_PROTO_MASK)
SMFI_V6_PROT = 0x001FFFFF

# actions the MTA allows (SMFIF_*): Postfix offers all nine
SMFIF_ADDHDRS = 0x001
SMFIF_CHGBODY = 0x002
SMFIF_ADDRCPT = 0x004
SMFIF_DELRCPT = 0x008
SMFIF_CHGHDRS = 0x010
SMFIF_QUARANTINE = 0x020
SMFIF_CHGFROM = 0x040
SMFIF_ADDRCPT_PAR = 0x080
SMFIF_SETSYMLIST = 0x100
SMFI_V6_ACTS = 0x1FF

# macro stages in the OPTNEG reply's symbol lists
SMFIM_NAMES = {0: "connect", 1: "helo", 2: "envfrom", 3: "envrcpt", 4: "data",
               5: "eom", 6: "eoh"}

MILTER_CHUNK_SIZE = 65535
MAX_PACKET = 1024 * 1024 + 64    # SMFIP_MDS_1M is the largest a milter may send

# the milter's per-stage opt-outs: (command, "don't send" bit, "no reply" bit)
_STAGES = {
    SMFIC_CONNECT: (SMFIP_NOCONNECT, SMFIP_NR_CONN),
    SMFIC_HELO: (SMFIP_NOHELO, SMFIP_NR_HELO),
    SMFIC_MAIL: (SMFIP_NOMAIL, SMFIP_NR_MAIL),
    SMFIC_RCPT: (SMFIP_NORCPT, SMFIP_NR_RCPT),
    SMFIC_DATA: (SMFIP_NODATA, SMFIP_NR_DATA),
    SMFIC_HEADER: (SMFIP_NOHDRS, SMFIP_NR_HDR),
    SMFIC_EOH: (SMFIP_NOEOH, SMFIP_NR_EOH),
    SMFIC_BODY: (SMFIP_NOBODY, SMFIP_NR_BODY),
    SMFIC_UNKNOWN: (SMFIP_NOUNKNOWN, SMFIP_NR_UNKN),
    SMFIC_BODYEOB: (0, 0),          # never declinable, always answered
}

# replies that end a stage (the verdicts)
_VERDICTS = {
    SMFIR_CONTINUE: "continue",
    SMFIR_ACCEPT: "accept",
    SMFIR_REJECT: "reject",
    SMFIR_TEMPFAIL: "tempfail",
    SMFIR_DISCARD: "discard",
    SMFIR_SHUTDOWN: "shutdown",
    SMFIR_CONN_FAIL: "conn_fail",
}
# modification requests, valid only before the EOM verdict
_MODIFICATIONS = {SMFIR_ADDRCPT, SMFIR_DELRCPT, SMFIR_ADDRCPT_PAR, SMFIR_REPLBODY,
                  SMFIR_CHGFROM, SMFIR_ADDHEADER, SMFIR_INSHEADER, SMFIR_CHGHEADER,
                  SMFIR_QUARANTINE}


class MilterError(Exception):
    pass


class MilterProtocolError(MilterError):
    pass


class MilterTimeout(MilterError):
    pass


def _cstr(s):
    if isinstance(s, str):
        s = s.encode("utf-8", "surrogateescape")
    if b"\0" in s:
        raise ValueError("NUL inside a milter string: %r" % s[:64])
    return s + b"\0"


def _parse_reply_code(data):
    """SMFIR_REPLYCODE data: "ddd[ -]x.y.z text\\0" (maybe multi-line)."""
    if not data.endswith(b"\0") or b"\0" in data[:-1]:
        raise MilterProtocolError("REPLYCODE not a single NUL-terminated string: %r" % data[:80])
    s = data[:-1].decode("utf-8", "replace")
    if (len(s) < 4 or s[0] not in "45" or not s[1:3].isdigit() or s[3] not in " -"):
        raise MilterProtocolError("malformed REPLYCODE %r" % s[:80])
    kind = "tempfail" if s[0] == "4" else "reject"
    return (kind, s[:3], s[4:])


class MilterClient:
    """One MTA-to-milter connection (one SMTP session).

    timeout bounds every single read (seconds); Progress replies restart it,
    up to progress_limit seconds in all for one stage.
    """

    def __init__(self, host, port, timeout=5.0, version=6, actions=SMFI_V6_ACTS,
                 protocol=SMFI_V6_PROT, connect_timeout=None, progress_limit=30.0):
        self.timeout = timeout
        self.progress_limit = progress_limit
        self.modifications = []
        self.symlists = {}
        self.closed = False
        self.offered_protocol = protocol
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.settimeout(connect_timeout or timeout)
        try:
            self.sock.connect((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self._buf = b""
        self._negotiate(version, actions, protocol)

    # ---- framing -------------------------------------------------------

    def _send(self, cmd, data=b""):
        if self.closed:
            raise MilterProtocolError("send on a closed milter connection")
        self._check_nothing_pending(cmd)
        pkt = struct.pack("!I", 1 + len(data)) + cmd + data
        try:
            self.sock.sendall(pkt)
        except socket.timeout:
            raise MilterTimeout("timed out sending %r" % cmd)
        except OSError as e:
            raise MilterProtocolError("send %r failed: %s" % (cmd, e))

    def _check_nothing_pending(self, cmd):
        """Strictness: the milter must not have sent anything we did not ask
        for (e.g. a reply to a stage it said it would not answer)."""
        if self._buf:
            raise MilterProtocolError("unsolicited data before %r: %r" % (cmd, self._buf[:40]))
        r, _, _ = select.select([self.sock], [], [], 0)
        if r:
            try:
                extra = self.sock.recv(4096, socket.MSG_PEEK)
            except OSError as e:
                raise MilterProtocolError("socket error before %r: %s" % (cmd, e))
            if extra:
                raise MilterProtocolError("unsolicited data before %r: %r" % (cmd, extra[:40]))
            # EOF: the milter closed; the send or the next read will say so

    def _recv_exact(self, n, deadline):
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MilterTimeout("no complete milter reply within %.1fs" % self.timeout)
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(max(4096, n - len(self._buf)))
            except socket.timeout:
                raise MilterTimeout("no complete milter reply within %.1fs" % self.timeout)
            except OSError as e:
                raise MilterProtocolError("read failed: %s" % e)
            if not chunk:
                raise MilterProtocolError("milter closed the connection (%d bytes of a "
                                          "packet read)" % len(self._buf))
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _read_packet(self, timeout=None):
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        (length,) = struct.unpack("!I", self._recv_exact(4, deadline))
        if length < 1:
            raise MilterProtocolError("packet length %d" % length)
        if length > MAX_PACKET:
            raise MilterProtocolError("unreasonable packet length %d" % length)
        pkt = self._recv_exact(length, deadline)
        return pkt[:1], pkt[1:]

    # ---- negotiation ---------------------------------------------------

    def _negotiate(self, version, actions, protocol):
        self._send(SMFIC_OPTNEG, struct.pack("!III", version, actions, protocol))
        cmd, data = self._read_packet()
        if cmd != SMFIC_OPTNEG:
            raise MilterProtocolError("OPTNEG answered with %r" % cmd)
        if len(data) < 12:
            raise MilterProtocolError("OPTNEG reply too short (%d bytes)" % len(data))
        mver, mact, mproto = struct.unpack("!III", data[:12])
        if mver < 2 or mver > version:
            raise MilterProtocolError("milter protocol version %d (we offered %d)" % (mver, version))
        if mact & ~actions:
            raise MilterProtocolError("milter wants actions 0x%x beyond offered 0x%x"
                                      % (mact, actions))
        if mproto & ~protocol & 0x0FFFFFFF:
            raise MilterProtocolError("milter wants protocol bits 0x%x beyond offered 0x%x"
                                      % (mproto, protocol))
        rest = data[12:]
        while rest:                     # <u32 stage><"sym sym">\0 ...
            if len(rest) < 5:
                raise MilterProtocolError("truncated symbol list in OPTNEG: %r" % rest)
            (stage,) = struct.unpack("!I", rest[:4])
            end = rest.find(b"\0", 4)
            if end < 0:
                raise MilterProtocolError("symbol list without NUL in OPTNEG")
            if stage not in SMFIM_NAMES:
                raise MilterProtocolError("unknown macro stage %d in OPTNEG" % stage)
            self.symlists[SMFIM_NAMES[stage]] = rest[4:end].decode().split()
            rest = rest[end + 1:]
        self.version, self.actions, self.protocol = mver, mact, mproto

    def declines(self, cmd):
        return bool(self.protocol & _STAGES[cmd][0])

    def no_reply(self, cmd):
        return bool(self.protocol & _STAGES[cmd][1])

    # ---- one stage -------------------------------------------------------

    def _macros(self, cmd, macros):
        if not macros:
            return
        data = cmd
        for k, v in macros.items():
            data += _cstr(k) + _cstr(v)
        self._send(SMFIC_MACRO, data)

    def _stage(self, cmd, data=b"", macros=None):
        # Like Postfix: macros go even for a declined stage.
        self._macros(cmd, macros)
        if self.declines(cmd):
            return None
        self._send(cmd, data)
        if self.no_reply(cmd):
            return None
        return self._read_verdict(cmd)

    def _read_verdict(self, cmd):
        start = time.monotonic()
        while True:
            rcmd, data = self._read_packet()
            if rcmd == SMFIR_PROGRESS:
                if data:
                    raise MilterProtocolError("PROGRESS with data")
                if time.monotonic() - start > self.progress_limit:
                    raise MilterTimeout("milter sent progress for over %.0fs" % self.progress_limit)
                continue
            if rcmd in _VERDICTS:
                if data:
                    raise MilterProtocolError("reply %r after %r carries %d data bytes"
                                              % (rcmd, cmd, len(data)))
                return (_VERDICTS[rcmd],)
            if rcmd == SMFIR_REPLYCODE:
                return _parse_reply_code(data)
            if rcmd == SMFIR_SKIP:
                if cmd != SMFIC_BODY or not (self.offered_protocol & SMFIP_SKIP):
                    raise MilterProtocolError("SKIP after %r" % cmd)
                return ("skip",)
            if rcmd in _MODIFICATIONS and cmd == SMFIC_BODYEOB:
                self.modifications.append((rcmd.decode(), data))
                continue
            raise MilterProtocolError("unexpected reply %r (%d data bytes) after %r"
                                      % (rcmd, len(data), cmd))

    # ---- the SMTP session ------------------------------------------------

    def connect(self, addr, hostname=None, port=54321, family=None, macros=None):
        """SMFIC_CONNECT. hostname defaults to '[addr]' (Postfix's form for a
        client whose name did not verify); family '4' or '6' from addr."""
        if family is None:
            family = "6" if ":" in addr else "4"
        if hostname is None:
            hostname = "[%s]" % addr
        data = _cstr(hostname) + family.encode() + struct.pack("!H", port) + _cstr(addr)
        return self._stage(SMFIC_CONNECT, data, macros)

    def helo(self, name, macros=None):
        return self._stage(SMFIC_HELO, _cstr(name), macros)

    def mail(self, sender, *esmtp, macros=None):
        """sender as the MTA passes it, with angle brackets: '<a@b>'."""
        return self._stage(SMFIC_MAIL, b"".join(_cstr(a) for a in (sender,) + esmtp), macros)

    def rcpt(self, rcpt, *esmtp, macros=None):
        return self._stage(SMFIC_RCPT, b"".join(_cstr(a) for a in (rcpt,) + esmtp), macros)

    def data(self, macros=None):
        return self._stage(SMFIC_DATA, b"", macros)

    def header(self, name, value, macros=None):
        return self._stage(SMFIC_HEADER, _cstr(name) + _cstr(value), macros)

    def eoh(self, macros=None):
        return self._stage(SMFIC_EOH, b"", macros)

    def body(self, chunk, macros=None):
        """One body chunk (CRLF line ends, at most 65535 octets)."""
        if isinstance(chunk, str):
            chunk = chunk.encode()
        if len(chunk) > MILTER_CHUNK_SIZE:
            raise ValueError("body chunk over %d octets" % MILTER_CHUNK_SIZE)
        return self._stage(SMFIC_BODY, chunk, macros)

    def eom(self, macros=None):
        self.modifications = []
        return self._stage(SMFIC_BODYEOB, b"", macros)

    def abort(self):
        """SMFIC_ABORT: no reply is defined for it."""
        self._send(SMFIC_ABORT)

    def quit(self):
        """SMFIC_QUIT, then expect the milter to close (bounded wait)."""
        if self.closed:
            return
        try:
            self._send(SMFIC_QUIT)
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    chunk = self.sock.recv(4096)
                except socket.timeout:
                    raise MilterTimeout("milter did not close after QUIT")
                except OSError:
                    break
                if not chunk:
                    break
                raise MilterProtocolError("data after QUIT: %r" % chunk[:40])
        finally:
            self.close()

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def session(host, port, client_ip, sender="<sender@outside.test>", rcpts=(),
            helo="client.test", hostname=None, mail_macros=None, timeout=5.0):
    """One short transaction up to MAIL (and RCPTs): returns
    {'connect':..., 'helo':..., 'mail':..., 'rcpt': [...]} and quits.
    Stops after a non-continue reply, like an MTA would at that stage."""
    out = {"rcpt": []}
    with MilterClient(host, port, timeout=timeout) as c:
        out["connect"] = c.connect(client_ip, hostname=hostname)
        out["helo"] = c.helo(helo)
        if mail_macros is None:
            mail_macros = {"i": "4ABCDEF", "{mail_addr}": sender.strip("<>")}
        out["mail"] = c.mail(sender, macros=mail_macros)
        if out["mail"] in (None, ("continue",)):
            for r in rcpts:
                out["rcpt"].append(c.rcpt(r))
        c.quit()
    return out


def mail_verdict(host, port, client_ip, sender="<sender@outside.test>", timeout=5.0):
    """The reply a new connection from client_ip gets at MAIL."""
    return session(host, port, client_ip, sender=sender, timeout=timeout)["mail"]


if __name__ == "__main__":
    import sys
    if len(sys.argv) < 4:
        sys.stderr.write("usage: milterclient.py HOST PORT CLIENT-IP [SENDER [RCPT...]]\n")
        sys.exit(2)
    args = sys.argv[1:]
    res = session(args[0], int(args[1]), args[2],
                  sender=args[3] if len(args) > 3 else "<sender@outside.test>",
                  rcpts=args[4:])
    for k in ("connect", "helo", "mail"):
        print("%-8s %s" % (k, res[k]))
    for r in res["rcpt"]:
        print("rcpt     %s" % (r,))
