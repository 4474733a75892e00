"""SmtpClient: a python smtplib client bound to a chosen loopback source
address that records every step and never raises on a 4xx, 5xx or a dropped
connection; new_marker() and make_message() for messages a test can find."""

import re
import smtplib
import uuid

from .util import log as _log

LOCAL_HOSTNAME = "client.portcullis.test"   # what smtplib says in EHLO; never resolved


def new_marker(tag="m"):
    return "pcl-%s-%s" % (tag, uuid.uuid4().hex[:12])


def make_message(marker, from_="Sender <sender@outside.test>", to="user@example.com",
                 reply_to=None, subject=None, extra_headers=(), body=None):
    """An RFC 5322 message carrying marker in Message-ID, Subject and a last
    body line END-<marker>, which is how the sink poller knows it is complete.
    from_=None leaves out From:."""
    h = []
    if from_ is not None:
        h.append("From: %s" % from_)
    if reply_to is not None:
        h.append("Reply-To: %s" % reply_to)
    h.append("To: %s" % to)
    h.append("Subject: %s" % (subject or "lab test %s" % marker))
    h.append("Message-ID: <%s@portcullis.test>" % marker)
    h.append("Date: Mon, 01 Jan 2024 00:00:00 +0000")
    h.extend(extra_headers)
    lines = h + [""] + (body or ["Test message body."]) + ["END-%s" % marker]
    return "\r\n".join(lines) + "\r\n"


class Step:
    """One SMTP exchange: the command sent and the reply the client got.
    code is -1 when the server closed the connection (text says so)."""

    def __init__(self, cmd, code, text):
        self.cmd = cmd
        self.code = code
        self.text = text

    def __repr__(self):
        return "%s -> %s %s" % (self.cmd[:80], self.code, self.text)


class SmtpClient:
    """A python smtplib client bound to a chosen loopback source address.

    Every method records a Step and returns (code, text); none raises on a 4xx,
    5xx or a dropped connection, so tests assert on what the client was told.
    """

    def __init__(self, host, port, source, helo=LOCAL_HOSTNAME, timeout=15):
        self.host = host
        self.port = port
        self.source = source
        self.helo = helo
        self.steps = []
        self.closed = False
        self.smtp = smtplib.SMTP(local_hostname=helo, timeout=timeout,
                                 source_address=(source, 0))

    def _record(self, cmd, code, text):
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        text = text.replace("\n", " | ")
        st = Step(cmd, code, text)
        self.steps.append(st)
        _log("%s %r" % (self.source, st))
        return code, text

    def _run(self, cmd, fn):
        if self.closed:
            return self._record(cmd, -1, "not connected")
        try:
            code, text = fn()
        except smtplib.SMTPServerDisconnected as e:
            self.closed = True
            return self._record(cmd, -1, "disconnected: %s" % e)
        except (OSError, smtplib.SMTPException) as e:
            self.closed = True
            try:
                self.smtp.close()
            except Exception:
                pass
            return self._record(cmd, -1, "error: %s" % e)
        if code == 421:
            self.closed = True
        return self._record(cmd, code, text)

    def connect(self):
        return self._run("CONNECT", lambda: self.smtp.connect(self.host, self.port))

    def ehlo(self):
        def go():
            self.smtp.putcmd("ehlo", self.helo)
            return self.smtp.getreply()
        return self._run("EHLO " + self.helo, go)

    def mail(self, sender, params=""):
        arg = "FROM:<%s>%s" % (sender, (" " + params) if params else "")
        return self._run("MAIL " + arg, lambda: self.smtp.docmd("MAIL", arg))

    def rcpt(self, rcpt, params=""):
        arg = "TO:<%s>%s" % (rcpt, (" " + params) if params else "")
        return self._run("RCPT " + arg, lambda: self.smtp.docmd("RCPT", arg))

    def raw(self, line):
        return self._run(line, lambda: self.smtp.docmd(line))

    def data(self, message):
        """DATA; if the server says 354, send message (dot-stuffed) and
        return the end-of-data reply; else return the DATA reply."""
        code, text = self._run("DATA", lambda: self.smtp.docmd("DATA"))
        if code != 354:
            return code, text
        if isinstance(message, str):
            message = message.encode("utf-8")
        lines = re.split(rb"\r?\n", message)
        if lines and lines[-1] == b"":
            lines.pop()
        payload = b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n" for l in lines)
        payload += b".\r\n"

        def go():
            self.smtp.send(payload)
            return self.smtp.getreply()
        return self._run("<message>.", go)

    def rset(self):
        return self._run("RSET", lambda: self.smtp.docmd("RSET"))

    def quit(self):
        if self.closed:
            return -1, "not connected"
        r = self._run("QUIT", lambda: self.smtp.docmd("QUIT"))
        self.closed = True
        try:
            self.smtp.close()
        except Exception:
            pass
        return r

    def close(self):
        self.closed = True
        try:
            self.smtp.close()
        except Exception:
            pass

    def step(self, prefix):
        """The last step whose command starts with prefix (e.g. 'MAIL')."""
        for st in reversed(self.steps):
            if st.cmd.upper().startswith(prefix.upper()):
                return st
        return None

    def transcript(self):
        return "\n".join("  [%s] %r" % (self.source, s) for s in self.steps)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.quit()


