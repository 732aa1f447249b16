"""Reading a sandboxed process's output with a cap and a deadline, shared by the local and docker backends.

Both streams are read as they come (a full pipe would block the program), each kept up to `max_bytes`; the first
byte past it, or the deadline, stops reading and calls `kill`. A program that closes its stdout and hangs, or leaves
a child holding the pipe, is therefore stopped by the deadline, never waited for without bound.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

CHUNK = 1 << 16
REAP_TIMEOUT_S = 10.0  # how long a killed process may take to be reaped before that is an error


@dataclass(frozen=True)
class Captured:
    """What was read, and why reading ended."""

    stdout: bytes
    stderr: bytes
    status: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    output_limit: bool
    wall_s: float
    returncode: int | None


def capture(process: subprocess.Popen, *, max_bytes: int, timeout_s: float, kill: Callable[[bytes], None],
            status_fd: int | None = None) -> Captured:
    """Read `process`'s stdout and stderr (and `status_fd` to its end) until they close and it exits; past
    `timeout_s` or `max_bytes` on a stream, `kill(status read so far)` and wait for it to exit (bounded). The
    caller owns and closes `status_fd`."""
    start = time.monotonic()
    deadline = start + timeout_s
    buffers: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray(), "status": bytearray()}
    truncated = {"stdout": False, "stderr": False}
    selector = selectors.DefaultSelector()
    for name, stream in (("stdout", process.stdout), ("stderr", process.stderr)):
        if stream is not None:
            os.set_blocking(stream.fileno(), False)
            selector.register(stream.fileno(), selectors.EVENT_READ, name)
    if status_fd is not None:
        selector.register(status_fd, selectors.EVENT_READ, "status")
    timed_out = output_limit = False
    try:
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(min(remaining, 1.0)):
                name = key.data
                try:
                    data = os.read(key.fd, CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    selector.unregister(key.fd)
                    continue
                buffer = buffers[name]
                if name != "status" and len(buffer) + len(data) > max_bytes:
                    buffer += data[: max_bytes - len(buffer)]
                    truncated[name] = output_limit = True
                else:
                    buffer += data
            if output_limit:
                break
        if not (timed_out or output_limit):
            returncode = _wait(process, max(deadline - time.monotonic(), 0.0))
            timed_out = returncode is None
        if timed_out or output_limit:
            kill(bytes(buffers["status"]))
            returncode = _wait(process, REAP_TIMEOUT_S)
            if returncode is None:
                raise RuntimeError(f"sandbox process {process.pid} did not exit within {REAP_TIMEOUT_S} s of being "
                                   "killed")
    finally:
        selector.close()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    return Captured(bytes(buffers["stdout"]), bytes(buffers["stderr"]), bytes(buffers["status"]),
                    truncated["stdout"], truncated["stderr"], timed_out, output_limit, time.monotonic() - start,
                    None if timed_out or output_limit else returncode)


def _wait(process: subprocess.Popen, timeout_s: float) -> int | None:
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def decode(data: bytes) -> str:
    """Program output as text; undecodable bytes become U+FFFD rather than an error."""
    return data.decode("utf-8", errors="replace")
