"""The Gemini CLI ingester on the session JSON and the JSONL append log in shared/data/traces/gemini_cli."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shared_data import TRACES
from trace_fuzz import json_lines, read_text, records, samples

from composer_core.traces import gemini_cli
from composer_core.traces.contracts import Trace
from composer_core.traces.formats import FileInHand, IngestLog, leading_json_objects
from composer_core.traces.ingest import detect_format, ingest

FOLDER = TRACES / "gemini_cli"
SESSION = FOLDER / "jazzyalex__agent-sessions__large.HAND-ASSEMBLED.json"
LOG = FOLDER / "jazzyalex__agent-sessions__jsonl_v040.HAND-ASSEMBLED.jsonl"

KEYS = ("sessionId", "projectHash", "id", "type", "content", "timestamp", "toolCalls", "name", "args", "status",
        "result", "functionResponse", "response", "output", "error", "thoughts", "subject", "description", "parts",
        "model", "$set", "$rewindTo", "messages", "lastUpdated", "resultDisplay", "text")
WORDS = ("user", "gemini", "model", "info", "error", "success", "cancelled", "m1", "m2", "s1", "Exit Code: 1")

SESSION_MESSAGES = json.loads(SESSION.read_text(encoding="utf-8"))["messages"] if SESSION.is_file() else []

pytestmark = pytest.mark.skipif(not TRACES.is_dir(), reason=f"shared trace samples not found at {TRACES}")


def read(path: Path) -> tuple[list[Trace], IngestLog]:
    log = IngestLog()
    return list(gemini_cli.read(path, log)), log


def assert_accounted(log: IngestLog, read_: int, used: int, skipped: int, rejected: int = 0) -> None:
    summary = log.summary()
    counts = (summary["records_read"], summary["records_used"], summary["records_skipped"],
              summary["records_rejected"])
    assert counts == (read_, used, skipped, rejected)


def test_session_json_tool_calls_exit_codes_and_legacy_model_messages() -> None:
    (trace,), log = read(SESSION)
    assert_accounted(log, 8, 7, 1)  # the file and its 7 messages; the info message is skipped
    assert dict(log.skipped) == {"message:info": 1}
    assert (trace.trace_id, trace.task, trace.model) == ("session-2025-12-16T23-47-b4f17607", "Run a command",
                                                         "gemini-3-flash-preview")
    assert str(trace.started_at) == "2025-12-16 23:47:00+00:00" and trace.meta["project_hash"].startswith("205016")
    assert [message.role for message in trace.messages] == ["user", "assistant", "tool", "assistant", "tool",
                                                            "assistant", "user", "assistant"]
    assert [message.provenance.record for message in trace.messages][:3] == ["messages[0]", "messages[1]",
                                                                             "messages[1]"]
    assert all(message.provenance.line is None for message in trace.messages)
    first, second = (message.tool_calls[0] for message in trace.messages if message.tool_calls)
    assert (first.name, first.id, first.arguments["cwd"]) == ("run_shell_command", "run_shell_command-1", "/tmp")
    assert trace.messages[1].thinking == "Placeholder thoughts for schema coverage."
    results = [message.tool_result for message in trace.messages if message.role == "tool"]
    assert [(result.call_id, result.exit_code, result.failed) for result in results] == [
        (first.id, 0, False), (second.id, 1, True)]  # status success, but `Exit Code: 1` in the output
    assert "No such file or directory" in results[1].output
    assert trace.messages[5].content == "Captured multiline output."  # legacy `model` message with parts


def test_jsonl_log_header_messages_and_set_patch() -> None:
    (trace,), log = read(LOG)
    assert_accounted(log, 5, 4, 1)
    assert dict(log.skipped) == {"$set": 1}
    assert trace.trace_id == "gemini_stage0_jsonl" and trace.meta["kind"] == "main"
    assert str(trace.meta["ended_at"]) == "2026-04-29 21:39:33.156000+00:00"  # lastUpdated from the $set line
    assert [(message.role, message.provenance.line) for message in trace.messages] == [
        ("user", 2), ("assistant", 4), ("tool", 4), ("assistant", 5)]
    call = trace.messages[1].tool_calls[0]
    assert (call.name, call.arguments["command"]) == ("run_shell_command", "ls -F")
    result = trace.messages[2].tool_result
    assert result.call_id == call.id and result.output.startswith("Output: AgentSessions/") and not result.failed
    assert trace.messages[3].content == "Hello! I listed the files." and trace.task == "Say hello and list files."


def test_detect_is_exclusive_across_all_samples() -> None:
    for path in sorted(TRACES.rglob("*")):
        assert gemini_cli.detect(path) == (path.parent == FOLDER), path
        if path.parent == FOLDER:
            assert detect_format(path).name == gemini_cli.NAME


def test_jsonl_updates_rewinds_errors_and_bad_lines(tmp_path: Path) -> None:
    failing = {"id": "g-assistant-3", "type": "gemini", "content": "", "toolCalls": [
        {"id": "read-1", "name": "read_file", "args": {"path": "README.md"}, "status": "error",
         "result": [{"functionResponse": {"id": "read-1", "name": "read_file",
                                          "response": {"error": "File not found: README.md"}}}]}]}
    extra = [
        "garbage",  # 6
        json.dumps({"id": "g-user-1", "type": "user", "content": "Say hello and list all files."}),  # 7: update
        json.dumps({"id": "g-user-2", "type": "user", "content": "abandoned prompt"}),  # 8
        json.dumps({"$rewindTo": "g-user-2"}),  # 9: drops line 8
        json.dumps({"id": "g-user-3", "type": "user", "content": "read the README"}),  # 10
        json.dumps(failing),  # 11
        json.dumps({"$set": {"messages": []}}),  # 12: a context rewrite, not applied
        json.dumps({"$rewindTo": "no-such-id"}),  # 13
        json.dumps({"foo": 1}),  # 14
        json.dumps({"id": "g-x", "type": "mystery"}),  # 15
        json.dumps(failing)[:30],  # 16: cut short, no newline
    ]
    path = tmp_path / "session.jsonl"
    path.write_text(LOG.read_text(encoding="utf-8") + "\n".join(extra), encoding="utf-8")
    (trace,), log = read(path)
    assert_accounted(log, 16, 6, 5, 5)
    assert dict(log.skipped) == {"$set": 1, "message superseded by a later record": 1, "message rewound": 1,
                                 "$rewindTo": 1, "$set messages (context rewrite, not applied)": 1}
    assert sorted((reject.line, reject.reason.split(":")[0]) for reject in log.examples) == [
        (6, "malformed JSON"), (13, "rewind to unknown message id 'no-such-id'"), (14, "unknown record"),
        (15, "bad message record"), (16, "malformed JSON")]
    assert [(message.role, message.provenance.line) for message in trace.messages] == [
        ("user", 7), ("assistant", 4), ("tool", 4), ("assistant", 5), ("user", 10), ("assistant", 11), ("tool", 11)]
    assert trace.task == "Say hello and list all files."  # the later record replaced the first, in place
    failed = trace.messages[-1]
    assert failed.failed and failed.tool_result.is_error and failed.tool_result.output == "File not found: README.md"


def test_truncated_session_json_is_one_reject(tmp_path: Path) -> None:
    path = tmp_path / "session-2025-12-16T23-47-b4f17607.json"
    text = SESSION.read_text(encoding="utf-8")
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    assert gemini_cli.detect(path)
    traces, log = read(path)
    assert traces == [] and [reject.reason.split(":")[0] for reject in log.examples] == ["malformed JSON file"]
    assert_accounted(log, 1, 0, 0, 1)


def test_memory_stays_flat_on_a_large_log(tmp_path: Path) -> None:
    header, user, _, call, answer = LOG.read_text(encoding="utf-8").splitlines()
    path = tmp_path / "large.jsonl"
    with path.open("w", encoding="utf-8") as stream:
        stream.write(header + "\n")
        for copy in range(2500):  # 7,501 lines, about 2.8 MB
            stream.writelines(line.replace('"id":"g-', f'"id":"g-{copy}-') + "\n" for line in (user, call, answer))
    size, log = path.stat().st_size, IngestLog()
    tracemalloc.start()
    reader = gemini_cli.read(path, log)
    trace = next(reader)  # the reader still holds its message-id index here
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert log.read == 7501 and len(trace.messages) == 2500 * 4
    # beyond the trace and the id index that updates and rewinds need, no more than a line or so is in memory
    assert peak - retained < size / 10


def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths opened from now on (by system call or file object), in order."""
    calls: list[str] = []
    os_open, path_open = os.open, Path.open

    def spy_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        calls.append(str(path))
        return os_open(path, *args, **kwargs)

    def spy_path_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        calls.append(str(self))
        return path_open(self, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(Path, "open", spy_path_open)
    return calls


def test_ingest_opens_a_small_file_once_and_agrees_with_a_direct_read(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Detection reads a small file whole and its reader takes those bytes; a file past the first read (64 KB)
    is read again by its reader. Either way the traces are those of the reader on its own."""
    header, *rest = LOG.read_text(encoding="utf-8").splitlines()
    header = header.replace("gemini_stage0_jsonl", "big")
    lines = [header] + [line.replace('"id":"g-', f'"id":"g-{copy}-') for copy in range(200) for line in rest]
    (tmp_path / "big.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for source in (SESSION, LOG):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    direct = {path.name: [trace.model_dump_json() for trace in read(path)[0]] for path in sorted(tmp_path.iterdir())}
    calls = opened(monkeypatch)
    traces = list(ingest([tmp_path], IngestLog()))
    assert {Path(trace.source).name: [trace.model_dump_json()] for trace in traces} == direct
    assert [Path(call).name for call in calls] == ["big.jsonl", "big.jsonl", LOG.name, SESSION.name]


def test_a_suspended_ingestion_leaves_no_stale_bytes_behind(tmp_path: Path) -> None:
    """The bytes detection read are the reader's only while it reads: a file changed while an ingestion is
    suspended (a trace in the caller's hands) is read anew, by that file's reader or by another ingestion."""
    path = tmp_path / "session.jsonl"
    path.write_bytes(LOG.read_bytes())
    suspended = ingest([path], IngestLog())
    assert next(suspended).task == "Say hello and list files."
    path.write_text(LOG.read_text(encoding="utf-8").replace("Say hello", "Say goodbye"), encoding="utf-8")
    assert read(path)[0][0].task == "Say goodbye and list files."
    assert next(ingest([path], IngestLog())).task == "Say goodbye and list files."
    assert list(suspended) == []


@pytest.mark.parametrize("text", [
    "\n\n \n\t\n" * 8 + "{header}\n",  # blank and whitespace lines do not count
    "[1]\n" * 19 + "{header}",  # the 20th line, with no newline at the end
    "[1]\n" * 20 + "{header}\n",  # the 21st line: beyond what detection reads
    "{header}\r\n[1]\r\n",  # CRLF
    "{header}\r[1]\r",  # a lone CR does not end a line for detection
    '{"a": 1}\n\x00\xff\n{header}\n\n',  # a line that is not JSON
])
def test_detection_in_hand_reads_the_leading_lines_as_a_streamed_read_does(tmp_path: Path, text: str) -> None:
    path = tmp_path / "session.jsonl"
    header = json.dumps({"sessionId": "s1", "projectHash": "p1"})
    path.write_bytes(text.replace("{header}", header).encode("utf-8", errors="surrogateescape"))
    streamed = leading_json_objects(path)
    with FileInHand(path):
        assert leading_json_objects(path) == streamed
        assert gemini_cli.detect(path) == any("sessionId" in line for line in streamed)


def test_a_folder_of_sessions_comes_in_file_name_order_with_repeated_ids_renamed(tmp_path: Path) -> None:
    for name in ("b.json", "a.json", "c.jsonl", "B.json"):
        (tmp_path / name).write_bytes((LOG if name.endswith(".jsonl") else SESSION).read_bytes())
    log = IngestLog()
    traces = list(ingest([tmp_path], log))
    assert [Path(trace.source).name for trace in traces] == ["B.json", "a.json", "b.json", "c.jsonl"]
    assert [trace.trace_id.rsplit("~", 1)[-1] for trace in traces] == ["session-2025-12-16T23-47-b4f17607", "2",
                                                                       "3", "gemini_stage0_jsonl"]
    assert log.trace_ids_renamed == 2 and log.files == 4


@settings(max_examples=150, deadline=None)
@given(lines=json_lines(samples(LOG) + SESSION_MESSAGES, KEYS, WORDS),
       messages=st.lists(records(SESSION_MESSAGES, KEYS, WORDS), max_size=6))
def test_arbitrary_records_never_crash_and_are_all_accounted(lines: list[str], messages: list[dict]) -> None:
    header = json.dumps({"sessionId": "s1", "projectHash": "p1"})
    read_text(gemini_cli.read, "\n".join([header, *lines]), ".jsonl")
    document = {"sessionId": "s1", "projectHash": "p1", "messages": messages}
    assert read_text(gemini_cli.read, json.dumps(document), ".json").read == 1 + len(messages)
