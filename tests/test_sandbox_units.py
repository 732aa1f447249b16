"""The sandbox's pure parts: settings, requests, output capture, test parsing, code extraction, the /run_code JSON."""

from __future__ import annotations

import subprocess
import sys

import pytest

from composer_core.errors import ConfigError
from composer_core.rewards.unit_tests import AssertTests, StdioTests, completion_text, extract_code, parse_tests
from composer_core.sandbox import Limits, SandboxConfig, SandboxRequest, SandboxResult, sandbox_config
from composer_core.sandbox.capture import capture
from composer_core.sandbox.fusion import request_from_json, request_json, response_json, result_from_json
from composer_core.sandbox.protocol import stop_reason_from_output


def test_defaults_are_the_local_backend_with_documented_limits() -> None:
    config = SandboxConfig()
    assert config.backend == "local" and config.timeout_s == 10.0 and config.memory_mb == 1024
    assert config.max_processes == 64 and config.max_output_bytes == 1 << 20
    assert 1 <= config.max_concurrency <= 8
    assert config.limits == Limits()


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(ConfigError, match="sandbox.timeout_s"):
        sandbox_config({"timeout_s": -1})
    with pytest.raises(ConfigError, match="sandbox.timout_s"):
        sandbox_config({"timout_s": 3})
    with pytest.raises(ConfigError, match="sandbox_fusion_url"):
        sandbox_config({"backend": "sandbox_fusion"})
    for path in ("/dev/null", "relative/path", "/", "/proc", "/usr/../etc"):
        with pytest.raises(ConfigError, match="readonly_paths"):
            sandbox_config({"readonly_paths": [path]})


@pytest.mark.parametrize("name", ["/etc/passwd", "../up.py", "a/../../b", "", "folder/"])
def test_file_names_must_stay_inside_the_work_dir(name: str) -> None:
    with pytest.raises(ConfigError, match="relative path inside the work dir"):
        SandboxRequest(code="pass", files={name: "x"})


def test_a_request_runs_code_or_a_command() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        SandboxRequest()
    with pytest.raises(ConfigError, match="exactly one"):
        SandboxRequest(code="pass", command=("ls",))
    with pytest.raises(ConfigError, match="not supported"):
        SandboxRequest(code="x", language="cobol")  # type: ignore[arg-type]
    files = SandboxRequest(code="print(1)", files={"data/in.txt": "a"}).all_files()
    assert files == {"data/in.txt": b"a", "main.py": b"print(1)"}


def test_stop_reasons_read_from_the_programs_errors() -> None:
    assert stop_reason_from_output(1, "Traceback ...\nMemoryError\n") == "memory"
    assert stop_reason_from_output(1, "BlockingIOError: [Errno 11] Resource temporarily unavailable") == "processes"
    assert stop_reason_from_output(0, "MemoryError") is None
    assert stop_reason_from_output(1, "ValueError: no") is None


