"""The docker backend: its command line and crash cleanup without a daemon; real runs only where a daemon answers
(skipped otherwise, with the reason)."""

from __future__ import annotations

from pathlib import Path

import pytest

from composer_core.sandbox import Limits, SandboxConfig, SandboxRequest
from composer_core.sandbox.docker import LABEL, OWNER_LABEL, docker_status, run_arguments, stale_containers
from composer_core.sandbox.local import SandboxUnavailable


def _value(arguments: list[str], flag: str) -> list[str]:
    return [arguments[index + 1] for index, item in enumerate(arguments) if item == flag]


def test_run_arguments_isolate_and_limit_the_container() -> None:
    limits = Limits(memory_mb=300, max_processes=20, work_dir_mb=16, max_file_bytes=1000, max_open_files=64)
    arguments = run_arguments("docker", "box", "python:3.11-slim", Path("/stage"), ["python3", "main.py"], limits,
                              "host:42")
    assert arguments[:4] == ["docker", "run", "--rm", "-i"]
    assert _value(arguments, "--network") == ["none"]
    assert _value(arguments, "--memory") == _value(arguments, "--memory-swap") == ["300m"]
    assert _value(arguments, "--pids-limit") == ["20"]
    assert _value(arguments, "--cap-drop") == ["ALL"] and _value(arguments, "--security-opt") == ["no-new-privileges"]
    assert _value(arguments, "--user") == ["65534:65534"] and "--read-only" in arguments
    assert _value(arguments, "--tmpfs")[0].startswith("/sandbox:") and "size=16m" in _value(arguments, "--tmpfs")[0]
    assert _value(arguments, "--label") == [f"{LABEL}=1", f"{OWNER_LABEL}=host:42"]
    assert _value(arguments, "-v") == ["/stage/files:/input:ro"]
    assert {"fsize=1000", "nofile=64", "core=0"} == set(_value(arguments, "--ulimit"))
    assert arguments[-2:] == ["python3", "main.py"] and "python:3.11-slim" in arguments


def test_only_containers_of_dead_owners_on_this_host_are_stale() -> None:
    listing = "aaa myhost:100\nbbb myhost:200\nccc otherhost:100\nddd \n"
    assert stale_containers(listing, "myhost", alive=lambda pid: pid == 200) == ["aaa"]


def test_without_a_daemon_the_backend_says_why() -> None:
    problem = docker_status()
    if problem is None:
        pytest.skip("a Docker daemon is reachable here")
    from composer_core.sandbox.runner import make_backend

    with pytest.raises(SandboxUnavailable, match="docker sandbox backend cannot run"):
        make_backend(SandboxConfig(backend="docker"))


@pytest.fixture(scope="module")
def docker_sandbox():
    problem = docker_status()
    if problem is not None:
        pytest.skip(f"docker backend not exercised: {problem}")
    from composer_core.sandbox.runner import Sandbox

    return Sandbox(SandboxConfig(backend="docker", timeout_s=20, memory_mb=256, max_concurrency=2))


def test_docker_runs_code_without_network(docker_sandbox) -> None:
    code = ("import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    print('online')\n"
            "except OSError:\n    print('offline')\n")
    result = docker_sandbox.run(SandboxRequest(code=code))
    assert result.ok and result.stdout == "offline\n", result


def test_docker_removes_a_container_that_timed_out(docker_sandbox) -> None:
    import subprocess

    limits = docker_sandbox.config.limits.model_copy(update={"timeout_s": 2.0})
    result = docker_sandbox.run(SandboxRequest(code="while True: pass", limits=limits))
    assert result.stopped == "timeout"
    listing = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"label={OWNER_LABEL}"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    assert listing.strip() == ""
