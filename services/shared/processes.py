"""Children that die with their parent, and ports: who holds one.

``sluice up`` starts a broker and an agents worker. ``tied_to_this_process()`` gives the
``subprocess.Popen`` arguments that make such a child die with it, even when it is killed
with SIGKILL: on Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` in the child. That signal
fires when the *thread* that forked the child exits, so spawn from the main thread (or
a thread that lives as long as the process). Each child gets a process group of its own,
so a terminal's Ctrl-C reaches only the parent, which stops its children in order.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import psutil

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def tied_to_this_process() -> dict[str, Any]:
    """Popen keyword arguments: the child dies when this process does (Linux), and is
    out of the terminal's process group (Ctrl-C goes to the parent only)."""
    kwargs: dict[str, Any] = {"process_group": 0, "stdin": subprocess.DEVNULL}
    if _libc is not None:
        kwargs["preexec_fn"] = _die_with(os.getpid())
    return kwargs


def _die_with(parent: int) -> Callable[[], None]:
    prctl = _libc.prctl  # type: ignore[union-attr]
    sigkill = ctypes.c_ulong(int(signal.SIGKILL))
    zero = ctypes.c_ulong(0)

    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        if prctl(PR_SET_PDEATHSIG, sigkill, zero, zero, zero) != 0:
            os._exit(126)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def port_taken(host: str, port: int) -> bool:
    """True if binding ``host:port`` fails because something holds it (a listener)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT does not count
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def who_listens(port: int) -> str:
    """'pid N: command line' of the process listening on ``port``, as far as this user
    may see it."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return "a process this user may not inspect"
    pids = {c.pid for c in conns
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN}
    found = []
    for pid in sorted(p for p in pids if p is not None):
        try:
            command = " ".join(psutil.Process(pid).cmdline()) or psutil.Process(pid).name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            command = "?"
        found.append(f"pid {pid}: {command}")
    return "; ".join(found) or "a process this user may not inspect"


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself has a listening socket on ``port``."""
    try:
        return any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
                   for c in psutil.Process(pid).net_connections(kind="tcp"))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
