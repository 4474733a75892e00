"""Small shared helpers: the harness error, bounded polling, log-file readers,
pid helpers and the at-exit cleanup registry (only what the harness started
is ever signalled, by pid)."""

import atexit
import errno
import os
import signal
import sys
import time

VERBOSE = os.environ.get("LAB_VERBOSE") == "1"
KEEP = os.environ.get("KEEP_LAB") == "1"


class HarnessError(AssertionError):
    """A harness step that did not happen (timeout, early exit): a test failure."""
    pass


def log(msg):
    if VERBOSE:
        sys.stderr.write("lab: %s\n" % msg)


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until it returns a true value; return it, or raise."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise HarnessError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def size(p):
    try:
        return os.path.getsize(p)
    except OSError:
        return 0


def read(p):
    try:
        with open(p, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def read_from(p, off):
    try:
        with open(p, "rb") as f:
            f.seek(off)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def tail(p, n=30):
    return "\n".join(read(p).splitlines()[-n:])


def pid_alive(pid):
    """True while pid runs (a zombie is not alive for our purposes)."""
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def kill(pid, sig):
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def proc_children(pid):
    """Live (non-zombie) direct children of pid, from /proc."""
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        rest = st.rsplit(") ", 1)[-1].split()
        if len(rest) > 1 and int(rest[1]) == pid and rest[0] != "Z":
            kids.append(int(d))
    return sorted(kids)


# ------------------------------------------------------------ cleanup registry
_CLEANUPS = []
_installed = False


def _cleanup_all():
    for obj in list(reversed(_CLEANUPS)):
        try:
            obj.close()
        except Exception as e:          # keep going: stop everything we can
            sys.stderr.write("harness: cleanup: %s\n" % e)


def _on_signal(signum, frame):
    _cleanup_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def register(obj):
    """obj.close() runs at interpreter exit and on SIGTERM/SIGHUP (idempotent
    close() expected).  SIGINT stays KeyboardInterrupt: finally clauses run."""
    global _installed
    _CLEANUPS.append(obj)
    if not _installed:
        _installed = True
        atexit.register(_cleanup_all)
        for s in (signal.SIGTERM, signal.SIGHUP):
            try:
                signal.signal(s, _on_signal)
            except (ValueError, OSError):   # not the main thread
                pass


def unregister(obj):
    if obj in _CLEANUPS:
        _CLEANUPS.remove(obj)


def pss_kib(pids):
    """the processes' proportional set size in all, in KiB (smaps_rollup);
    a process gone meanwhile counts 0"""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/smaps_rollup" % pid) as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total