def _popen(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_capture_cuts_output_at_the_limit_and_kills() -> None:
    process = _popen("import sys\nwhile True: sys.stdout.write('y' * 4096)")
    captured = capture(process, max_bytes=10_000, timeout_s=10, kill=lambda _status: process.kill())
    assert captured.output_limit and captured.stdout_truncated and len(captured.stdout) == 10_000
    assert process.poll() is not None


def test_capture_stops_at_the_deadline_even_with_stdout_closed() -> None:
    process = _popen("import os, time\nos.close(1)\ntime.sleep(60)")
    captured = capture(process, max_bytes=1000, timeout_s=0.5, kill=lambda _status: process.kill())
    assert captured.timed_out and captured.returncode is None and captured.wall_s < 5
    assert process.poll() is not None


def test_capture_reads_both_streams_of_a_finished_program() -> None:
    process = _popen("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)")
    captured = capture(process, max_bytes=1000, timeout_s=10, kill=lambda _status: process.kill())
    assert (captured.stdout, captured.stderr, captured.returncode) == (b"out\n", b"err\n", 3)
    assert not (captured.timed_out or captured.output_limit)


@pytest.mark.parametrize(("tests", "expected"), [
    (["assert f() == 1", "assert g()"], AssertTests(("assert f() == 1", "assert g()"))),
    ('["assert f()"]', AssertTests(("assert f()",))),
    ({"assert_case": ["assert f()"]}, AssertTests(("assert f()",))),
    ('{"inputs": ["1\\n"], "outputs": ["2\\n"]}', StdioTests(("1\n",), ("2\n",))),
    ("assert f() == 2\nassert g()", AssertTests(("assert f() == 2\nassert g()",))),
])
def test_tests_come_in_the_documented_forms(tests: object, expected: object) -> None:
    assert parse_tests(tests) == expected


@pytest.mark.parametrize(("tests", "message"), [
    ([], "non-empty list"), ({"inputs": ["1"], "outputs": []}, "as many outputs"),
    ({"fn_name": "f", "inputs": [], "outputs": []}, "fn_name"), ({"x": 1}, "assert_case"), (3, "non-empty list"),
])
def test_malformed_tests_are_refused_with_the_reason(tests: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_tests(tests)


def test_code_is_the_last_python_block_else_the_last_block_else_everything() -> None:
    assert extract_code("a\n```python\nx = 1\n```\ntext\n```python\nx = 2\n```") == "x = 2\n"
    assert extract_code("```python\nx = 1\n```\n```text\nnot code\n```") == "x = 1\n"
    assert extract_code("```\ny = 3\n```") == "y = 3\n"
    assert extract_code("```py\nz = 4\n") == "z = 4\n"  # cut at max length
    assert extract_code("def f(): pass") == "def f(): pass"


def test_completions_may_be_chats() -> None:
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"text": "b"}]}]) == "ab"
    assert completion_text([]) == ""


def test_run_code_json_round_trips() -> None:
    limits = Limits(timeout_s=5, memory_mb=300)
    request = SandboxRequest(code="print(input())", stdin="hi", files={"data.txt": b"\x00\x01"})
    body = request_json(request, limits)
    assert body["run_timeout"] == 5 and body["memory_limit_MB"] == 300 and body["language"] == "python"
    back = request_from_json(body, Limits(timeout_s=3, memory_mb=1000))
    assert back.code == request.code and back.stdin == "hi" and back.files == {"data.txt": b"\x00\x01"}
    assert back.limits is not None and back.limits.timeout_s == 3 and back.limits.memory_mb == 300  # server caps
    result = SandboxResult(0, "hi\n", "", 0.1, 0.05)
    assert result_from_json(response_json(result), "url") == result
    stopped = SandboxResult(None, "", "", 5.0, stopped="timeout", message="killed")
    answer = response_json(stopped)
    assert answer["status"] == "Failed" and answer["run_result"]["status"] == "TimeLimitExceeded"
    assert result_from_json(answer, "url") == stopped


@pytest.mark.parametrize(("body", "message"), [
    ([], "JSON object"), ({}, "`code`"), ({"code": "x", "language": "cpp"}, "not supported"),
    ({"code": "x", "files": {"a": "!!"}}, "base64"), ({"code": "x", "run_timeout": "ten"}, "run_timeout"),
    ({"code": "x", "fetch_files": ["out.txt"]}, "fetch_files"), ({"code": "x", "files": {"../a": ""}}, "relative"),
])
def test_bad_run_code_bodies_are_refused(body: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        request_from_json(body, Limits())


def test_a_command_cannot_go_to_sandbox_fusion() -> None:
    with pytest.raises(ConfigError, match="not a command"):
        request_json(SandboxRequest(command=("ls",)), Limits())


def test_answers_of_other_servers_are_read() -> None:
    sandbox_error = result_from_json({"status": "SandboxError", "message": "boom"}, "url")
    assert sandbox_error.stopped == "sandbox_error" and "boom" in (sandbox_error.message or "")
    finished = result_from_json({"status": "Failed", "run_result": {"status": "Finished", "return_code": 1,
                                                                     "stdout": "", "stderr": "E",
                                                                     "execution_time": 0.2}}, "url")
    assert finished.exit_code == 1 and finished.stopped is None and finished.cpu_s is None
