"""Loaded by every Python process of a guarded test (PYTHONPATH): any connection or name lookup
beyond loopback is refused and written to $MERGEOPS_NETGUARD_LOG, so the test can assert that a
whole pipeline run stayed silent on the network (telemetry, hub calls, analytics)."""

import os
import socket

_LOG = os.environ.get("MERGEOPS_NETGUARD_LOG")
_LOCAL = {"127.0.0.1", "::1", "localhost", "0.0.0.0", "", None}


def _refuse(what: str) -> None:
    if _LOG:
        with open(_LOG, "a") as fh:
            fh.write(f"{os.getpid()} {what}\n")
    raise OSError(f"network guard: {what} refused")


def _host(address):
    return address[0] if isinstance(address, tuple) else None


_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and _host(address) not in _LOCAL:
        _refuse(f"connect {address}")
    return _connect(self, address)


def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and _host(address) not in _LOCAL:
        _refuse(f"connect {address}")
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if isinstance(host, bytes):
        host = host.decode()
    if host not in _LOCAL:
        _refuse(f"lookup {host}")
    return _getaddrinfo(host, *args, **kwargs)


if _LOG:
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
