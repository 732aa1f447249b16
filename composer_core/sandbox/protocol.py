"""What a sandbox run is asked (`SandboxRequest`) and what it answers (`SandboxResult`), the same for every backend."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal, Protocol

from composer_core.errors import ConfigError
from composer_core.sandbox.settings import Limits

Language = Literal["python", "bash"]
StopReason = Literal["timeout", "memory", "processes", "output_limit", "sandbox_error"]
MAIN_FILES: dict[str, str] = {"python": "main.py", "bash": "main.sh"}
MEMORY_SIGNS = re.compile(r"MemoryError|std::bad_alloc|Cannot allocate memory|out of memory")
PROCESS_SIGNS = re.compile(r"BlockingIOError: \[Errno 11\]|fork: Resource temporarily unavailable|"
                           r"can't start new thread")


@dataclass(frozen=True)
class SandboxRequest:
    """One run: either `code` in a `language` (written to main.py / main.sh in the work dir and run), or a
    `command` (argv, run in the work dir). `files` are written into the work dir first (relative paths);
    `stdin` is the program's standard input; `limits` replaces the configured ones for this run."""

    code: str | None = None
    language: Language = "python"
    command: tuple[str, ...] | None = None
    files: Mapping[str, str | bytes] = field(default_factory=dict)
    stdin: str | bytes = b""
    limits: Limits | None = None

    def __post_init__(self) -> None:
        if (self.code is None) == (self.command is None):
            raise ConfigError("a sandbox request runs either code or a command: give exactly one of them")
        if self.command is not None and not self.command:
            raise ConfigError("a sandbox request's command is empty: give the program and its arguments")
        if self.language not in MAIN_FILES:
            raise ConfigError(f"sandbox language {self.language!r} is not supported; supported: "
                              f"{', '.join(MAIN_FILES)} (or run a command)")
        for name in self.files:
            check_file_name(name)

    def all_files(self) -> dict[str, bytes]:
        """The files of the work dir as bytes, the code's main file included."""
        files = {name: content.encode() if isinstance(content, str) else content
                 for name, content in self.files.items()}
        if self.code is not None:
            files[MAIN_FILES[self.language]] = self.code.encode()
        return files

    def stdin_bytes(self) -> bytes:
        return self.stdin.encode() if isinstance(self.stdin, str) else self.stdin


def check_file_name(name: str) -> str:
    """A file name of the work dir: relative, inside it, not empty."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or name.endswith("/"):
        raise ConfigError(f"sandbox file name {name!r} must be a relative path inside the work dir (no '..', not "
                          "absolute, not a folder)")
    return name


@dataclass(frozen=True)
class SandboxResult:
    """How a run ended. `exit_code`: the program's, negative for a signal, None when it never ran or was not
    waited for; `stdout`/`stderr`: decoded text, cut at the output limit (`*_truncated`); `wall_s` and `cpu_s`:
    its durations (cpu_s None where the backend cannot say); `stopped`: why it was stopped, None when it ended
    by itself (memory and processes are read from its own error messages: a program that hit its memory limit
    and printed nothing about it reports just its exit code); `message`: the sandbox's own explanation."""

    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float | None = None
    stopped: StopReason | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    message: str | None = None

    @property
    def ok(self) -> bool:
        """Ended by itself with exit code 0."""
        return self.stopped is None and self.exit_code == 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def stop_reason_from_output(exit_code: int | None, stderr: str) -> StopReason | None:
    """`memory` or `processes` when a failed program's stderr shows that it hit that limit."""
    if exit_code == 0:
        return None
    tail = stderr[-4000:]
    if MEMORY_SIGNS.search(tail):
        return "memory"
    if PROCESS_SIGNS.search(tail):
        return "processes"
    return None


class Backend(Protocol):
    """Runs one request under the given limits; must leave nothing of it behind and never wait unbounded."""

    name: str

    def run(self, request: SandboxRequest, limits: Limits) -> SandboxResult: ...
