"""The SandboxFusion-compatible server on loopback, the sandbox_fusion client against it, and `sandbox run`."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from composer_core.cli.main import main
from composer_core.errors import ConfigError
from composer_core.rewards.unit_tests import unit_test_reward
from composer_core.sandbox import SandboxConfig, SandboxRequest
from composer_core.sandbox.fusion import SandboxFusionError
from composer_core.sandbox.local import SandboxUnavailable, check_unshare, sandbox_processes
from composer_core.sandbox.runner import Sandbox
from composer_core.sandbox.server import SandboxServer, make_server


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    try:
        check_unshare()
    except SandboxUnavailable as error:
        pytest.skip(f"the local sandbox cannot run here: {error}")
    instance = make_server(SandboxConfig(timeout_s=3, memory_mb=256, max_concurrency=2))
    instance.max_request_bytes = 100_000
    thread = threading.Thread(target=instance.serve_forever, daemon=True)
    thread.start()
    yield instance
    instance.shutdown()
    instance.server_close()
    thread.join(10)
    assert sandbox_processes() == []


def client_for(server: SandboxServer, **settings: object) -> Sandbox:
    return Sandbox(SandboxConfig(backend="sandbox_fusion", sandbox_fusion_url=server.url, **settings))


def test_the_client_runs_code_on_our_server(server: SandboxServer) -> None:
    client = client_for(server)
    result = client.run(SandboxRequest(code="import sys\nprint(input()[::-1])\nprint('e', file=sys.stderr)",
                                       stdin="olleh", files={"data/x.txt": "payload"}))
    assert result.ok and result.stdout == "hello\n" and result.stderr == "e\n"
    assert result.cpu_s is not None and result.wall_s > 0
    files = client.run(SandboxRequest(code="print(open('data/x.txt').read())", files={"data/x.txt": "payload"}))
    assert files.stdout == "payload\n"


def test_stop_reasons_survive_the_round_trip(server: SandboxServer) -> None:
    client = client_for(server, timeout_s=1.0)
    assert client.run(SandboxRequest(code="while True: pass")).stopped == "timeout"
    assert client.run(SandboxRequest(code="x = bytearray(4 << 30)")).stopped == "memory"
    assert client.run(SandboxRequest(code="raise SystemExit(4)")).exit_code == 4


def test_the_unit_test_reward_can_use_the_server(server: SandboxServer) -> None:
    settings = {"backend": "sandbox_fusion", "sandbox_fusion_url": server.url}
    [result] = unit_test_reward(completions=["def f():\n    return 1"], tests=[["assert f() == 1", "assert f() == 2"]],
                                sandbox=settings)
    assert result.reward == 0.5 and result.feedback.startswith("Test 2 of 2 failed")


def test_bad_requests_get_json_errors(server: SandboxServer) -> None:
    url = f"{server.url}/run_code"
    not_json = httpx.post(url, content=b"{oops", headers={"Content-Type": "application/json"}, timeout=10)
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
    no_code = httpx.post(url, json={"language": "python"}, timeout=10)
    assert no_code.status_code == 400 and "`code`" in no_code.json()["error"]
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as connection:  # announces 1 GB, sends nothing more
        connection.sendall(b"POST /run_code HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        assert connection.recv(100).startswith(b"HTTP/1.1 413")
    assert httpx.get(f"{server.url}/nothing", timeout=10).status_code == 404
    assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"


def test_an_unreachable_server_is_a_clear_error() -> None:
    client = Sandbox(SandboxConfig(backend="sandbox_fusion", sandbox_fusion_url="http://127.0.0.1:9"))
    with pytest.raises(SandboxFusionError, match="cannot reach the SandboxFusion server"):
        client.run(SandboxRequest(code="pass"))


def test_the_server_refuses_to_forward_to_another_server() -> None:
    with pytest.raises(ConfigError, match="runs code itself"):
        make_server(SandboxConfig(backend="sandbox_fusion", sandbox_fusion_url="http://127.0.0.1:9"))


def test_sandbox_run_prints_the_result_as_json(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        check_unshare()
    except SandboxUnavailable as error:
        pytest.skip(f"the local sandbox cannot run here: {error}")
    program = tmp_path / "hello.py"
    program.write_text("import sys\nprint(open('data.txt').read() + sys.stdin.read())\nraise SystemExit(2)")
    (tmp_path / "in.txt").write_text("!")
    (tmp_path / "data.txt").write_text("hello")
    code = main(["sandbox", "run", str(program), "--stdin", str(tmp_path / "in.txt"), "--with-file",
                 f"data.txt={tmp_path / 'data.txt'}", "--timeout", "5", "--memory-mb", "256"])
    result = json.loads(capsys.readouterr().out)
    assert code == 1 and result["exit_code"] == 2 and result["stdout"] == "hello!\n" and result["ok"] is False
    assert main(["sandbox", "run", str(tmp_path / "in.txt")]) == 2
    assert "--language" in capsys.readouterr().err
