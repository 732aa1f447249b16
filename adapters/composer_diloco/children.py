"""Child processes the launcher owns: each in its own session (a Ctrl-C reaches the launcher only, which forwards it
once), logging to a file, and on Linux sent SIGTERM by the kernel if the launcher itself dies (even by SIGKILL), so
no replica or Lighthouse outlives it."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec function asking the kernel to SIGTERM the child when its parent exits (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)  # loaded before the fork, not in the child
    prctl = libc.prctl

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return preexec


def popen_options() -> dict[str, object]:
    """What every child is started with: its own session, the parent-death signal, and unbuffered output (its log is
    read while it runs)."""
    return {"start_new_session": True, "preexec_fn": _parent_death_signal(),
            "env": dict(os.environ, PYTHONUNBUFFERED="1")}


def spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start `command` with its stdout and stderr appended to `log`."""
    with log.open("ab") as stream:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stream, stderr=subprocess.STDOUT,
                                **popen_options())  # type: ignore[call-overload]
