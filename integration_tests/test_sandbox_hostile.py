"""Hostile programs in the local sandbox, each in its own test, each contained; after every test and after the
module, no process of theirs remains (scanned in /proc: sandbox PID 1s, sandbox uids, and each test's marker).

The cases: a fork bomb (while another sandbox keeps working), `while True: pass`, allocating 10x the memory
limit, connecting to a server this test listens on at 127.0.0.1, writing outside the work dir, reading the host's
files outside the allow-list, a child that detaches and sleeps forever, 1 GB of output, a program that closes its
stdout and hangs; and beyond the issue's list: filling the work dir, regaining root, killing every process it
can see.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from composer_core.sandbox import SandboxConfig, SandboxRequest, SandboxResult
from composer_core.sandbox.local import SandboxUnavailable, check_unshare, sandbox_processes
from composer_core.sandbox.runner import Sandbox

TIMEOUT_S = 1.5
LIMITS = {"timeout_s": TIMEOUT_S, "memory_mb": 256, "max_processes": 32, "max_output_bytes": 64 * 1024,
          "work_dir_mb": 8, "max_file_bytes": 4 << 20}
SLACK_S = 3.0  # how much later than its limit a killed run may end (process start, kill, reap)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    try:
        check_unshare()
    except SandboxUnavailable as error:
        pytest.skip(f"the local sandbox cannot run here: {error}")
    return Sandbox(SandboxConfig(**LIMITS, max_concurrency=4))


@pytest.fixture(scope="module", autouse=True)
def nothing_remains_after_the_module() -> Iterator[None]:
    yield
    assert sandbox_processes() == []


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique text for a test's program to carry in its command lines; none of them may outlive the test."""
    text = f"hostile-{uuid.uuid4().hex}"
    yield text
    assert sandbox_processes(text) == []
    assert sandbox_processes() == []


def run(sandbox: Sandbox, code: str, **limits: object) -> SandboxResult:
    request = SandboxRequest(code=code, limits=sandbox.config.limits.model_copy(update=limits) if limits else None)
    return sandbox.run(request)


