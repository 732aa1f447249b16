"""The local launcher: a Lighthouse and N replicas as separate processes on this machine (`--replicas N`).

The config is saved as OUTPUT/config.json and every replica trains from it, in OUTPUT/replica-<id>/, with its log in
OUTPUT/logs/. OUTPUT/replicas.json says which process is which (each replica's id, pid, state and restarts; the
Lighthouse's address and pid), written as soon as the processes start and again on every change.

A replica that dies (a signal, or an exit code other than 0, 2 and 3) is restarted with --resume up to
diloco.max_restarts times and heals from a live peer through torchft; one that exits with the guard's code 3 left the
quorum, one with 2 has a configuration error: neither is restarted, nor is a replica whose peers have all finished
(it could heal from nobody). A replica still running `straggler_timeout_s` after another one finished is stopped (one
hung in a sync blocks nobody: torchft drops it from the quorum once its heartbeats stop). SIGINT / SIGTERM are
forwarded to the replicas (each saves a checkpoint), and every child, the Lighthouse included, is stopped on any way
out. Then the replicas' metrics and fault records are merged (composer_diloco.merge).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from composer_core.config import ComposerConfig
from composer_core.errors import ConfigError
from composer_core.files import write_text_atomic
from composer_core.guard import GUARD_EXIT_CODE
from composer_core.saved_config import check_resumed_config, save_run_config
from composer_diloco.children import popen_options, spawn
from composer_diloco.lighthouse import Lighthouse, settings_for, start_lighthouse, stop_process
from composer_diloco.merge import healed, merge_run, training

REPLICAS_FILE = "replicas.json"
LOGS = "logs"
POLL_S = 0.2
STOP_TIMEOUT_S = 120.0  # after a forwarded SIGINT/SIGTERM: time to save a checkpoint before SIGKILL
KILL_TIMEOUT_S = 10.0
CONFIG_ERROR_EXIT_CODE = 2  # composer_diloco.replica: a restart would fail the same way
LOOPBACK = "127.0.0.1"  # the Lighthouse, every replica's store and manager: this machine only


def replica_folder(out: Path, replica_id: int) -> Path:
    return out / f"replica-{replica_id}"


@dataclass
class ReplicaProcess:
    """One replica slot: its current process and what happened to the earlier ones."""

    replica_id: int
    folder: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    state: str = "starting"  # running | finished | left_quorum | failed | orphaned | stopped | timed_out
    restarts: int = 0
    started: float = 0.0  # time.monotonic() at the current process's start
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    exits: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"replica_id": self.replica_id, "pid": self.process.pid if self.process else None,
                "state": self.state, "restarts": self.restarts, "output_dir": str(self.folder), "log": str(self.log),
                "exits": self.exits}


def exit_record(process: subprocess.Popen[bytes], started: float, launched: float) -> dict[str, Any]:
    """A finished process's pid, exit code or signal, and when (seconds since the launch) it started and ended."""
    code = process.returncode
    return {"pid": process.pid, "exit_code": code if code >= 0 else None,
            "signal": signal.Signals(-code).name if code < 0 else None,
            "started_s": round(started - launched, 2), "ended_s": round(time.monotonic() - launched, 2)}


