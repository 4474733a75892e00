"""Compatibility shim: the lab moved to the package tests/harness/.

`import lab` keeps working for tests written against it (everything below is
re-exported from harness); new code imports harness directly:

    from harness.postfix import Lab            # private Postfix + smtp-sink + milter
    from harness import daemon, ports, fakesmtp, load, runner

As a program it is the shell runners' helper (see _main below).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness.client import (LOCAL_HOSTNAME, SmtpClient, Step, make_message,  # noqa: E402,F401
                            new_marker)
from harness.daemon import BIN, REPO, SANITIZER_RE  # noqa: E402,F401
from harness.fakesmtp import Wire  # noqa: E402,F401
from harness.ports import free_port, ipv6_loopback_usable, port_accepts  # noqa: E402,F401
from harness.postfix import (DAEMON_DEFAULTS, MYHOSTNAME, POSTFIX, SMTP_SINK,  # noqa: E402,F401
                             Delivered, Lab, LabError, daemon_config_text)
from harness.util import VERBOSE, wait_until  # noqa: E402,F401
from harness.util import _on_signal, _cleanup_all  # noqa: E402,F401
from harness.util import log as _log  # noqa: E402,F401
from harness.util import size as _size, read as _read, read_from as _read_from  # noqa: E402,F401
from harness.util import tail as _tail, pid_alive as _pid_alive, kill as _kill  # noqa: E402,F401
import time  # noqa: E402


def _main(argv):
    """Helpers for shell runners:
        lab.py free-port                       print a free 127.0.0.1 TCP port
        lab.py daemon-config PORT DIR [k=v..]  print a portcullisd config
        lab.py wait-port PORT [SECS [PID]]     exit 0 once 127.0.0.1:PORT accepts;
                                               1 on timeout or if PID exits first
        lab.py sanitizer-scan LOG              print sanitizer lines; exit 1 if any
        lab.py                                 smoke test the lab without a milter
    """
    if argv and argv[0] == "free-port":
        print(free_port())
        return 0
    if argv and argv[0] == "daemon-config":
        ov = dict(a.split("=", 1) for a in argv[3:])
        sys.stdout.write(daemon_config_text(int(argv[1]), argv[2], **ov))
        return 0
    if argv and argv[0] == "wait-port":
        pid = int(argv[3]) if len(argv) > 3 else None
        try:
            wait_until(lambda: port_accepts("127.0.0.1", int(argv[1])) or
                       (pid is not None and not _pid_alive(pid)),
                       float(argv[2]) if len(argv) > 2 else 10.0, what="port " + argv[1])
        except LabError as e:
            print(e, file=sys.stderr)
            return 1
        if pid is not None and not _pid_alive(pid):
            print("process %d exited before listening" % pid, file=sys.stderr)
            return 1
        return 0
    if argv and argv[0] == "sanitizer-scan":
        bad = [l for l in _read(argv[1]).splitlines() if SANITIZER_RE.search(l)]
        for l in bad:
            print(l)
        return 1 if bad else 0
    if argv:
        print(_main.__doc__, file=sys.stderr)
        return 2
    _smoke()
    return 0


def _smoke():
    # Smoke test without a milter: outside client to a relay domain and to a
    # foreign domain (Postfix relays both for mynetworks; the sink gets them).
    t0 = time.monotonic()
    with Lab(milter=False) as lab:
        print("lab %s up in %.2fs (smtp %d, sink %d, ipv6 %s)" % (
            lab.dir, time.monotonic() - t0, lab.smtp_port, lab.sink_port, lab.ipv6))
        for src, rcpt in (("127.0.0.5", "user@example.com"), ("127.0.0.2", "user@other.org")) + (
                (("::1", "user6@other.org"),) if lab.ipv6 else ()):
            m = new_marker()
            c = lab.send(src, "sender@outside.test", [rcpt], make_message(m, to=rcpt))
            print(c.transcript())
            d = lab.wait_for_message(m)
            print("  delivered:", d)
        print("smoke ok in %.2fs" % (time.monotonic() - t0), flush=True)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
