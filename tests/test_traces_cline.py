"""The Cline / Roo Code ingester on SYNTHETIC fixtures (tests/data/traces/cline, hand-made to the documented
schema because no real sample is available) and on bad input."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shared_data import TRACES
from trace_fuzz import read_text, records

from composer_core.plugins import registries
from composer_core.traces import cline
from composer_core.traces.contracts import Trace
from composer_core.traces.formats import IngestLog
from composer_core.traces.ingest import ingest

FIXTURES = Path(__file__).resolve().parent / "data" / "traces" / "cline"
NATIVE = FIXTURES / "synthetic_native_api_conversation_history.json"
XML = FIXTURES / "synthetic_xml_api_conversation_history.json"


def accounted(log: IngestLog) -> bool:
    return log.read == log.used + sum(log.skipped.values()) + sum(log.rejected.values())


def parse(path: Path) -> tuple[list[Trace], IngestLog]:
    log = IngestLog()
    return list(cline.read(path, log)), log


def write(tmp_path: Path, value: Any, name: str = "api_conversation_history.json") -> Path:
    path = tmp_path / name
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return path


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


TASK = {"role": "user", "content": [text("<task>\nfix it\n</task>")]}


def test_native_tool_use_session() -> None:
    [trace], log = parse(NATIVE)
    assert trace.trace_id == NATIVE.stem and trace.format == "cline" and trace.source == str(NATIVE)
    assert trace.task == "Add a --verbose flag to cli.py and make the tests pass."
    assert trace.model == "claude-sonnet-4-20250514" and "tool_calls_in_content" not in trace.meta
    assert trace.outcome == {"attempt_completion": {"result": "Added -v/--verbose to cli.py; the test suite passes."}}
    assert [m.role for m in trace.messages] == ["user"] + ["assistant", "tool"] * 6 + ["assistant"]
    first = trace.messages[1]
    assert first.thinking == "I should read cli.py before changing it."
    assert first.content == "Let me look at the CLI module first."
    assert [(c.id, c.name, c.arguments) for c in first.tool_calls] == [("toolu_01", "read_file", {"path": "cli.py"})]
    results = [m.tool_result for m in trace.messages if m.tool_result is not None]
    assert [(r.call_id, r.name) for r in results] == [
        ("toolu_01", "read_file"), ("toolu_02", "replace_in_file"), ("toolu_03", "execute_command"),
        ("toolu_04", "replace_in_file"), ("toolu_05", "replace_in_file"), ("toolu_06", "execute_command")]
    assert results[0].output.startswith("import argparse") and "<environment_details>" not in results[0].output
    assert [(r.failed, r.is_error, r.exit_code) for r in results] == [
        (False, False, None), (False, False, None), (True, False, 1), (True, True, None), (False, False, None),
        (False, False, 0)]
    assert "does not match anything in the file" in results[3].output
    assert trace.messages[9].role == "assistant" and trace.messages[9].tool_calls[0].id == "toolu_05"
    assert [m.provenance.record for m in trace.messages[:3]] == ["[0]", "[1]", "[2].content[0]"]
    assert all(m.provenance.file == str(NATIVE) and m.provenance.format == "cline" for m in trace.messages)
    assert dict(log.skipped) == {"environment_details": 7} and log.rejected == {} and accounted(log)


def test_xml_tag_session_with_error_and_recovery() -> None:
    [trace], log = parse(XML)
    assert trace.task == "The build is broken, please fix it." and trace.model is None
    assert trace.meta == {"tool_calls_in_content": True}
    reply = trace.messages[1]
    assert reply.content.startswith("<thinking>") and reply.thinking == "I should first see what the build prints."
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [
        ("execute_command", {"command": "make", "requires_approval": "false"})]
    make = trace.messages[2]
    assert make.failed and make.tool_result.name == "execute_command"  # type: ignore[union-attr]
    assert make.tool_result.call_id == reply.tool_calls[0].id  # type: ignore[union-attr]
    assert "Error executing command" in make.tool_result.output  # type: ignore[union-attr]
    fix = trace.messages[3].tool_calls[0]
    assert fix.name == "replace_in_file" and isinstance(fix.arguments, dict) and fix.arguments["path"] == "main.c"
    assert "return 0;" in fix.arguments["diff"]
    assert not trace.messages[4].failed
    notice = trace.messages[6]
    assert trace.messages[5].tool_calls == [] and notice.role == "tool" and notice.failed
    assert notice.tool_result.name == "cline" and notice.tool_result.output.startswith("[ERROR]")  # type: ignore[union-attr]
    recovery, result = trace.messages[7:9]
    assert recovery.tool_calls[0].arguments == {"command": "make && ./main", "requires_approval": "false"}
    assert not result.failed and result.tool_result.output.endswith("hello")  # type: ignore[union-attr]
    assert trace.outcome["attempt_completion"]["command"] == "./main"
    assert "<feedback>\nThanks, that fixed it.\n</feedback>" in trace.messages[10].tool_result.output  # type: ignore[union-attr]
    assert [m.failed for m in trace.messages if m.role == "tool"] == [True, False, True, False, False]
    assert dict(log.skipped) == {"environment_details": 6} and log.rejected == {} and accounted(log)


def test_task_folder_names_the_trace_and_its_start(tmp_path: Path) -> None:
    folder = tmp_path / "1733762213489"
    folder.mkdir()
    copy = folder / "api_conversation_history.json"
    shutil.copy(NATIVE, copy)
    [trace], _ = parse(copy)
    assert trace.trace_id == "1733762213489"
    assert trace.started_at == datetime(2024, 12, 9, 16, 36, 53, 489000, tzinfo=timezone.utc)


def test_message_timestamps_string_content_and_native_tool_results(tmp_path: Path) -> None:
    messages = [
        {"role": "user", "content": "<task>\nlist files\n</task>", "ts": 1733762213489},
        {"role": "assistant", "ts": 1733762214000,
         "content": [{"type": "tool_use", "id": "t1", "name": "list_files", "input": {"path": "."}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                                      "content": [text("permission denied")]}]},
    ]
    [trace], log = parse(write(tmp_path, messages))
    assert trace.task == "list files" and trace.started_at == datetime(2024, 12, 9, 16, 36, 53, 489000,
                                                                        tzinfo=timezone.utc)
    assert trace.messages[1].timestamp == datetime(2024, 12, 9, 16, 36, 54, tzinfo=timezone.utc)
    result = trace.messages[2].tool_result
    assert result is not None and (result.call_id, result.name, result.output, result.is_error) == (
        "t1", "list_files", "permission denied", True)
    assert accounted(log)


def test_denied_operation_and_unclosed_xml_tag(tmp_path: Path) -> None:
    messages = [TASK,
                {"role": "assistant", "content": [text("<write_to_file>\n<path>a.py</path>\n</write_to_file>")]},
                {"role": "user",
                 "content": [text("[write_to_file for 'a.py'] Result:\nThe user denied this operation.")]},
                {"role": "assistant", "content": [text("<execute_command>\n<command>ls")]}]
    [trace], _ = parse(write(tmp_path, messages))
    denied = trace.messages[2].tool_result
    assert denied is not None and denied.is_error and denied.output == "The user denied this operation."
    assert trace.messages[3].tool_calls[0].arguments == "\n<command>ls"


def test_malformed_records_are_rejected_with_their_place(tmp_path: Path) -> None:
    messages = [TASK, "not a message", {"role": "system", "content": "x"},
                {"role": "assistant", "content": [text("ok"), {"type": "mystery"}, {"type": "tool_use", "input": {}},
                                                  {"type": "redacted_thinking", "data": "opaque"}, 7]},
                {"role": "user", "content": [{"type": "image", "source": {}}, {"type": "document"}]},
                {"role": "assistant", "content": None}, {"role": "assistant", "content": []}]
    [trace], log = parse(write(tmp_path, messages))
    assert [m.role for m in trace.messages] == ["user", "assistant"]
    assert [reject.record for reject in log.examples] == [
        "[1]", "[2]", "[3].content[1]", "[3].content[2]", "[3].content[4]", "[4].content[1]", "[5]"]
    assert all(reject.file.endswith("api_conversation_history.json") for reject in log.examples)
    assert dict(log.skipped) == {"redacted_thinking": 1, "image": 1, "empty message": 1} and accounted(log)


@pytest.mark.parametrize("content", [
    '[{"role": "user", "content": [{"type": "text", "text": "<task>cut', "\x00\xff\x13garbage", "", '{"a": 1}'])
def test_truncated_garbage_and_non_array_files_are_one_reject(tmp_path: Path, content: str) -> None:
    traces, log = parse(write(tmp_path, content))
    assert traces == [] and log.read == 1 and sum(log.rejected.values()) == 1 and accounted(log)
    assert log.examples[0].file.endswith("api_conversation_history.json")


def test_empty_array_is_skipped(tmp_path: Path) -> None:
    traces, log = parse(write(tmp_path, []))
    assert traces == [] and dict(log.skipped) == {"empty conversation": 1} and accounted(log)


def test_detection_by_name_and_by_shape(tmp_path: Path) -> None:
    assert cline.detect(NATIVE) and cline.detect(XML)
    renamed = tmp_path / "task.json"
    shutil.copy(XML, renamed)
    assert cline.detect(renamed)
    assert not cline.detect(write(tmp_path, [{"role": "system", "content": "hi"}], "other.json"))
    assert not cline.detect(tmp_path)


@pytest.mark.skipif(not TRACES.is_dir(), reason=f"shared trace samples not found at {TRACES}")
def test_no_other_sample_is_claimed_and_no_other_format_claims_the_fixtures() -> None:
    samples = [path for path in TRACES.rglob("*") if path.name != "MANIFEST.md"]
    assert samples and not [path for path in samples if cline.detect(path)]
    for fixture in (NATIVE, XML):
        assert [entry.name for entry in registries().trace_formats if entry.item.detect(fixture)] == ["cline"]


def test_ingest_routes_the_fixtures_to_cline() -> None:
    log = IngestLog()
    traces = list(ingest([NATIVE, XML], log))
    assert [trace.format for trace in traces] == ["cline", "cline"] and log.traces == 2 and accounted(log)


KEYS = ("role", "content", "type", "text", "thinking", "id", "name", "input", "tool_use_id", "is_error", "ts",
        "modelInfo", "modelId")
WORDS = ("user", "assistant", "system", "text", "thinking", "tool_use", "tool_result", "image", "redacted_thinking",
         "[execute_command for 'ls'] Result:", "[ERROR] no tool", "<task>x</task>", "<environment_details>x",
         "<read_file><path>a</path></read_file>", "<execute_command>", "Exit code: 1", "<thinking>t</thinking>")


@settings(max_examples=150, deadline=None)
@given(messages=st.lists(records(json.loads(NATIVE.read_text()) + json.loads(XML.read_text()), KEYS, WORDS),
                         max_size=8))
def test_arbitrary_messages_never_crash_and_are_all_accounted(messages: list[Any]) -> None:
    read_text(cline.read, json.dumps(messages), ".json")
