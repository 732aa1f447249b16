"""The `local` backend: Linux namespaces through util-linux `unshare`, no daemon (the embedded default).

Each run starts `unshare --net --pid --mount --ipc --uts --fork --kill-child` (plus `--user --map-root-user` when
not run as root) around `inside.py`, which builds a private root from allow-listed read-only folders, a tmpfs work
dir, and starts the program under rlimits as an unprivileged user (see inside.py). The host side here stages the
files, reads the output with a cap and a deadline (capture.py), and kills the process group on timeout or output
overflow: SIGKILL to the sandbox's PID 1 takes every process of its PID namespace with it, and `unshare` exits
only after that, so a run returns only when nothing of it remains.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from composer_core.errors import ComposerError
from composer_core.sandbox.capture import Captured, capture, decode
from composer_core.sandbox.protocol import SandboxRequest, SandboxResult, stop_reason_from_output
from composer_core.sandbox.settings import Limits, SandboxConfig

INSIDE = Path(__file__).with_name("inside.py")
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
NAMESPACES = ("--net", "--pid", "--mount", "--ipc", "--uts", "--fork", "--kill-child")
USER_NAMESPACE = ("--user", "--map-root-user")
UID_BASE = 1_000_000  # inside.py: a root-started run's uid is UID_BASE + the host pid of its PID 1
BACKSTOP_MARGIN_S = 5  # inside.py kills everything this long after the timeout, even with the host gone
PROBE_TIMEOUT_S = 10.0
COMMANDS = {"python": ("{python}", "main.py"), "bash": ("bash", "main.sh")}


class SandboxUnavailable(ComposerError):
    """The chosen sandbox backend cannot run on this machine; the message says what is missing and what to do."""


def base_python() -> str:
    """The interpreter of this Python installation (a virtualenv's python resolves to it)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def namespace_flags() -> tuple[str, ...]:
    """unshare's flags: root can create the namespaces itself; anyone else needs a user namespace for them."""
    return (*USER_NAMESPACE, *NAMESPACES) if os.geteuid() != 0 else NAMESPACES


@functools.cache
def check_unshare() -> str:
    """The path of `unshare` after a probe run in every namespace the sandbox uses; otherwise SandboxUnavailable
    saying what failed and how to fix it (never a silent unsandboxed run)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise SandboxUnavailable("the local sandbox needs util-linux `unshare` (not found on PATH): install util-linux "
                                 "(apt-get install util-linux), or set sandbox.backend to docker or sandbox_fusion")
    try:
        probe = subprocess.run([unshare, *namespace_flags(), "true"], capture_output=True, text=True,
                               timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise SandboxUnavailable(f"`unshare {' '.join(namespace_flags())} true` did not finish within "
                                 f"{PROBE_TIMEOUT_S} s; the local sandbox cannot start") from None
    if probe.returncode != 0:
        raise SandboxUnavailable(
            f"the local sandbox cannot create Linux namespaces: `unshare {' '.join(namespace_flags())} true` failed: "
            f"{probe.stderr.strip() or f'exit code {probe.returncode}'}. Allow unprivileged user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1, or kernel.apparmor_restrict_unprivileged_userns=0), or in a "
            "container run it with a seccomp profile that permits unshare/mount; or set sandbox.backend to docker "
            "or sandbox_fusion")
    return unshare


class LocalBackend:
    """Runs requests in Linux namespaces on this machine (see the module docstring)."""

    name = "local"

    def __init__(self, config: SandboxConfig) -> None:
        self.unshare = check_unshare()
        self.python = config.python or base_python()
        python_home = str(Path(os.path.realpath(sys.base_prefix)))
        self.readonly_paths = tuple(dict.fromkeys((*SYSTEM_PATHS, python_home, *config.readonly_paths)))
        self.python_bin = str(Path(self.python).parent)

    def command_of(self, request: SandboxRequest) -> list[str]:
        if request.command is not None:
            return list(request.command)
        return [part.format(python=self.python) for part in COMMANDS[request.language]]

    def spec(self, request: SandboxRequest, limits: Limits, status_fd: int) -> dict:
        """What inside.py needs: the command, its environment, the limits and the allow-list."""
        return {"command": self.command_of(request), "status_fd": status_fd, "uid": None,
                "user_namespace": os.geteuid() != 0, "readonly_paths": list(self.readonly_paths),
                "work_dir_mb": limits.work_dir_mb, "backstop_s": math.ceil(limits.timeout_s) + BACKSTOP_MARGIN_S,
                "env": {"PATH": f"{self.python_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": "/sandbox",
                        "TMPDIR": "/sandbox", "LANG": "C.UTF-8", "USER": "sandbox", "PYTHONDONTWRITEBYTECODE": "1"},
                "limits": {"memory_mb": limits.memory_mb, "cpu_s": math.ceil(limits.timeout_s) + 1,
                           "max_processes": limits.max_processes, "max_file_bytes": limits.max_file_bytes,
                           "max_open_files": limits.max_open_files}}

    def run(self, request: SandboxRequest, limits: Limits) -> SandboxResult:
        with tempfile.TemporaryDirectory(prefix="composer-sandbox-") as staging:
            stage_files(Path(staging), request)
            reader, writer = os.pipe()
            try:
                with open(Path(staging) / "spec.json", "w") as handle:
                    json.dump(self.spec(request, limits, writer), handle)
                with open(Path(staging) / "stdin", "rb") as stdin:
                    process = subprocess.Popen(
                        [self.unshare, *namespace_flags(), base_python(), "-I", "-S", str(INSIDE), staging],
                        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(writer,),
                        start_new_session=True, cwd=staging)
                os.close(writer)
                writer = -1
                captured = capture(process, max_bytes=limits.max_output_bytes, timeout_s=limits.timeout_s,
                                   kill=functools.partial(kill_sandbox, process.pid), status_fd=reader)
            finally:
                os.close(reader)
                if writer >= 0:
                    os.close(writer)
        return result_of(captured, limits)


def stage_files(staging: Path, request: SandboxRequest) -> None:
    """The work dir's files, stdin, and the empty mount point of the new root, in the staging folder."""
    (staging / "root").mkdir()
    files = staging / "files"
    files.mkdir()
    for name, content in request.all_files().items():
        path = files / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (staging / "stdin").write_bytes(request.stdin_bytes())


def sandbox_processes(marker: str | None = None) -> list[tuple[int, str]]:
    """(pid, command line) of every process on this machine that belongs to a local sandbox: its PID 1 (inside.py),
    anything running as a sandbox uid (>= UID_BASE), or whose command line holds `marker`. Empty after every run."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            uid = int(next(line for line in (entry / "status").read_text().splitlines()
                           if line.startswith("Uid:")).split()[1])
        except (OSError, StopIteration, ValueError):  # gone meanwhile, or a kernel thread
            continue
        if str(INSIDE) in cmdline or uid >= UID_BASE or (marker is not None and marker in cmdline):
            found.append((int(entry.name), cmdline))
    return found


def status_lines(status: bytes) -> list[dict]:
    """inside.py's status lines: first its host pid, last (when it got that far) how the program ended."""
    return [json.loads(line) for line in status.decode().splitlines() if line.strip()]


def kill_sandbox(unshare_pid: int, status: bytes) -> None:
    """SIGKILL the sandbox's PID 1: the kernel kills every process of its namespace, then `unshare` (still alive,
    waiting for it) exits, so waiting for `unshare` waits for all of them. Before PID 1 has said its pid, SIGKILL
    `unshare`'s whole process group (--kill-child takes the namespace down)."""
    pid = next((line["pid"] for line in status_lines(status) if "pid" in line), None)
    with contextlib.suppress(ProcessLookupError):
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        else:
            os.killpg(unshare_pid, signal.SIGKILL)


def result_of(captured: Captured, limits: Limits) -> SandboxResult:
    """The SandboxResult of a captured run and inside.py's status line."""
    status = next((line for line in reversed(status_lines(captured.status)) if "pid" not in line), {})
    if "setup_error" in status:
        raise SandboxUnavailable(f"the local sandbox could not set up its filesystem: {status['setup_error']}; "
                                 "set sandbox.backend to docker or sandbox_fusion if this machine forbids mounts in "
                                 "a namespace")
    stdout, stderr = decode(captured.stdout), decode(captured.stderr)
    exit_code = status.get("exit_code") if not (captured.timed_out or captured.output_limit) else None
    stopped, message = None, None
    if captured.timed_out or status.get("backstop"):
        stopped, message = "timeout", f"killed after the {limits.timeout_s} s time limit"
    elif captured.output_limit:
        stopped, message = "output_limit", f"killed: more than {limits.max_output_bytes} bytes of output"
    elif status.get("signal") == signal.SIGXCPU:
        stopped, message = "timeout", f"killed by its CPU time limit ({math.ceil(limits.timeout_s) + 1} s)"
    elif not status:
        stopped, message = "sandbox_error", f"the sandbox exited without a status (exit code {captured.returncode})"
    else:
        stopped = stop_reason_from_output(exit_code, stderr)
        if stopped is not None:
            message = {"memory": f"ran out of its memory limit ({limits.memory_mb} MiB)",
                       "processes": f"hit its process limit ({limits.max_processes})"}[stopped]
    return SandboxResult(exit_code, stdout, stderr, round(captured.wall_s, 4), status.get("cpu_s"), stopped,
                         captured.stdout_truncated, captured.stderr_truncated, message)
