"""The `docker` backend: one throw-away container per run, for machines with a Docker daemon.

`docker run --rm --network none --read-only --cap-drop ALL --security-opt no-new-privileges --user 65534:65534`
with the memory (no swap), pids, CPU, file-size and open-file limits, a size-limited tmpfs work dir at /sandbox,
and the request's files mounted read-only at /input and copied into it. Every container carries the label
`composer-core.sandbox` and its owner (host:pid): a run that times out or overflows its output is removed with
`docker rm -f`, and containers whose owner process is gone (a crashed trainer) are removed when a backend starts.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from composer_core.sandbox.capture import capture, decode
from composer_core.sandbox.local import SandboxUnavailable, stage_files
from composer_core.sandbox.protocol import MAIN_FILES, SandboxRequest, SandboxResult, stop_reason_from_output
from composer_core.sandbox.settings import Limits, SandboxConfig

LABEL = "composer-core.sandbox"
OWNER_LABEL = f"{LABEL}.owner"
DOCKER_TIMEOUT_S = 30.0  # any docker CLI call but the run itself
SANDBOX_USER = "65534:65534"
OOM_EXIT = 137  # docker run's exit code when the kernel's OOM killer (or anyone) SIGKILLs the program


def docker_status(binary: str = "docker") -> str | None:
    """None when a Docker daemon answers; otherwise why not, in words."""
    path = shutil.which(binary)
    if path is None:
        return f"the docker CLI ({binary}) is not installed"
    try:
        probe = subprocess.run([path, "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True,
                               timeout=DOCKER_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"`docker version` did not answer within {DOCKER_TIMEOUT_S} s"
    if probe.returncode != 0:
        return f"no Docker daemon is reachable: {(probe.stderr.strip() or probe.stdout.strip())[:300]}"
    return None


def owner_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_arguments(binary: str, name: str, image: str, staging: Path, command: list[str], limits: Limits,
                  owner: str) -> list[str]:
    """The `docker run` command line of one run."""
    memory = f"{limits.memory_mb}m"
    return [binary, "run", "--rm", "-i", "--name", name, "--label", f"{LABEL}=1", "--label", f"{OWNER_LABEL}={owner}",
            "--network", "none", "--memory", memory, "--memory-swap", memory, "--pids-limit", str(limits.max_processes),
            "--cpus", "1", "--read-only",
            "--tmpfs", f"/sandbox:rw,exec,nosuid,nodev,size={limits.work_dir_mb}m,mode=1777",
            "--user", SANDBOX_USER, "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--ulimit", f"fsize={limits.max_file_bytes}", "--ulimit", f"nofile={limits.max_open_files}",
            "--ulimit", "core=0", "-v", f"{staging / 'files'}:/input:ro", "-w", "/sandbox",
            "-e", "HOME=/sandbox", "-e", "TMPDIR=/sandbox", "-e", "PYTHONDONTWRITEBYTECODE=1",
            image, "sh", "-c", 'cp -R /input/. /sandbox/ && exec "$@"', "sandbox", *command]


def stale_containers(listing: str, host: str, alive: Callable[[int], bool] | None = None) -> list[str]:
    """The ids, in `docker ps` lines of "ID OWNER", of containers this host started from a process now gone."""
    alive = alive or _alive
    stale = []
    for line in listing.splitlines():
        container, _, owner = line.strip().partition(" ")
        owner_host, _, pid = owner.rpartition(":")
        if container and owner_host == host and pid.isdigit() and not alive(int(pid)):
            stale.append(container)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DockerBackend:
    """Runs each request in its own container (see the module docstring)."""

    name = "docker"

    def __init__(self, config: SandboxConfig) -> None:
        problem = docker_status(config.docker_binary)
        if problem is not None:
            raise SandboxUnavailable(f"the docker sandbox backend cannot run: {problem}; start the daemon, or set "
                                     "sandbox.backend to local")
        self.binary = shutil.which(config.docker_binary) or config.docker_binary
        self.image = config.docker_image
        self.python = config.python or "python3"
        self.owner = owner_tag()
        self.remove_stale()

    def docker(self, *arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.binary, *arguments], capture_output=True, text=True, timeout=DOCKER_TIMEOUT_S,
                              check=False)

    def remove_stale(self) -> list[str]:
        """Remove the containers of this host's sandbox runs whose owner process is gone; their ids."""
        listing = self.docker("ps", "-a", "--filter", f"label={LABEL}", "--format",
                              f'{{{{.ID}}}} {{{{.Label "{OWNER_LABEL}"}}}}').stdout
        stale = stale_containers(listing, socket.gethostname())
        if stale:
            self.docker("rm", "-f", *stale)
        return stale

    def remove(self, name: str, process: subprocess.Popen, _status: bytes = b"") -> None:
        """Kill the `docker run` client and remove its container (killing the client alone leaves it running)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.docker("rm", "-f", name)
        with contextlib.suppress(ProcessLookupError):
            process.kill()

    def command_of(self, request: SandboxRequest) -> list[str]:
        if request.command is not None:
            return list(request.command)
        return [self.python if request.language == "python" else "bash", MAIN_FILES[request.language]]

    def run(self, request: SandboxRequest, limits: Limits) -> SandboxResult:
        name = f"composer-sandbox-{uuid.uuid4().hex[:16]}"
        with tempfile.TemporaryDirectory(prefix="composer-docker-") as staging:
            stage_files(Path(staging), request)
            os.chmod(Path(staging) / "files", 0o755)
            arguments = run_arguments(self.binary, name, self.image, Path(staging), self.command_of(request), limits,
                                      self.owner)
            with open(Path(staging) / "stdin", "rb") as stdin:
                process = subprocess.Popen(arguments, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                captured = capture(process, max_bytes=limits.max_output_bytes, timeout_s=limits.timeout_s,
                                   kill=functools.partial(self.remove, name, process))
            finally:
                if process.poll() is None:
                    self.remove(name, process)
        stdout, stderr = decode(captured.stdout), decode(captured.stderr)
        exit_code = captured.returncode
        stopped, message = None, None
        if captured.timed_out:
            stopped, message = "timeout", f"killed after the {limits.timeout_s} s time limit"
        elif captured.output_limit:
            stopped, message = "output_limit", f"killed: more than {limits.max_output_bytes} bytes of output"
        elif exit_code == OOM_EXIT:
            stopped, message = "memory", f"killed at its memory limit ({limits.memory_mb} MiB)"
        else:
            stopped = stop_reason_from_output(exit_code, stderr)
        return SandboxResult(exit_code, stdout, stderr, round(captured.wall_s, 4), None, stopped,
                             captured.stdout_truncated, captured.stderr_truncated, message)