class Launcher:
    """Runs one DiLoCo job locally; `run()` returns the merged summary."""

    def __init__(self, config: ComposerConfig, out: Path, replicas: int, *, resume: bool = False,
                 straggler_timeout_s: float | None = None) -> None:
        if replicas < 1:
            raise ConfigError(f"--replicas must be at least 1, got {replicas}")
        self.config, self.out, self.resume = config, out, resume
        self.settings = config.diloco
        self.straggler_timeout_s = straggler_timeout_s if straggler_timeout_s is not None else \
            2 * self.settings.timeout_s + self.settings.quorum_timeout_s
        self.replicas = [ReplicaProcess(index, replica_folder(out, index), out / LOGS / f"replica-{index}.log")
                         for index in range(replicas)]
        self.lighthouse: Lighthouse | None = None
        self.launched = time.monotonic()
        self.signals: list[int] = []
        self.stop_deadline: float | None = None
        self.events: list[dict[str, Any]] = []

    # -- the run --------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        saved = self.prepare()
        with self.forwarded_signals():
            try:
                self.lighthouse = start_lighthouse(settings_for(self.settings), self.out / LOGS / "lighthouse.log",
                                                   host=LOOPBACK, **popen_options())
                for replica in self.replicas:
                    self.start(replica, saved, resume=self.resume)
                self.write_replicas_file()
                self.monitor(saved)
            finally:
                self.stop_everything()
                self.write_replicas_file()
        received = signal.Signals(self.signals[0]).name if self.signals else None
        return merge_run(self.out, [replica.record() for replica in self.replicas], config=self.config,
                         events=self.events, signal_name=received)

    def prepare(self) -> Path:
        """The output folder made (a folder holding another DiLoCo run is refused unless resuming) and the config
        saved in it; the saved config's path."""
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"cannot use {self.out} as the output folder: it is a file; choose another --output-dir")
        try:
            (self.out / LOGS).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"cannot create the output folder {self.out}: {error.strerror}") from None
        previous = self.out / REPLICAS_FILE
        if previous.exists():
            _refuse_live_launcher(previous)
            if not self.resume:
                raise ConfigError(f"{self.out} holds a DiLoCo run ({previous}); continue it with --resume or choose "
                                  "another --output-dir")
        if self.resume:
            check_resumed_config(self.config, self.out)
        return save_run_config(self.config, self.out)

    def command(self, replica: ReplicaProcess, saved: Path, *, resume: bool) -> list[str]:
        assert self.lighthouse is not None
        return [sys.executable, "-m", "composer_diloco.replica", "--config", str(saved), "--output-dir",
                str(replica.folder), "--replica-id", str(replica.replica_id), "--lighthouse", self.lighthouse.address,
                "--host", LOOPBACK, *(["--resume"] if resume else [])]

    def start(self, replica: ReplicaProcess, saved: Path, *, resume: bool) -> None:
        replica.process = spawn(self.command(replica, saved, resume=resume), replica.log)
        replica.state, replica.started, replica.started_at = "running", time.monotonic(), datetime.now(timezone.utc)

    def monitor(self, saved: Path) -> None:
        """Poll the children until every replica has ended: restart the dead, stop stragglers and, after a signal,
        everyone (bounded by STOP_TIMEOUT_S)."""
        forwarded = 0
        while any(replica.state == "running" for replica in self.replicas):
            while forwarded < len(self.signals):
                self.forward(self.signals[forwarded])
                forwarded += 1
            for replica in self.replicas:
                if replica.state == "running" and replica.process is not None and replica.process.poll() is not None:
                    self.ended(replica, saved)
            self.check_lighthouse()
            self.check_orphans()
            self.check_stragglers()
            if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
                return  # stop_everything kills what is left
            time.sleep(POLL_S)

    def ended(self, replica: ReplicaProcess, saved: Path) -> None:
        """Record a replica's exit; restart it if it died and restarts are left."""
        assert replica.process is not None
        record = exit_record(replica.process, replica.started, self.launched)
        replica.exits.append(record)
        code = replica.process.returncode
        if self.stop_deadline is not None:
            replica.state = "stopped"
        elif code == 0:
            replica.state = "finished"
        elif code == GUARD_EXIT_CODE:
            replica.state = "left_quorum"
        else:
            self.event("death", replica, record)
            if code == CONFIG_ERROR_EXIT_CODE:
                replica.state = "failed"
                self.event("gave_up", replica, {"reason": f"a configuration error (exit code 2): see {replica.log}"})
            elif replica.restarts >= self.settings.max_restarts:
                replica.state = "failed"
                self.event("gave_up", replica, {"reason": f"diloco.max_restarts ({self.settings.max_restarts}) spent"})
            elif not self.peers_running(replica):
                replica.state = "failed"
                self.event("gave_up", replica, {"reason": "no live peer left to heal from"})
            else:
                replica.restarts += 1
                self.start(replica, saved, resume=True)
                self.event("restart", replica, {"pid": replica.process.pid, "attempt": replica.restarts})
        self.write_replicas_file()

    def peers_running(self, replica: ReplicaProcess) -> bool:
        """Whether a restarted `replica` could heal from someone (a run of one replica resumes on its own)."""
        others = [other for other in self.replicas if other is not replica]
        return not others or any(other.state == "running" for other in others)

    def check_orphans(self) -> None:
        """Stop a restarted replica that has not healed from a peer by the time no peer trains any more: it would
        train on alone from its own checkpoint (or from scratch) and end with weights of its own. A peer whose
        process still runs its final evaluation and save has left the quorum already, so it does not count."""
        if len(self.replicas) == 1 or self.stop_deadline is not None:
            return
        for replica in self.replicas:
            if replica.state != "running" or replica.restarts == 0 or replica.process is None:
                continue
            if any(other.state == "running" and training(other.folder) for other in self.replicas
                   if other is not replica) or healed(replica.folder, replica.started_at):
                continue
            stop_process(replica.process, timeout_s=KILL_TIMEOUT_S)
            record = exit_record(replica.process, replica.started, self.launched)
            replica.exits.append(record)
            replica.state = "orphaned"
            self.event("orphaned", replica, {**record, "reason": "its peers stopped training before it could heal "
                                                                 "from one"})
            self.write_replicas_file()

    def check_lighthouse(self) -> None:
        """Without the Lighthouse no quorum can form: stop the run rather than let every replica time out."""
        if self.lighthouse is None or self.stop_deadline is not None or self.lighthouse.process.poll() is None:
            return
        self.events.append({"event": "lighthouse_died", "at_s": self.elapsed(),
                            "exit_code": self.lighthouse.process.returncode})
        self.begin_stop(signal.SIGTERM)

    def check_stragglers(self) -> None:
        """Stop replicas still running straggler_timeout_s after another one finished."""
        finished = [exit["ended_s"] for replica in self.replicas if replica.state == "finished"
                    for exit in replica.exits[-1:]]
        if not finished or self.elapsed() - min(finished) < self.straggler_timeout_s:
            return
        for replica in self.replicas:
            if replica.state == "running" and replica.process is not None:
                stop_process(replica.process, timeout_s=KILL_TIMEOUT_S)
                record = exit_record(replica.process, replica.started, self.launched)
                replica.exits.append(record)
                replica.state = "timed_out"
                self.event("timed_out", replica, {**record, "after_s": self.straggler_timeout_s})
        self.write_replicas_file()

    # -- signals and cleanup --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def forwarded_signals(self) -> Iterator[None]:
        """While the block runs, SIGINT / SIGTERM are recorded (the monitor forwards them) instead of killing us."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
        for number in previous:
            signal.signal(number, lambda received, _frame: self.signals.append(received))
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def forward(self, number: int) -> None:
        self.events.append({"event": "signal", "signal": signal.Signals(number).name, "at_s": self.elapsed()})
        self.begin_stop(number)

    def begin_stop(self, number: int) -> None:
        """Send `number` to every running replica; from now on an exit is a stop, not a death."""
        if self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + STOP_TIMEOUT_S
        for replica in self.replicas:
            if replica.state == "running" and replica.process is not None and replica.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(replica.process.pid, number)

    def stop_everything(self) -> None:
        """Every child still alive is stopped (SIGTERM, then SIGKILL), the Lighthouse last."""
        for replica in self.replicas:
            if replica.process is not None and replica.process.poll() is None:
                stop_process(replica.process, timeout_s=KILL_TIMEOUT_S)
                replica.exits.append(exit_record(replica.process, replica.started, self.launched))
                replica.state = "stopped"
        if self.lighthouse is not None:
            stop_process(self.lighthouse.process, timeout_s=KILL_TIMEOUT_S)

    # -- records --------------------------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return round(time.monotonic() - self.launched, 2)

    def event(self, kind: str, replica: ReplicaProcess, details: dict[str, Any]) -> None:
        self.events.append({"event": kind, "replica_id": replica.replica_id, "at_s": self.elapsed(), **details})

    def write_replicas_file(self) -> None:
        """replicas.json: which process is which, now."""
        lighthouse = self.lighthouse
        data = {"launcher_pid": os.getpid(), "output_dir": str(self.out), "config": str(self.out / "config.json"),
                "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "lighthouse": None if lighthouse is None else {
                    "address": lighthouse.address, "pid": lighthouse.process.pid, "log": str(lighthouse.log),
                    "running": lighthouse.process.poll() is None},
                "replicas": [replica.record() for replica in self.replicas], "events": self.events}
        write_text_atomic(self.out / REPLICAS_FILE, json.dumps(data, indent=2) + "\n", what="replicas file")


def _refuse_live_launcher(previous: Path) -> None:
    """Refuse a folder whose replicas.json names a launcher that is still running."""
    try:
        pid = int(json.loads(previous.read_text(encoding="utf-8"))["launcher_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if pid == os.getpid():
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    raise ConfigError(f"{previous.parent} is in use by the DiLoCo launcher with pid {pid}; wait for it or choose "
                      "another --output-dir")


def launch(config: ComposerConfig, *, output_dir: str | None = None, replicas: int = 2, resume: bool = False,
           straggler_timeout_s: float | None = None) -> dict[str, Any]:
    """Train `config` with `replicas` local replicas and a local Lighthouse; the merged summary."""
    out = Path(output_dir or config.run.output_dir)
    return Launcher(config, out, replicas, resume=resume, straggler_timeout_s=straggler_timeout_s).run()
