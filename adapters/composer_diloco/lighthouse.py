"""torchft's Lighthouse as a child process: the quorum service every replica's Manager talks to.

`start_lighthouse` runs the `torchft_lighthouse` command (torchft's own Rust server, as an operator would start it on
a coordinator host) bound to a free loopback port, writes its log to a file and waits, bounded, for the line in which
it says where it listens. A subprocess rather than an in-process `LighthouseServer`, so it lives and dies as a real
one does and shows up in `ps` with its own pid.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from composer_core.diloco_settings import DilocoConfig
from composer_core.errors import ConfigError

LISTENING = re.compile(r"Lighthouse listening on: \S+:(\d+)")
DEFAULT_PORT = 29510  # torchft_lighthouse's own default (--bind [::]:29510)
STARTUP_TIMEOUT_S = 30.0
POLL_S = 0.05


@dataclass(frozen=True)
class LighthouseSettings:
    """torchft_lighthouse's options: quorum size, how long it waits for stragglers before issuing a quorum, and after
    how long without a heartbeat it drops a replica from the quorum."""

    min_replicas: int
    join_timeout_ms: int = 60_000
    heartbeat_timeout_ms: int = 5_000
    quorum_tick_ms: int = 100

    def arguments(self, bind: str) -> list[str]:
        return ["--bind", bind, "--min_replicas", str(self.min_replicas), "--join_timeout_ms",
                str(self.join_timeout_ms), "--heartbeat_timeout_ms", str(self.heartbeat_timeout_ms),
                "--quorum_tick_ms", str(self.quorum_tick_ms)]


def settings_for(diloco: DilocoConfig) -> LighthouseSettings:
    """The Lighthouse a run's diloco section asks for: quorum size diloco.min_replicas; stragglers that still
    heartbeat are waited for half of diloco.quorum_timeout_s, so that a quorum is issued before the replicas' own
    quorum wait runs out."""
    return LighthouseSettings(min_replicas=diloco.min_replicas, join_timeout_ms=int(diloco.quorum_timeout_s * 500))


@dataclass
class Lighthouse:
    process: subprocess.Popen[bytes]
    address: str
    log: Path


def lighthouse_command() -> list[str]:
    """The `torchft_lighthouse` script of this Python's environment (or on PATH); a ConfigError without torchft."""
    beside = Path(sys.executable).with_name("torchft_lighthouse")
    found = str(beside) if beside.exists() else shutil.which("torchft_lighthouse")
    if found is None:
        raise ConfigError("the diloco backend needs torchft's `torchft_lighthouse` command: "
                          "pip install 'composer-core[diloco]'")
    return [found]


def start_lighthouse(settings: LighthouseSettings, log: Path, *, host: str = "127.0.0.1",
                     timeout_s: float = STARTUP_TIMEOUT_S, **popen: object) -> Lighthouse:
    """Start the Lighthouse on a free port of `host`, logging to `log`; return it once it listens. A Lighthouse that
    exits or stays silent for `timeout_s` is stopped and reported with the end of its log."""
    with log.open("ab") as stream:
        process = subprocess.Popen([*lighthouse_command(), *settings.arguments(f"{host}:0")], stdin=subprocess.DEVNULL,
                                   stdout=stream, stderr=subprocess.STDOUT, **popen)  # type: ignore[call-overload]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        port = _listening_port(log)
        if port is not None:
            return Lighthouse(process, f"http://{host}:{port}", log)
        if process.poll() is not None:
            raise ConfigError(f"the Lighthouse exited with code {process.returncode} before listening: "
                              f"{_tail(log)} (log: {log})")
        time.sleep(POLL_S)
    stop_process(process, timeout_s=5.0)
    raise ConfigError(f"the Lighthouse did not say where it listens within {timeout_s:.0f} s: {_tail(log)} "
                      f"(log: {log})")


def _listening_port(log: Path) -> int | None:
    match = LISTENING.search(log.read_text(encoding="utf-8", errors="replace"))
    return int(match.group(1)) if match else None


def _tail(log: Path, characters: int = 600) -> str:
    text = log.read_text(encoding="utf-8", errors="replace").strip()
    return text[-characters:] or "(nothing logged)"


def stop_process(process: subprocess.Popen[bytes], *, timeout_s: float) -> int:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s`; its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
    return process.returncode
