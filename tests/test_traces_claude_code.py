"""The Claude Code ingester on the real session files in shared/data/traces/claude_code."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from shared_data import TRACES
from trace_fuzz import json_lines, read_text, samples

from composer_core.traces import claude_code
from composer_core.traces.contracts import Trace
from composer_core.traces.formats import IngestLog
from composer_core.traces.ingest import detect_format, ingest

FOLDER = TRACES / "claude_code"
DENIAL = FOLDER / "d-kimuson__claude-code-viewer__1af7fc5e-8455-4414-9ccd-011d40f70b2a.jsonl"
ERRORS = FOLDER / "d-kimuson__claude-code-viewer__5c0375b4-57a5-4f26-b12d-d022ee4e51b7.jsonl"
CATALOGUE = FOLDER / "jazzyalex__agent-sessions__small.HAND-ASSEMBLED.jsonl"
V2 = FOLDER / "kvsankar__agent-history__real_sessions_claude_session-01.jsonl"

KEYS = ("type", "message", "content", "role", "id", "text", "thinking", "tool_use_id", "is_error", "name", "input",
        "uuid", "parentUuid", "isSidechain", "timestamp", "model", "sessionId", "subtype", "sourceToolUseID",
        "toolDenialKind", "isApiErrorMessage", "isCompactSummary", "prompt")
WORDS = ("user", "assistant", "system", "summary", "attachment", "tool_use", "tool_result", "text", "thinking", "u1",
         "u2", "m1", "t1", "<synthetic>", "<tool_use_error>x</tool_use_error>", "2025-09-03T00:47:19.293Z")

pytestmark = pytest.mark.skipif(not TRACES.is_dir(), reason=f"shared trace samples not found at {TRACES}")


def read(path: Path) -> tuple[list[Trace], IngestLog]:
    log = IngestLog()
    return list(claude_code.read(path, log)), log


def assert_accounted(log: IngestLog, read_: int, used: int, skipped: int, rejected: int = 0) -> None:
    summary = log.summary()
    counts = (summary["records_read"], summary["records_used"], summary["records_skipped"],
              summary["records_rejected"])
    assert counts == (read_, used, skipped, rejected)


def calls(trace: Trace) -> list[tuple[str, str | None]]:
    return [(call.name, call.id) for message in trace.messages for call in message.tool_calls]


def test_permission_denial_in_the_1_0_98_init_session() -> None:
    (trace,), log = read(DENIAL)
    assert_accounted(log, 29, 29, 0)
    assert (trace.trace_id, trace.agent_version, trace.model) == (
        "1af7fc5e-8455-4414-9ccd-011d40f70b2a", "1.0.98", "claude-sonnet-4-20250514")
    assert trace.meta["cwd"] == "/path/to/Demo" and str(trace.started_at) == "2025-09-03 00:47:19.293000+00:00"
    assert trace.task.startswith("Please analyze this codebase and create a CLAUDE.md file")  # not the /init wrapper
    roles = [message.role for message in trace.messages]
    assert (roles.count("user"), roles.count("assistant"), roles.count("tool")) == (2, 7, 12)
    assert len(calls(trace)) == 12
    (failed,) = [message for message in trace.messages if message.failed]
    assert failed.provenance.line == 26 and failed.tool_result.name == "Write"
    assert failed.tool_result.call_id == "toolu_01LM7vfs6eMdhHJokVajzJA1"
    assert failed.tool_result.output.startswith("Claude requested permissions to write to /path/to/Demo/CLAUDE.md")


def test_blocks_of_one_message_id_merge_into_one_assistant_message() -> None:
    (trace,), _ = read(DENIAL)
    by_line = {message.provenance.line: message for message in trace.messages}
    first = by_line[3]  # text on line 3 and a TodoWrite call on line 4 share msg_01TqDZoU6FcpxB4u2AmpgWfZ
    assert first.content.startswith("I'll analyze the codebase") and [c.name for c in first.tool_calls] == ["TodoWrite"]
    assert [call.name for call in by_line[6].tool_calls] == ["Bash", "Glob", "Glob", "Glob", "Glob"]  # lines 6-10
    assert 4 not in by_line and 7 not in by_line
    bash = by_line[6].tool_calls[0]
    assert bash.arguments["description"] == "List common file types to understand project structure"
    results = [message.tool_result for message in trace.messages if message.role == "tool"]
    assert [result.name for result in results[1:6]] == ["Glob", "Glob", "Bash", "Glob", "Glob"]  # file order kept


def test_tool_use_errors_and_sidechains_in_the_1_0_108_session() -> None:
    (main, first, second), log = read(ERRORS)
    assert_accounted(log, 53, 53, 0)
    assert main.trace_id == "5c0375b4-57a5-4f26-b12d-d022ee4e51b7" and main.agent_version == "1.0.108"
    assert len(calls(main)) == 13
    failed = [(message.provenance.line, message.tool_result.name) for message in main.messages if message.failed]
    assert failed == [(15, "Task"), (46, "Edit")]
    assert all("<tool_use_error>" in message.tool_result.output for message in main.messages if message.failed)
    sidechain_lines = set(range(16, 23)) | set(range(26, 41))
    assert not sidechain_lines & {message.provenance.line for message in main.messages}
    assert first.meta["sidechain"] and first.meta["parent_trace_id"] == main.trace_id
    assert first.meta["parent_tool_use_id"] == "toolu_014YF9TXhDRR7BnpasNJ7gjC"
    assert first.task.startswith("Examine the package.json file(s)") and len(calls(first)) == 2
    assert second.meta["parent_tool_use_id"] == "toolu_01LKfUwrsnof18CpWZQcJH44" and len(calls(second)) == 6
    (lsd,) = [message for message in second.messages if message.failed]
    assert lsd.provenance.line == 33 and lsd.tool_result.name == "Bash"
    assert lsd.tool_result.output.startswith("lsd: 3: No such file or directory")


def test_line_type_catalogue_is_fully_accounted() -> None:
    (main, sidechain), log = read(CATALOGUE)
    assert_accounted(log, 89, 18, 71)
    skipped = log.skipped
    assert skipped["attachment"] == 38 and skipped["system:api_error"] == 4 and skipped["system:compact_boundary"] == 2
    for kind in ("summary", "file-history-snapshot", "queue-operation", "last-prompt", "permission-mode",
                 "worktree-state", "system:turn_duration", "assistant:synthetic"):
        assert skipped[kind] >= 1, kind
    assert main.model == "claude-opus-5" and main.meta["dropped_blocks"] == {"user image": 1, "assistant fallback": 1}
    opening = main.messages[0]
    assert (opening.provenance.line, opening.content, opening.thinking) == (29, "Listing the files.",
                                                                            "[trimmed for fixture]")
    assert main.messages[1].tool_result.output == "a.txt\nb.txt\n"  # text of a list-of-blocks result
    assert sidechain.meta["sidechain"] and sidechain.task == "Hello"
    thinking = sidechain.messages[1]
    assert thinking.thinking == "Reasoning goes here." and thinking.tool_calls[0].arguments == {"command": "ls"}
    denied = sidechain.messages[3].tool_result
    assert denied.is_error and denied.call_id == "tool_use_stage0_002"  # id from the line's sourceToolUseID


def test_2_x_session_skips_queue_operations() -> None:
    (trace,), log = read(V2)
    assert_accounted(log, 5, 2, 3)
    assert dict(log.skipped) == {"queue-operation": 2, "last-prompt": 1}
    assert (trace.model, trace.agent_version, trace.task) == ("claude-opus-4-7", "2.1.152", "[REDACTED_PROMPT]")


def test_provenance_on_every_message_in_file_order() -> None:
    for path in sorted(FOLDER.glob("*.jsonl")):
        for trace in read(path)[0]:
            lines = [message.provenance.line for message in trace.messages]
            assert lines == sorted(lines) and all(isinstance(line, int) and line >= 1 for line in lines)
            assert {(m.provenance.format, m.provenance.file) for m in trace.messages} == {(claude_code.NAME, str(path))}


def test_detect_is_exclusive_across_all_samples() -> None:
    for path in sorted(TRACES.rglob("*")):
        assert claude_code.detect(path) == (path.parent == FOLDER), path


def test_registered_and_chosen_by_ingest() -> None:
    log = IngestLog()
    traces = list(ingest([FOLDER], log))
    assert log.files == 4 and len(traces) == 7 and {trace.format for trace in traces} == {claude_code.NAME}
    assert all(detect_format(path).name == claude_code.NAME for path in FOLDER.glob("*.jsonl"))


def test_garbage_unknown_type_and_truncated_last_line_are_rejects(tmp_path: Path) -> None:
    lines = DENIAL.read_text(encoding="utf-8").splitlines()
    mystery = json.dumps({"type": "mystery", "uuid": "x", "sessionId": "s"})
    bad = [*lines[:5], "this is not JSON", *lines[5:], mystery, lines[-1][: len(lines[-1]) // 2]]
    path = tmp_path / "session.jsonl"
    path.write_text("\n".join(bad), encoding="utf-8")  # the last line is cut short, with no newline
    (trace,), log = read(path)
    assert_accounted(log, 32, 29, 0, 3)
    assert [(reject.line, reject.reason.split(":")[0]) for reject in log.examples] == [
        (6, "malformed JSON"), (31, "unknown event type 'mystery'"), (32, "malformed JSON")]
    assert len(calls(trace)) == 12 and trace.messages[-1].content.startswith("I've created a basic CLAUDE.md")


def test_non_object_lines_and_bad_messages_are_rejects(tmp_path: Path) -> None:
    lines = [json.dumps([1, 2]), json.dumps({"type": "user", "message": "not an object", "sessionId": "s"}),
             json.dumps({"type": "assistant", "sessionId": "s", "message": {"content": [{"type": "tool_use"}]}}),
             json.dumps({"type": "user", "sessionId": "s", "message": {"content": "hello"}})]
    path = tmp_path / "session.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (trace,), log = read(path)
    assert_accounted(log, 4, 1, 0, 3)
    assert [reject.line for reject in log.examples] == [1, 2, 3]
    assert trace.task == "hello"


def test_memory_stays_flat_on_a_large_session(tmp_path: Path) -> None:
    path = tmp_path / "large.jsonl"
    lines = [json.loads(line) for line in ERRORS.read_text(encoding="utf-8").splitlines()]
    with path.open("w", encoding="utf-8") as stream:
        for copy in range(60):  # 3,180 lines, about 8.6 MB
            for line in lines:
                renamed = {key: f"{line[key]}-{copy}" if key in ("uuid", "parentUuid") and line[key] else line[key]
                           for key in line}
                if "id" in line["message"]:
                    renamed["message"] = {**line["message"], "id": f"{line['message']['id']}-{copy}"}
                stream.write(json.dumps(renamed) + "\n")
    size = path.stat().st_size
    tracemalloc.start()
    traces, log = read(path)
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert log.read == 3180 and len(traces) == 1 + 60 * 2  # one session id: one main trace, 120 subagents
    assert sum(len(trace.messages) for trace in traces) == 60 * sum(len(trace.messages) for trace in read(ERRORS)[0])
    # the traces themselves hold the session; beyond them, ingestion keeps no more than a line or so in memory
    assert peak - retained < size / 10


@settings(max_examples=150, deadline=None)
@given(lines=json_lines(samples(ERRORS) + samples(CATALOGUE), KEYS, WORDS))
def test_arbitrary_lines_never_crash_and_are_all_accounted(lines: list[str]) -> None:
    read_text(claude_code.read, "\n".join(lines), ".jsonl")
