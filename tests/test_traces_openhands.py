"""The OpenHands ingester on the real files in shared/data/traces/openhands (two V0 event lists and one V1 SDK
conversation folder), and on a SYNTHETIC evaluation-output JSONL written here (no real sample is available)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from shared_data import TRACES

from composer_core.traces import openhands
from composer_core.traces.contracts import Trace
from composer_core.traces.formats import IngestLog
from composer_core.traces.ingest import expand, ingest

GUI = TRACES / "openhands" / "All-Hands-AI__OpenHands__basic_gui_mode.json"
RENAME = TRACES / "openhands" / "All-Hands-AI__OpenHands__wrong_initial_state.json"
SDK = TRACES / "openhands" / "OpenHands__software-agent-sdk__conversation_cd94562403b9487ebdd4018e3f531dfd"

pytestmark = pytest.mark.skipif(not TRACES.is_dir(), reason=f"shared trace samples not found at {TRACES}")


def read(path: Path) -> tuple[list[Trace], IngestLog]:
    log = IngestLog()
    return list(openhands.read(path, log)), log


def test_v0_basic_gui_mode_exit_minus_one_and_skipped_bookkeeping() -> None:
    (trace,), log = read(GUI)
    assert [message.role for message in trace.messages] == ["user"] + ["assistant", "tool"] * 4 + ["assistant"]
    server = trace.messages[8]
    assert server.provenance.record == "events[14] id=14"
    assert (server.tool_result.name, server.tool_result.exit_code, server.failed) == ("execute_bash", -1, True)
    assert server.tool_result.call_id == trace.messages[7].tool_calls[0].id == "toolu_01DwihWr4ooPZS1CGTLAWrFP"
    assert trace.messages[2].tool_result.exit_code == 0 and not trace.messages[2].failed
    edit = trace.messages[3].tool_calls[0]  # arguments come from the raw model response
    assert edit.name == "str_replace_editor"
    assert (edit.arguments["command"], edit.arguments["path"]) == ("create", "/workspace/todo-app/index.html")
    assert trace.messages[3].content == "Let's create the main HTML file:"
    assert trace.messages[-1].content.startswith("I've created a complete Vue.js todo application")
    assert trace.model == "claude-3-5-sonnet-20241022" and trace.tools == ["execute_bash", "str_replace_editor"]
    assert trace.task.startswith("I want to create a VueJS app")
    assert trace.outcome == {"agent_state": "awaiting_user_input"}
    assert dict(log.skipped) == {"observation:agent_state_changed": 4, "action:change_agent_state": 1,
                                 "observation:null": 3}
    summary = log.summary()  # the file and its 18 events
    assert (summary["records_read"], summary["records_used"], summary["records_rejected"]) == (19, 11, 0)


def test_v0_wrong_initial_state() -> None:
    (trace,), log = read(RENAME)
    assert len(trace.messages) == 8
    assert [message.provenance.record for message in trace.messages[:2]] == ["events[0] id=0", "events[1] id=3"]
    assert trace.tools == ["str_replace_editor", "execute_bash", "finish"]
    codes = [message.tool_result.exit_code for message in trace.messages if message.tool_result]
    assert codes == [None, 0, None] and not any(message.failed for message in trace.messages)
    assert trace.messages[3].tool_calls[0].arguments["command"] == "mv /workspace/game_2048.py /workspace/2048.py"
    assert trace.messages[-1].tool_calls[0].name == "finish"
    assert trace.messages[0].timestamp.isoformat() == "2025-01-27T23:16:50.239610"
    assert log.summary()["records_skipped"] == 0


def test_v1_sdk_conversation_folder() -> None:
    (trace,), log = read(SDK)
    assert [message.role for message in trace.messages] == ["system", "user", "assistant", "tool", "assistant",
                                                            "tool", "user", "assistant"]
    call = trace.messages[2].tool_calls[0]
    assert (call.id, call.name, call.arguments["command"]) == ("call_KaQ0kUcBb5tbMzhxbIx9dvoZ", "terminal",
                                                               "pwd > tool_output.txt")
    result = trace.messages[3].tool_result
    assert (result.call_id, result.name, result.exit_code, result.is_error) == (call.id, "terminal", 0, False)
    assert trace.messages[4].tool_calls[0].name == "finish"
    assert trace.messages[-1].content.startswith("I executed the `pwd` command")
    assert trace.trace_id == "cd945624-03b9-487e-bdd4-018e3f531dfd" and trace.model == "openai/gpt-4o-mini"
    assert trace.tools == ["terminal", "finish", "think"]
    assert trace.outcome == {"execution_status": "finished"}
    assert trace.meta["working_dir"] == "/workspace/project/software-agent-sdk"
    first = trace.messages[0].provenance
    assert first.file.endswith("event-00000-5df490d1-98e8-4dea-9ae7-7f36c59f8ed5.json")
    assert first.record == "5df490d1-98e8-4dea-9ae7-7f36c59f8ed5"
    assert log.summary()["records_read"] == 9 and log.summary()["records_used"] == 9


def test_v1_unknown_kind_and_truncated_event_are_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "conversation"
    shutil.copytree(SDK, folder)
    events = folder / "events"
    unknown = events / "event-00008-0000-mystery.json"
    unknown.write_text(json.dumps({"id": "mystery-1", "kind": "MysteryEvent"}))
    truncated = events / "event-00009-0000-cut.json"
    truncated.write_text('{"id": "cut", "kind": "MessageEvent", "llm_mess')
    (events / "notes.txt").write_text("not an event")
    (trace,), log = read(folder)
    assert len(trace.messages) == 8
    by_file = {Path(reject.file).name: reject for reject in log.examples}
    assert by_file[unknown.name].record == "mystery-1"
    assert by_file[unknown.name].reason == "unknown event kind: MysteryEvent"
    assert "malformed JSON file" in by_file[truncated.name].reason
    assert "notes.txt" in by_file
    assert log.summary()["records_rejected"] == 3


def test_v1_events_are_read_in_numeric_order(tmp_path: Path) -> None:
    folder = tmp_path / "conversation"
    shutil.copytree(SDK, folder)
    for path in (folder / "events").iterdir():  # event-00007-... becomes event-7-..., event-00000-... event-10-...
        number = int(path.name.split("-")[1])
        path.rename(path.with_name(f"event-{number if number else 10}-{path.name.split('-', 2)[2]}"))
    (trace,), _ = read(folder)
    assert trace.messages[0].role == "user" and trace.messages[-1].role == "system"


def test_v0_truncated_file_is_one_reject(tmp_path: Path) -> None:
    copy = tmp_path / "cut.json"
    copy.write_bytes(RENAME.read_bytes()[:4000])
    traces, log = read(copy)
    assert traces == [] and log.summary()["records_rejected"] == 1 and log.examples[0].file == str(copy)


def test_v0_unknown_event_is_rejected_and_the_rest_kept(tmp_path: Path) -> None:
    events = json.loads(RENAME.read_text())
    events[2]["action"] = "teleport"
    events.insert(4, ["not", "an", "event"])
    copy = tmp_path / "unknown.json"
    copy.write_text(json.dumps(events))
    (trace,), log = read(copy)
    assert [(reject.record, reject.reason.split(":")[0]) for reject in log.examples] == [
        ("events[2] id=4", "unknown event kind"), ("events[4]", "bad event")]
    assert len(trace.messages) == 7


def synthetic_eval_output(tmp_path: Path) -> Path:
    """SYNTHETIC evaluation output: instance fields made up here, `history` the real V0 events of RENAME."""
    history = json.loads(RENAME.read_text())
    lines = [
        {"instance_id": "synthetic__rename-1", "instruction": "Please rename game_2048.py to 2048.py",
         "metadata": {"agent_class": "CodeActAgent", "llm_config": {"model": "anthropic/claude-3-5-sonnet"}},
         "history": history, "metrics": {"accumulated_cost": 0.25}, "test_result": {"resolved": True},
         "error": None},
        {"instance_id": "synthetic__broken-2", "history": "not a list"},
    ]
    path = tmp_path / "output.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + '\n{"instance_id": "synthetic__cut-3", "hist')
    return path


def test_synthetic_eval_output_jsonl(tmp_path: Path) -> None:
    path = synthetic_eval_output(tmp_path)
    assert openhands.detect(path)
    (trace,), log = read(path)
    assert trace.trace_id == "synthetic__rename-1" and trace.model == "anthropic/claude-3-5-sonnet"
    assert trace.outcome == {"test_result": {"resolved": True}} and trace.meta["metrics"]["accumulated_cost"] == 0.25
    assert len(trace.messages) == 8 and trace.messages[1].provenance.record == "history[1] id=3"
    assert trace.messages[1].provenance.line == 1
    assert [(reject.line, reject.reason.split(":")[0]) for reject in log.examples] == [
        (2, "not an OpenHands evaluation record"), (3, "malformed JSON")]


def test_ingest_yields_the_sdk_folder_whole() -> None:
    log = IngestLog()
    traces = list(ingest([TRACES / "openhands"], log))
    assert [Path(trace.source).name for trace in traces] == [GUI.name, RENAME.name, SDK.name]
    assert log.summary()["records_rejected"] == 0


def test_detect_only_openhands_samples() -> None:
    detected = {path.relative_to(TRACES).parts[0] for path in expand([TRACES]) if openhands.detect(path)}
    assert detected == {"openhands"}
    assert all(openhands.detect(path) for path in (GUI, RENAME, SDK))
    assert not openhands.detect(SDK / "base_state.json") and not openhands.detect(SDK / "events")
    assert not any(openhands.detect(path) for path in (SDK / "events").iterdir())