def test_a_fork_bomb_is_contained_while_another_sandbox_keeps_working(sandbox: Sandbox, marker: str) -> None:
    bomb = (f"# {marker}\nimport os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    outcome: dict[str, SandboxResult] = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("bomb", run(sandbox, bomb)))
    thread.start()
    time.sleep(0.5)
    neighbour = run(sandbox, "import os\nprint(os.fork() and 'parent' or 'child')")
    thread.join(TIMEOUT_S + SLACK_S + 5)
    assert not thread.is_alive()
    assert neighbour.ok and "parent" in neighbour.stdout, neighbour  # its uid's process count is its own
    assert outcome["bomb"].stopped == "timeout"
    assert outcome["bomb"].wall_s < TIMEOUT_S + SLACK_S


def test_forks_stop_at_the_process_limit(sandbox: Sandbox) -> None:
    code = ("import os, time\nmade = 0\nfor _ in range(100):\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
            "    made += 1\nprint(made)\n")
    result = run(sandbox, code)
    assert result.ok, result
    assert 0 < int(result.stdout) < LIMITS["max_processes"]


def test_an_endless_loop_is_stopped_at_the_time_limit(sandbox: Sandbox) -> None:
    result = run(sandbox, "while True: pass")
    assert sandbox_processes() == []  # a killed run returns only once all of it is gone
    assert result.stopped == "timeout" and result.exit_code is None
    assert TIMEOUT_S <= result.wall_s < TIMEOUT_S + SLACK_S


def test_allocating_ten_times_the_memory_limit_fails_inside(sandbox: Sandbox) -> None:
    result = run(sandbox, f"block = bytearray({10 * LIMITS['memory_mb']} * 1024 * 1024)\nprint('allocated')")
    assert result.stopped == "memory" and result.exit_code != 0
    assert "allocated" not in result.stdout and "MemoryError" in result.stderr


def test_it_cannot_connect_to_a_server_on_the_hosts_loopback(sandbox: Sandbox) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        code = (f"import socket\nfor host in ('127.0.0.1', '10.0.0.1', '1.1.1.1'):\n    try:\n"
                f"        socket.create_connection((host, {port}), timeout=1)\n        print('connected', host)\n"
                "    except OSError as error:\n        print('refused', host, error.errno)\n")
        result = run(sandbox, code)
        with pytest.raises(TimeoutError):
            server.accept()
    assert result.ok, result
    assert "connected" not in result.stdout and result.stdout.count("refused") == 3


def test_it_cannot_write_outside_its_work_dir(sandbox: Sandbox, tmp_path) -> None:
    targets = ["/tmp/x", "/usr/x", "/etc/x", "/x", "/dev/x", "/proc/x", str(tmp_path / "x")]
    code = (f"import os\nfor path in {targets!r}:\n    try:\n        open(path, 'w').write('owned')\n"
            "        print('wrote', path)\n    except OSError as error:\n"
            "        print('denied', path, error.strerror)\n"
            "open('inside.txt', 'w').write('fine')\nprint(open('inside.txt').read())\n")
    result = run(sandbox, code)
    assert result.ok, result
    assert "wrote" not in result.stdout and result.stdout.count("denied") == len(targets)
    assert result.stdout.strip().endswith("fine")
    assert list(tmp_path.iterdir()) == []


def test_it_cannot_read_host_files_outside_the_allow_list(sandbox: Sandbox, tmp_path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    paths = [str(secret), "/etc/shadow", "/etc/hostname", "/root/.bashrc", __file__, "/proc/1/environ"]
    code = (f"import os\nfor path in {paths!r}:\n    try:\n        print('read', path, open(path).read())\n"
            "    except OSError as error:\n        print('hidden', path, error.strerror)\n"
            "print('root has', sorted(os.listdir('/')))\nprint('pids', sorted(os.listdir('/proc'))[:0], "
            "len([p for p in os.listdir('/proc') if p.isdigit()]))\n")
    result = run(sandbox, code)
    assert result.ok, result
    assert "top secret" not in result.stdout and "read " not in result.stdout
    assert result.stdout.count("hidden") == len(paths)
    assert "'work'" not in result.stdout and "'home'" not in result.stdout
    assert int(result.stdout.split()[-1]) <= 3  # its own PID namespace: PID 1 and the program


def test_a_detached_child_sleeping_forever_does_not_survive(sandbox: Sandbox, marker: str) -> None:
    code = ("import subprocess, sys\n"
            f"subprocess.Popen([sys.executable, '-c', 'import os, time\\nif os.fork(): os._exit(0)\\nos.setsid()\\n"
            f"time.sleep(1000)  # {marker}'], start_new_session=True)\n"
            "print('left a child behind')\n")
    result = run(sandbox, code)
    assert result.ok and "left a child behind" in result.stdout, result
    assert result.wall_s < TIMEOUT_S  # the run did not wait for the child either
    # the marker fixture checks that no process of it remains


def test_a_gigabyte_of_output_is_cut_at_the_limit_quickly(sandbox: Sandbox) -> None:
    code = "import sys\nchunk = b'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.buffer.write(chunk)\n"
    started = time.monotonic()
    result = run(sandbox, code, timeout_s=30.0)
    assert result.stopped == "output_limit" and result.stdout_truncated
    assert len(result.stdout) == LIMITS["max_output_bytes"]
    assert time.monotonic() - started < 5.0


def test_a_program_that_closes_its_stdout_and_hangs_is_stopped(sandbox: Sandbox) -> None:
    result = run(sandbox, "import os, time\nprint('bye', flush=True)\nos.close(1)\ntime.sleep(1000)")
    assert result.stopped == "timeout" and result.stdout == "bye\n"
    assert result.wall_s < TIMEOUT_S + SLACK_S


def test_filling_the_work_dir_stops_at_its_size(sandbox: Sandbox) -> None:
    code = ("import os\nwritten = 0\ntry:\n    for index in range(100):\n        with open(f'f{index}', 'wb') as out:\n"
            "            out.write(b'x' * (1 << 20))\n        written += 1\nexcept OSError as error:\n"
            "    print(written, error.strerror)\n")
    result = run(sandbox, code)
    assert result.ok, result
    megabytes, reason = result.stdout.split(" ", 1)
    assert int(megabytes) <= LIMITS["work_dir_mb"] and "No space left" in reason


def test_it_cannot_become_root_again(sandbox: Sandbox) -> None:
    code = ("import os\nprint(os.getuid())\nfor call in (lambda: os.setuid(0), lambda: os.chroot('/'), "
            "lambda: os.mknod('/sandbox/dev', 0o20666, os.makedev(1, 3))):\n    try:\n        call()\n"
            "        print('allowed')\n    except OSError as error:\n        print('refused', error.errno)\n"
            "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n")
    result = run(sandbox, code)
    assert result.ok, result
    lines = result.stdout.split()
    assert "allowed" not in lines and lines[-1] == "0000000000000000"


def test_killing_everything_it_sees_harms_only_itself(sandbox: Sandbox) -> None:
    result = run(sandbox, "import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('still here')")
    assert result.exit_code is not None and result.stopped is None
    again = run(sandbox, "print('ok')")
    assert again.ok and again.stdout == "ok\n"


def test_an_allow_listed_folder_is_readable_but_not_writable(tmp_path) -> None:
    (tmp_path / "data.txt").write_text("shared data")
    tmp_path.chmod(0o755)  # the sandbox's user is not the owner: DAC still applies to what the allow-list shows
    sandbox = Sandbox(SandboxConfig(**LIMITS, readonly_paths=(str(tmp_path),)))
    code = (f"print(open({str(tmp_path / 'data.txt')!r}).read())\ntry:\n"
            f"    open({str(tmp_path / 'new.txt')!r}, 'w')\nexcept OSError as error:\n    print(error.strerror)\n")
    result = sandbox.run(SandboxRequest(code=code))
    assert result.ok and result.stdout == "shared data\nRead-only file system\n", result
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data.txt"]
