"""Redis for tests: a private redis-server (loopback, no persistence) and a
minimal RESP client, enough to write keys exactly as a script would.

    r = RedisServer(workdir); r.start(); c = r.client(); c.call("PING")
    push_entry(c, "kill", "192.0.2.1", ttl=60)    # what `portcullis kill add` does
    r.kill()                                       # SIGKILL (or sig=...)

A RedisServer is stopped (by pid) at interpreter exit and on SIGTERM/SIGHUP.
"""

import re
import shutil
import signal
import socket
import subprocess
import os
import time

from . import util
from .ports import free_port
from .util import wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
PREFIX = "portcullis:"


class RespError(Exception):
    pass


class Resp:
    """One connection to Redis; call(*args) sends one command, returns the
    decoded reply (bytes, int, list, None); a -ERR reply raises RespError.
    pipeline(cmds) sends many and returns all replies."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0, db=0):
        self.sock = socket.create_connection((host, port), timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        if db:
            self.call("SELECT", db)

    @staticmethod
    def encode(args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if not isinstance(a, bytes):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(max(65536, n + 2 - len(self.buf)))
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _reply(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest
        if t == b"-":
            return RespError(rest.decode(errors="replace"))
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RespError("bad RESP type byte %r" % t)

    def call(self, *args):
        self.sock.sendall(self.encode(args))
        r = self._reply()
        if isinstance(r, RespError):
            raise r
        return r

    def pipeline(self, cmds):
        self.sock.sendall(b"".join(self.encode(c) for c in cmds))
        return [self._reply() for _ in cmds]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def push_entry(r, kind, entry, reason="bench", origin="admin", ttl=None, prefix=PREFIX):
    """What the CLI does for `KIND add ENTRY`: MULTI; DEL; HSET; [EXPIRE]; EXEC;
    PUBLISH. Returns the replies."""
    key = "%s%s:%s" % (prefix, kind, entry)
    cmds = [("MULTI",), ("DEL", key),
            ("HSET", key, "added", int(time.time()), "origin", origin, "reason", reason)]
    if ttl:
        cmds.append(("EXPIRE", key, ttl))
    cmds += [("EXEC",), ("PUBLISH", prefix + "changes", "%s %s" % (kind, entry))]
    return r.pipeline(cmds)


def info_field(r, section, field):
    text = r.call("INFO", section).decode()
    m = re.search(r"^%s:(\S+)" % re.escape(field), text, re.M)
    return m.group(1) if m else None


class RedisServer:
    def __init__(self, workdir, port=None):
        self.dir = workdir
        self.port = port or free_port()
        self.proc = None
        self.starts = 0
        util.register(self)

    def start(self, dbfilename="dump.rdb", wait=5.0):
        self.starts += 1
        log = os.path.join(self.dir, "redis.%d.log" % self.starts)
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--dbfilename", dbfilename, "--daemonize", "no", "--logfile", log],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError("redis-server exited %s; see %s" % (self.proc.returncode, log))
            try:
                r = Resp(self.port, timeout=0.5)
                ok = r.call("PING") == b"PONG"
                r.close()
                return ok
            except (OSError, RespError, ConnectionError):
                return False
        wait_until(up, wait, 0.02, "redis-server on port %d" % self.port)

    def kill(self, sig=signal.SIGKILL):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(5)
        self.proc = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    kill_now = kill

    def close(self):
        self.kill()
        util.unregister(self)

    def client(self, db=0):
        return Resp(self.port, db=db)
