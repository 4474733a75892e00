"""GNU SASL's command-line client (Debian `gsasl`) doing a mechanism for a
POP3 AUTH exchange (RFC 5034) that a test relays: gsasl 2.2 has IMAP and
SMTP framing of its own, not POP3's.

    line, out = gsasl.pop3_auth(session.cmd, "CRAM-MD5", user, password,
                                "mail.example.com")

cmd(line) sends one line (CRLF added) and returns the server's reply line;
-> (the server's final line, all gsasl printed). gsasl's raw mode writes
the mechanism's name, then its initial response (empty for a server-first
mechanism: AUTH without one), then one line per challenge it reads; each
server "+ <b64>" goes to its stdin, each line it writes to the server.
"""

import shutil
import subprocess

GSASL = shutil.which("gsasl")


def pop3_auth(cmd, mech, user, password, hostname):
    g = subprocess.Popen([GSASL, "--client", "-m", mech, "-a", user, "-p", password,
                          "--service", "pop", "--hostname", hostname, "--no-cb", "--quiet"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert g.stdout.readline().strip() == mech.encode()
        first = g.stdout.readline().strip()
        line = cmd(b"AUTH " + mech.encode() + (b" " + first if first else b""))
        for _ in range(6):
            if not line.startswith(b"+ ") and line.rstrip(b"\r\n") != b"+":
                break
            g.stdin.write(line[2:].strip() + b"\n")
            g.stdin.flush()
            line = cmd(g.stdout.readline().strip())
    finally:
        try:
            g.stdin.close()
        except OSError:
            pass
        out = g.stdout.read() + g.stderr.read()
        g.wait(20)
    return line, out
