"""The mini-swe-agent ingester on the real files in shared/data/traces/mini_swe_agent (v1 1.13.4 and the legacy
bare list), and on SYNTHETIC v2 files written here (no real v2 sample is available)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from shared_data import TRACES

from composer_core.traces import mini_swe_agent
from composer_core.traces.contracts import Trace
from composer_core.traces.formats import PROBE_BYTES, FileInHand, IngestLog
from composer_core.traces.ingest import detect_format, expand
from composer_core.traces.ingest import ingest as ingest_paths

V1 = TRACES / "mini_swe_agent" / "SWE-agent__mini-swe-agent__test_output.v1.13.4.json"
LEGACY = TRACES / "mini_swe_agent" / "SWE-agent__mini-swe-agent__github_issue.traj.json"

pytestmark = pytest.mark.skipif(not TRACES.is_dir(), reason=f"shared trace samples not found at {TRACES}")


def ingest(path: Path) -> tuple[list[Trace], IngestLog]:
    log = IngestLog()
    return list(mini_swe_agent.read(path, log)), log


def test_v1_13_4_exit_codes_and_outcome() -> None:
    (trace,), log = ingest(V1)
    assert trace.meta["trajectory_format"] == "mini-swe-agent-1" and trace.agent_version == "1.13.4"
    assert len(trace.messages) == 22
    assert [message.role for message in trace.messages] == ["system", "user"] + ["assistant", "tool"] * 10
    codes = [message.tool_result.exit_code for message in trace.messages if message.tool_result]
    assert codes == [1, 0, 0, 0, 0, 0, 0, 1, 0, None]  # the last is the submission, which has no return code
    assert "No such file or directory" in trace.messages[3].tool_result.output and trace.messages[3].failed
    assert "ZeroDivisionError: division by zero" in trace.messages[17].tool_result.output
    assert trace.messages[17].failed and not trace.messages[19].failed
    assert trace.messages[2].tool_calls[0].arguments == {
        "command": "cat /Users/fuchur/Documents/24/git_sync/swe-agent-test-repo/tests/./missing_colon.py"}
    assert trace.messages[20].tool_calls[0].arguments["command"].startswith("echo MINI_SWE_AGENT_FINAL_OUTPUT")
    assert trace.tools == ["bash"] and trace.model == "deterministic" and trace.meta["cwd"] == "/testbed"
    assert trace.outcome["exit_status"] == "Submitted"
    assert trace.outcome["submission"].startswith("diff --git a/tests/missing_colon.py")
    assert trace.meta["model_stats"]["api_calls"] == 10
    assert trace.task.startswith("<pr_description>")
    assert log.summary()["records_read"] == 23 and log.summary()["records_used"] == 23


def test_legacy_bare_list() -> None:
    (trace,), log = ingest(LEGACY)
    assert trace.meta["trajectory_format"] == "legacy" and trace.outcome == {}
    assert len(trace.messages) == 22
    calls = [call for message in trace.messages for call in message.tool_calls]
    assert len(calls) == 10 and calls[-1].arguments["command"].startswith("echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT")
    failed = [message.provenance.record for message in trace.messages if message.failed]
    assert failed == ["messages[3]", "messages[17]"]
    assert all(message.provenance.file == str(LEGACY) for message in trace.messages)
    assert log.summary()["records_rejected"] == 0


def test_v1_format_error_leaves_no_call(tmp_path: Path) -> None:
    data = json.loads(V1.read_text())
    data["messages"][4]["content"] = "two blocks\n```bash\nls\n```\n```bash\npwd\n```"
    data["messages"][5]["content"] = "Please always provide EXACTLY ONE action in triple backticks."
    copy = tmp_path / "format_error.json"
    copy.write_text(json.dumps(data))
    (trace,), _ = ingest(copy)
    assert trace.messages[4].tool_calls == [] and trace.messages[5].role == "user"


SYNTHETIC_V2_MESSAGES: list[dict[str, Any]] = [  # SYNTHETIC: shaped after mini-swe-agent 2.x documentation
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Fix the bug."},
    {"role": "assistant", "content": "Run the tests.", "extra": {"timestamp": 1770290687.0},
     "tool_calls": [{"id": "call_1", "type": "function",
                     "function": {"name": "bash", "arguments": "{\"command\": \"pytest -q\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "<returncode>1</returncode>\n<output>\n1 failed\n</output>",
     "extra": {"returncode": 1, "raw_output": "1 failed\n"}},
    {"role": "assistant", "content": "Retry.",
     "tool_calls": [{"id": "call_2", "type": "function",
                     "function": {"name": "bash", "arguments": "{\"command\": \"sleep 999\"}"}}]},
    {"role": "tool", "tool_call_id": "call_2", "content": "<returncode>-1</returncode>\n<output>\n</output>",
     "extra": {"returncode": -1, "exception_info": "timeout"}},
    {"role": "user", "content": "No tool call found.", "extra": {"interrupt_type": "FormatError"}},
    {"role": "exit", "content": "patch", "extra": {"exit_status": "Submitted", "submission": "patch"}},
]


def write_v2(tmp_path: Path, info: dict[str, Any], padding: int = 0) -> Path:
    messages = [*SYNTHETIC_V2_MESSAGES[:2], {"role": "user", "content": "x" * padding}, *SYNTHETIC_V2_MESSAGES[2:]]
    path = tmp_path / "synthetic_v2.traj.json"
    path.write_text(json.dumps({"info": info, "messages": messages if padding else SYNTHETIC_V2_MESSAGES,
                                "trajectory_format": "mini-swe-agent-1.1", "instance_id": "synthetic__v2-1"}))
    return path


def test_synthetic_v2_tool_calls_exit_codes_and_exit_message(tmp_path: Path) -> None:
    path = write_v2(tmp_path, {"mini_version": "2.0.0", "config": {"model": {"model_name": "openai/gpt-5"}}})
    assert mini_swe_agent.detect(path)
    (trace,), log = ingest(path)
    assert trace.trace_id == "synthetic__v2-1" and trace.model == "openai/gpt-5" and trace.agent_version == "2.0.0"
    assert [message.role for message in trace.messages] == ["system", "user", "assistant", "tool", "assistant",
                                                            "tool", "user"]
    test_run, timeout = trace.messages[3].tool_result, trace.messages[5].tool_result
    assert (test_run.call_id, test_run.name, test_run.exit_code, test_run.is_error) == ("call_1", "bash", 1, False)
    assert timeout.exit_code == -1 and timeout.is_error
    assert trace.messages[2].tool_calls[0].arguments == {"command": "pytest -q"}
    assert trace.messages[2].timestamp is not None and trace.messages[2].timestamp.year == 2026
    assert trace.outcome == {"exit_status": "Submitted", "submission": "patch"}  # from the exit message
    assert log.summary()["records_used"] == 9


def test_synthetic_v2_detected_by_its_tail(tmp_path: Path) -> None:
    path = write_v2(tmp_path, {}, padding=20_000)
    assert mini_swe_agent.detect(path)


def test_truncated_file_is_one_reject(tmp_path: Path) -> None:
    copy = tmp_path / "cut.traj.json"
    copy.write_bytes(V1.read_bytes()[:3000])
    traces, log = ingest(copy)
    assert traces == [] and log.summary()["records_rejected"] == 1 and log.examples[0].file == str(copy)


def test_bad_message_is_rejected_and_the_rest_kept(tmp_path: Path) -> None:
    data = json.loads(LEGACY.read_text())
    data[6] = "not a message"
    data[8]["role"] = "narrator"
    copy = tmp_path / "bad.traj.json"
    copy.write_text(json.dumps(data))
    (trace,), log = ingest(copy)
    assert [reject.record for reject in log.examples] == ["messages[6]", "messages[8]"]
    assert len(trace.messages) == 20


def test_detect_only_mini_swe_agent_samples() -> None:
    detected = {path.relative_to(TRACES).parts[0] for path in expand([TRACES]) if mini_swe_agent.detect(path)}
    assert detected == {"mini_swe_agent"}
    assert all(mini_swe_agent.detect(path) for path in (TRACES / "mini_swe_agent").iterdir())


@pytest.mark.parametrize("padding", [9_000, PROBE_BYTES + 1_000])
def test_tail_detection_and_reading_in_hand_agree_with_reading_from_disk(tmp_path: Path, padding: int) -> None:
    """`trajectory_format` past the first 8 KB: found in the bytes detection read for a small file, by reading
    the file's end for a large one; the traces are the reader's own either way."""
    path = write_v2(tmp_path, {"mini_version": "2.0.0"}, padding=padding)
    assert mini_swe_agent.detect(path)
    with FileInHand(path):
        assert mini_swe_agent.detect(path)
    found = detect_format(path)
    assert found is not None and found.name == mini_swe_agent.NAME
    direct, _ = ingest(path)
    assert [trace.model_dump_json() for trace in ingest_paths([path], IngestLog())] == [
        trace.model_dump_json() for trace in direct]


def test_timestamps_and_text_actions_only_where_the_message_has_them(tmp_path: Path) -> None:
    path = write_v2(tmp_path, {})
    (trace,), _ = ingest(path)
    stamped = [message.provenance.record for message in trace.messages if message.timestamp is not None]
    assert stamped == ["messages[2]"]  # the only message with `extra.timestamp`
    (legacy,), _ = ingest(LEGACY)
    assert all(message.timestamp is None for message in legacy.messages)
    assert [len(message.tool_calls) for message in legacy.messages if message.role == "assistant"] == [1] * 10
    assert legacy.messages[0].tool_calls == [] and legacy.messages[1].tool_calls == []
