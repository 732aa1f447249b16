"""The output folder of a training run: one run at a time, never silently restarted or overwritten.

- A lock file (`run.lock`, created with O_EXCL, holding the pid and host) keeps two runs out of one folder. A
  lock whose process is gone (same host) is reported and taken over; any other lock is refused.
- A folder that already holds a run (metrics, checkpoints or a summary) is refused unless the run is resumed;
  resuming continues from the newest complete checkpoint and drops the metrics rows logged after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from composer_core.errors import ConfigError
from composer_core.files import write_text_atomic

LOCK = "run.lock"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
TRAINER_STATE = "trainer_state.json"  # written last by TRL into its checkpoint folder
WRITTEN_FOLDERS = ("final", "interrupted", CHECKPOINTS)  # replaced by a run: an input must not lie in them
COMPOSER_STATE = "composer_state.pt"  # beside TRL's files in each checkpoint folder
COMPLETE = (TRAINER_STATE, COMPOSER_STATE)  # COMPOSER_STATE is added after it by ComposerGRPOTrainer


def prepare_output_folder(path: str | os.PathLike[str], inputs: Iterable[Path] = ()) -> Path:
    """The output folder, created if missing; a file in the way, or an input the run would write over (the
    folder itself, a folder holding it, or anything under the subfolders the run replaces), is a ConfigError."""
    folder = Path(path)
    blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        where = "the output folder is" if blocker == folder else f"{blocker}, on the way to it, is"
        raise ConfigError(f"cannot use {folder} as the output folder: {where} a file; choose another --output-dir")
    resolved = folder.resolve()
    written = [resolved / name for name in WRITTEN_FOLDERS]
    for source in inputs:
        origin = source.resolve()
        if origin == resolved or origin in resolved.parents or any(
                origin == place or place in origin.parents for place in written):
            raise ConfigError(f"the output folder {folder} overlaps the input {source}: the run would write over "
                              "what it reads; choose another --output-dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create the output folder {folder}: {error.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"the output folder {folder} is not writable")
    return folder


# ---- one run per folder ------------------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _create_lock(lock: Path) -> None:
    descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(descriptor, "w") as stream:
        json.dump({"pid": os.getpid(), "host": socket.gethostname()}, stream)


def _lock_owner(lock: Path) -> dict[str, object] | None:
    """The lock's {pid, host}, or None when it is unreadable or not what this module writes."""
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int) or not isinstance(owner.get("host"), str):
        return None
    return owner


def _take_over_if_stale(lock: Path) -> None:
    """Remove a lock left by a process that no longer exists on this host (reported); refuse any other."""
    owner = _lock_owner(lock)
    if owner is None:
        raise ConfigError(f"{lock.parent} holds a lock file {lock} that this program cannot read; if no run uses this "
                          "folder, delete the lock file")
    pid, host = owner["pid"], owner["host"]
    if host != socket.gethostname():
        raise ConfigError(f"{lock.parent} is in use by process {pid} on host {host} (lock file {lock}); wait for "
                          "that run or choose another --output-dir; if it is gone, delete the lock file")
    if _pid_alive(pid):  # type: ignore[arg-type]
        raise ConfigError(f"{lock.parent} is in use by process {pid} on this host (lock file {lock}); wait for "
                          "that run to end or choose another --output-dir")
    print(f"taking over the stale lock {lock}: process {pid} that held it no longer exists", file=sys.stderr)
    lock.unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[Path]:
    """Hold `folder/run.lock` while the block runs; removed afterwards if it is still this process's."""
    lock = folder / LOCK
    try:
        _create_lock(lock)
    except FileExistsError:
        _take_over_if_stale(lock)
        try:
            _create_lock(lock)
        except FileExistsError:
            raise ConfigError(f"another run took {folder} over just now (lock file {lock}); choose another "
                              "--output-dir") from None
    try:
        yield lock
    finally:
        owner = _lock_owner(lock)
        if owner is not None and owner["pid"] == os.getpid():
            lock.unlink(missing_ok=True)


# ---- what the folder already holds -------------------------------------------------------------------------------

def checkpoints(folder: Path) -> list[Path]:
    """The TRL checkpoint folders under `folder/checkpoints`, oldest step first."""
    root = folder / CHECKPOINTS
    found = [path for path in root.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
             if path.is_dir() and path.name.rsplit("-", 1)[1].isdigit()] if root.is_dir() else []
    return sorted(found, key=lambda path: int(path.name.rsplit("-", 1)[1]))


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


def is_complete(checkpoint: Path) -> bool:
    """Whether saving the checkpoint finished (a kill while saving leaves a folder without the last files)."""
    return all((checkpoint / name).is_file() for name in COMPLETE)


def previous_run(folder: Path) -> str | None:
    """A description of the run this folder already holds, or None when it holds none."""
    summary = folder / SUMMARY
    if summary.is_file():
        try:
            data = json.loads(summary.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"a run whose {SUMMARY} cannot be read"
        state = "an interrupted run" if data.get("interrupted") else "a finished run"
        return f"{state} ({data.get('steps', '?')} steps)"
    metrics = folder / METRICS
    if checkpoints(folder) or (metrics.is_file() and metrics.stat().st_size > 0):
        return f"an unfinished run (no {SUMMARY}: it was killed or crashed)"
    return None


def refuse_previous_run(folder: Path) -> None:
    """A fresh run must not restart over an earlier one and overwrite its metrics."""
    found = previous_run(folder)
    if found is not None:
        raise ConfigError(f"the output folder {folder} already holds {found}; pass --resume to continue it from its "
                          "last checkpoint, or choose another --output-dir")


def resume_checkpoint(folder: Path) -> Path:
    """The newest complete checkpoint; newer incomplete ones (killed while saving) are reported and skipped."""
    found = checkpoints(folder)
    if not found:
        raise ConfigError(f"--resume: {folder} holds no checkpoint in {folder / CHECKPOINTS} to continue from; "
                          "start a fresh run without --resume (in an empty folder)")
    for checkpoint in reversed(found):
        if is_complete(checkpoint):
            return checkpoint
        print(f"--resume: skipping {checkpoint}: saving it was cut short (it lacks {' or '.join(COMPLETE)})",
              file=sys.stderr)
    raise ConfigError(f"--resume: no checkpoint in {folder / CHECKPOINTS} is complete (each lacks "
                      f"{' or '.join(COMPLETE)}); start a fresh run in another folder")


def trim_metrics(metrics: Path, through_step: int) -> int:
    """Keep the metrics rows logged up to `through_step` (a resumed run logs the later steps again); returns
    how many rows were dropped. An unreadable last line (cut short by a kill) is dropped and reported; one
    elsewhere is an error."""
    if not metrics.is_file():
        return 0
    lines = metrics.read_text(encoding="utf-8").splitlines()
    kept: list[str] = []
    dropped = 0
    for number, line in enumerate(lines, start=1):
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                print(f"--resume: dropping the last line of {metrics}: it was cut short", file=sys.stderr)
                continue
            raise ConfigError(f"{metrics} line {number} is not a metrics record; fix or remove that line") from None
        if step <= through_step:
            kept.append(line)
        else:
            dropped += 1
    write_text_atomic(metrics, "".join(f"{line}\n" for line in kept), what="metrics file")
    return dropped
