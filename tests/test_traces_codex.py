"""The Codex CLI ingester on the real rollouts in shared/data/traces/codex, and on the legacy form."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from shared_data import TRACES
from trace_fuzz import json_lines, read_text, samples

from composer_core.traces import codex
from composer_core.traces.contracts import Trace
from composer_core.traces.formats import IngestLog
from composer_core.traces.ingest import detect_format

FOLDER = TRACES / "codex"
V077 = FOLDER / "simonw__claude-code-transcripts__sample_codex_session.v0.77.jsonl"
EXEC = FOLDER / "kvsankar__agent-history__real_sessions_codex_session-01.jsonl"
CATALOGUE = FOLDER / "jazzyalex__agent-sessions__small.HAND-ASSEMBLED.jsonl"

KEYS = ("type", "payload", "record_type", "id", "timestamp", "role", "content", "text", "summary", "name",
        "arguments", "input", "action", "call_id", "output", "tools", "exit_code", "model", "cwd", "cli_version",
        "instructions", "git", "metadata")
WORDS = ("session_meta", "turn_context", "response_item", "event_msg", "compacted", "message", "reasoning",
         "function_call", "function_call_output", "custom_tool_call", "custom_tool_call_output", "local_shell_call",
         "web_search_call", "tool_search_call", "tool_search_output", "exec_command_end", "task_complete", "user",
         "assistant", "developer", "input_text", "output_text", "summary_text", "c1", "state",
         '{"output": "x", "metadata": {"exit_code": 1}}', "Exit code: 2")

pytestmark = pytest.mark.skipif(not TRACES.is_dir(), reason=f"shared trace samples not found at {TRACES}")

# The legacy (mid 2025) form: a bare header, state markers, unwrapped items, outputs as JSON text with metadata.
LEGACY = [
    {"id": "5973b6c0-94b8-487b-a530-2aeb6098ae0e", "timestamp": "2025-07-01T10:00:00.000Z", "instructions": None,
     "git": {"branch": "main", "commit_hash": "abc123"}},
    {"record_type": "state"},
    {"type": "message", "id": None, "role": "user",
     "content": [{"type": "input_text", "text": "<user_instructions>\nbe brief\n</user_instructions>"}]},
    {"type": "message", "id": None, "role": "user", "content": [{"type": "input_text", "text": "run the tests"}]},
    {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Run pytest first."}],
     "encrypted_content": "opaque"},
    {"type": "function_call", "id": "fc_1", "name": "shell", "call_id": "call_1",
     "arguments": json.dumps({"command": ["bash", "-lc", "pytest -q"]})},
    {"type": "function_call_output", "call_id": "call_1",
     "output": json.dumps({"output": "1 failed, 3 passed", "metadata": {"exit_code": 1, "duration_seconds": 0.4}})},
    {"record_type": "state"},
    {"type": "local_shell_call", "id": "lsc_1", "call_id": "call_2", "status": "completed",
     "action": {"type": "exec", "command": ["sed", "-i", "s/a/b/", "x.py"]}},
    {"type": "function_call_output", "call_id": "call_2",
     "output": "Exit code: 0\nWall time: 0.1 seconds\nOutput:\n"},
    {"type": "message", "id": None, "role": "assistant",
     "content": [{"type": "output_text", "text": "Fixed; the tests pass."}]},
]


def read(path: Path) -> tuple[list[Trace], IngestLog]:
    log = IngestLog()
    return list(codex.read(path, log)), log


def assert_accounted(log: IngestLog, read_: int, used: int, skipped: int, rejected: int = 0) -> None:
    summary = log.summary()
    counts = (summary["records_read"], summary["records_used"], summary["records_skipped"],
              summary["records_rejected"])
    assert counts == (read_, used, skipped, rejected)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def test_v0_77_envelope_rollout() -> None:
    (trace,), log = read(V077)
    assert_accounted(log, 11, 5, 6)  # session_meta, one turn_context, three messages; five repeated contexts
    assert dict(log.skipped) == {"event_msg:user_message": 1, "session_meta/turn_context (nothing new)": 5}
    assert (trace.trace_id, trace.agent_version, trace.model) == (
        "019b64e5-57fa-7463-b644-fba7e456f905", "0.77.0", "gpt-5.2-codex")
    assert trace.meta["cwd"] == "/Users/macmini/Code/homelab-migration"
    assert [message.role for message in trace.messages] == ["user", "user", "user"]
    assert trace.messages[0].content.startswith("# AGENTS.md instructions")  # kept, but not the task
    assert trace.task.startswith("can you analyse the MD files in this directory")


def test_codex_exec_rollout_with_developer_message() -> None:
    (trace,), log = read(EXEC)
    assert_accounted(log, 11, 6, 5)
    assert all(kind.startswith("event_msg:") for kind in log.skipped)
    assert [message.role for message in trace.messages] == ["system", "user", "user", "assistant"]
    assert [message.provenance.line for message in trace.messages] == [3, 4, 6, 9]
    assert (trace.task, trace.model, trace.agent_version) == ("[REDACTED_PROMPT]", "gpt-5.5", "0.135.0")
    assert trace.outcome == {"task_complete": 1} and trace.meta["originator"] == "codex_exec"


def test_catalogue_items_calls_and_event_duplicates() -> None:
    (trace,), log = read(CATALOGUE)
    assert_accounted(log, 118, 19, 99)
    assert log.skipped["event_msg:exec_command_end"] == 3 and log.skipped["compacted"] == 6
    assert log.skipped["response_item:reasoning (encrypted only)"] == 1
    turn = trace.messages[1]  # reasoning (line 7), custom_tool_call (9) and function_call (10): one model response
    assert turn.provenance.line == 7 and turn.thinking == "[trimmed for fixture]"
    assert [(call.name, call.id, call.arguments) for call in turn.tool_calls] == [
        ("shell", "call-1", {"command": ["ls"]}), ("shell", "call-2", {"command": ["ls"]})]
    outputs = {message.tool_result.call_id: (message.provenance.line, message.tool_result.output)
               for message in trace.messages if message.role == "tool"}
    assert outputs["call-2"] == (11, "a.txt\n") and outputs["call-1"] == (21, "a.txt\nb.txt\n")
    names = [call.name for message in trace.messages for call in message.tool_calls]
    assert names[2:4] == ["tool_search", "web_search"]
    assert trace.messages[-1].role == "tool" and trace.outcome == {"turn_aborted": 1, "task_complete": 2}
    # exec_command_end events lend their exit code to the outputs of the same call id
    assert [(m.provenance.line, m.tool_result.exit_code) for m in trace.messages
            if m.role == "tool" and m.tool_result.exit_code is not None] == [(28, 0), (105, 0), (115, 0)]


def test_event_messages_never_become_messages() -> None:
    for path in sorted(FOLDER.glob("*.jsonl")):
        events = {number for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
                  if json.loads(line)["type"] == "event_msg"}
        (trace,), _ = read(path)
        lines = [message.provenance.line for message in trace.messages]
        assert events and not events & set(lines) and lines == sorted(lines)
        assert {(m.provenance.format, m.provenance.file) for m in trace.messages} == {(codex.NAME, str(path))}


def test_legacy_rollout_exit_codes_and_reasoning(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rollout-2025-07-01T10-00-00-5973b6c0.jsonl", LEGACY)
    assert codex.detect(path)
    (trace,), log = read(path)
    assert_accounted(log, 11, 9, 2)
    assert dict(log.skipped) == {"record_type:state": 2}
    assert trace.trace_id == "5973b6c0-94b8-487b-a530-2aeb6098ae0e" and trace.task == "run the tests"
    assert trace.meta["git_branch"] == "main" and str(trace.started_at) == "2025-07-01 10:00:00+00:00"
    roles = [message.role for message in trace.messages]
    assert roles == ["user", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    call = trace.messages[2]
    assert call.thinking == "Run pytest first." and call.tool_calls[0].arguments == {"command": ["bash", "-lc",
                                                                                               "pytest -q"]}
    failed = trace.messages[3].tool_result
    assert (failed.output, failed.exit_code, failed.name, trace.messages[3].failed) == (
        "1 failed, 3 passed", 1, "shell", True)
    assert trace.messages[4].tool_calls[0].name == "local_shell"
    assert trace.messages[5].tool_result.exit_code == 0 and not trace.messages[5].failed
    assert trace.messages[6].content == "Fixed; the tests pass."


def test_process_exited_header_gives_the_exit_code(tmp_path: Path) -> None:
    records = [{"timestamp": "2026-01-01T00:00:00Z", "type": "session_meta", "payload": {"id": "s1"}},
               {"timestamp": "2026-01-01T00:00:01Z", "type": "response_item",
                "payload": {"type": "function_call", "name": "exec_command", "call_id": "c1",
                            "arguments": json.dumps({"cmd": "false"})}},
               {"timestamp": "2026-01-01T00:00:02Z", "type": "response_item",
                "payload": {"type": "function_call_output", "call_id": "c1",
                            "output": "Chunk ID: 1\nWall time: 0.0 seconds\nProcess exited with code 2\nOutput:\n"}}]
    (trace,), _ = read(write_jsonl(tmp_path / "r.jsonl", records))
    result = trace.messages[-1].tool_result
    assert (result.name, result.exit_code, trace.messages[-1].failed) == ("exec_command", 2, True)


def test_detect_is_exclusive_across_all_samples(tmp_path: Path) -> None:
    for path in sorted(TRACES.rglob("*")):
        assert codex.detect(path) == (path.parent == FOLDER), path
        if path.parent == FOLDER:
            assert detect_format(path).name == codex.NAME
    assert codex.detect(write_jsonl(tmp_path / "legacy.jsonl", LEGACY))


def test_detect_reads_a_long_session_header_whole(tmp_path: Path) -> None:
    meta, *rest = V077.read_text(encoding="utf-8").splitlines()
    record = json.loads(meta)
    record["payload"]["instructions"] *= 12  # a 34 KB first line: longer than any fixed-size head
    path = tmp_path / "rollout.jsonl"
    path.write_text("\n".join([json.dumps(record), *rest]), encoding="utf-8")
    assert len(path.read_text(encoding="utf-8").splitlines()[0]) > 32_000 and codex.detect(path)
    assert detect_format(path).name == codex.NAME


def test_garbage_unknown_type_and_truncated_last_line_are_rejects(tmp_path: Path) -> None:
    lines = EXEC.read_text(encoding="utf-8").splitlines()
    mystery = json.dumps({"timestamp": "2026-06-05T05:00:00Z", "type": "mystery", "payload": {}})
    unknown_item = json.dumps({"type": "response_item", "payload": {"type": "hologram"}})
    bad = [*lines[:4], "{not json", *lines[4:], mystery, unknown_item, lines[-1][:40]]
    path = tmp_path / "rollout.jsonl"
    path.write_text("\n".join(bad), encoding="utf-8")  # the last line is cut short, with no newline
    (trace,), log = read(path)
    assert_accounted(log, 15, 6, 5, 4)
    assert [(reject.line, reject.reason.split(":")[0]) for reject in log.examples] == [
        (5, "malformed JSON"), (13, "unknown event type 'mystery'"), (14, "unknown response item type 'hologram'"),
        (15, "malformed JSON")]
    assert [message.role for message in trace.messages] == ["system", "user", "user", "assistant"]


def test_memory_stays_flat_on_a_large_rollout(tmp_path: Path) -> None:
    path = tmp_path / "large.jsonl"
    lines = CATALOGUE.read_text(encoding="utf-8").splitlines()
    with path.open("w", encoding="utf-8") as stream:
        for copy in range(30):  # 3,540 lines, about 4.4 MB
            stream.writelines(line.replace('"call-', f'"call-{copy}-') + "\n" for line in lines)
    size = path.stat().st_size
    tracemalloc.start()
    (trace,), log = read(path)
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert log.read == 3540 and len(trace.messages) == 30 * len(read(CATALOGUE)[0][0].messages)
    assert peak < size / 3 and peak - retained < size / 10  # events are skipped: the trace is small too


@settings(max_examples=150, deadline=None)
@given(lines=json_lines(samples(CATALOGUE) + LEGACY, KEYS, WORDS))
def test_arbitrary_lines_never_crash_and_are_all_accounted(lines: list[str]) -> None:
    read_text(codex.read, "\n".join(lines), ".jsonl")
