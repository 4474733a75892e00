"""Loopback ports: the one free-port helper.

free_port()               a TCP port free on 127.0.0.1
free_port(ipv6_too=True)  ... and on ::1
free_port(kind=SOCK_DGRAM) a UDP port (dnsmasq)
free_ports(n)             n distinct ports (no collisions between them)
"""

import socket
import time

from .util import HarnessError

_handed_out = set()     # recently returned ports: never the same one twice in a run


def _one(kind, ipv6_too):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    if ipv6_too:
        s6 = socket.socket(socket.AF_INET6, kind)
        try:
            s6.bind(("::1", port))
        finally:
            s6.close()
    return port


def free_port(ipv6_too=False, kind=socket.SOCK_STREAM):
    """A port free on 127.0.0.1 (and on ::1 when asked), different from every
    port this process got from here before."""
    for _ in range(100):
        try:
            port = _one(kind, ipv6_too)
        except OSError:
            continue
        if port in _handed_out:
            continue
        _handed_out.add(port)
        return port
    raise HarnessError("no free loopback port found")


def free_ports(n, ipv6_too=False):
    return [free_port(ipv6_too) for _ in range(n)]


def ipv6_loopback_usable():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


def port_accepts(host, port, timeout=0.2):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def greets(port, timeout=0.5, host="127.0.0.1"):
    """True when host:port answers with an SMTP 220 greeting."""
    try:
        with socket.create_connection((host, port), timeout) as s:
            return s.recv(64).startswith(b"220")
    except OSError:
        return False


def wait_port(port, within=10.0, host="127.0.0.1"):
    """True once host:port accepts a connection, False after within seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if port_accepts(host, port):
            return True
        time.sleep(0.05)
    return port_accepts(host, port)
