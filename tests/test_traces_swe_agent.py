"""The SWE-agent ingester on the real `.traj` files in shared/data/traces/swe_agent (0.x and 1.x)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared_data import TRACES

from composer_core.traces import swe_agent
from composer_core.traces.contracts import Trace
from composer_core.traces.formats import IngestLog
from composer_core.traces.ingest import expand

PYDICOM = TRACES / "swe_agent" / "SWE-agent__SWE-agent__pydicom__pydicom-1458.traj"
V1 = TRACES / "swe_agent" / "SWE-agent__SWE-agent__6e44b9__sweagenttestrepo-1c2844.traj"

pytestmark = pytest.mark.skipif(not TRACES.is_dir(), reason=f"shared trace samples not found at {TRACES}")


def ingest(path: Path) -> tuple[list[Trace], IngestLog]:
    log = IngestLog()
    return list(swe_agent.read(path, log)), log


def test_pydicom_0x_traceback_three_rejected_edits_then_the_fix() -> None:
    (trace,), log = ingest(PYDICOM)
    tools = [message for message in trace.messages if message.role == "tool"]
    failed = [message.provenance.record for message in tools if message.failed]
    assert failed == ["history[8]", "history[14]", "history[16]", "history[18]"]
    assert tools[2].tool_result.output.startswith("Traceback (most recent call last):")
    for message in trace.messages[14:19:2]:
        assert message.tool_result.name == "edit"
        assert message.tool_result.output.startswith("Your proposed edit has introduced new syntax error(s)")
    fix = trace.messages[20]
    assert fix.provenance.record == "history[20]" and fix.tool_result.name == "edit" and not fix.failed
    assert trace.messages[22].tool_result.output.startswith("Script completed successfully, no errors.")
    assert log.summary()["records_rejected"] == 0


def test_pydicom_0x_messages_commands_and_outcome() -> None:
    (trace,), log = ingest(PYDICOM)
    assert len(trace.messages) == 27  # 26 history messages + the submit observation from trajectory[11]
    assert [message.role for message in trace.messages[:4]] == ["system", "user", "user", "assistant"]
    assert trace.messages[1].content.startswith("Here is a demonstration")  # the demo stays a user message
    assert trace.task.startswith("We're currently solving the following issue within our repository.")
    calls = [call for message in trace.messages for call in message.tool_calls]
    assert [call.name for call in calls] == ["create", "edit", "bash", "find_file", "open", "edit", "edit", "edit",
                                             "edit", "bash", "bash", "submit"]
    assert calls[2].arguments == {"command": "python reproduce_bug.py"}
    last = trace.messages[-1]
    assert last.provenance.record == "trajectory[11]" and last.tool_result.name == "submit"
    assert trace.outcome["exit_status"] == "submitted"
    assert trace.outcome["submission"].startswith("\ndiff --git a/pydicom/pixel_data_handlers/numpy_handler.py")
    assert trace.meta["model_stats"]["api_calls"] == 12
    assert trace.meta["working_dir"] == "/pydicom__pydicom"  # from the JSON-text `state` of 0.x
    assert trace.meta["final_state"]["open_file"].endswith("pixel_data_handlers/numpy_handler.py")
    assert "bash" in trace.tools and "find_file" in trace.tools
    summary = log.summary()  # the file, 26 history messages, 12 steps (11 already in the history)
    assert (summary["records_read"], summary["records_used"], summary["records_skipped"]) == (39, 28, 11)
    assert all(message.provenance.file == str(PYDICOM) and message.provenance.format == "swe_agent"
               for message in trace.messages)


def test_v1_function_calling() -> None:
    (trace,), log = ingest(V1)
    assert trace.model == "gpt-4o"
    assert [message.role for message in trace.messages] == ["system", "user"] + ["assistant", "tool"] * 5
    first_call = trace.messages[2].tool_calls[0]
    assert (first_call.id, first_call.name, first_call.arguments) == (
        "call_fJuazlMUN5fQDQ73G6XSpYpx", "find_file", {"file_name": "missing_colon.py"})
    assert trace.messages[3].tool_result.call_id == "call_fJuazlMUN5fQDQ73G6XSpYpx"
    assert trace.messages[9].tool_result.output.startswith("8.2")
    submit = trace.messages[10]  # the last step is only in the trajectory
    assert submit.provenance.record == "trajectory[4]" and submit.tool_calls[0].name == "submit"
    assert not any(message.failed for message in trace.messages)
    assert {"bash", "edit", "submit"} <= set(trace.tools)
    assert trace.outcome["exit_status"] == "submitted"
    assert trace.meta["final_state"] == {"open_file": "/SWE-agent__test-repo/tests/missing_colon.py",
                                         "working_dir": "/SWE-agent__test-repo"}
    assert log.summary()["records_skipped"] == 4


def test_repr_strings_of_state_and_tool_call_ids_are_parsed(tmp_path: Path) -> None:
    data = json.loads(V1.read_text())
    data["trajectory"][0]["state"] = "{'open_file': 'n/a', 'working_dir': '/repo'}"
    data["history"][2]["tool_calls"] = repr(data["history"][2]["tool_calls"])
    data["history"][3]["tool_call_ids"] = "['call_fJuazlMUN5fQDQ73G6XSpYpx']"
    copy = tmp_path / "repr.traj"
    copy.write_text(json.dumps(data))
    (trace,), _ = ingest(copy)
    assert trace.meta["working_dir"] == "/repo"
    assert trace.messages[2].tool_calls[0].name == "find_file"
    assert trace.messages[3].tool_result.call_id == "call_fJuazlMUN5fQDQ73G6XSpYpx"


def test_no_history_builds_the_trace_from_the_trajectory(tmp_path: Path) -> None:
    data = json.loads(PYDICOM.read_text())
    del data["history"]
    copy = tmp_path / "steps.traj"
    copy.write_text(json.dumps(data))
    (trace,), log = ingest(copy)
    assert [message.role for message in trace.messages] == ["assistant", "tool"] * 12
    assert [message.failed for message in trace.messages[1::2]].count(True) == 4
    assert log.summary()["records_used"] == 13


def test_truncated_file_is_one_reject(tmp_path: Path) -> None:
    copy = tmp_path / "cut.traj"
    copy.write_bytes(PYDICOM.read_bytes()[:5000])
    traces, log = ingest(copy)
    assert traces == [] and log.summary()["records_rejected"] == 1
    assert log.examples[0].file == str(copy) and "malformed JSON file" in log.examples[0].reason


def test_bad_history_message_is_rejected_and_the_rest_kept(tmp_path: Path) -> None:
    data = json.loads(V1.read_text())
    data["history"][4]["role"] = "narrator"
    data["history"][6]["tool_calls"] = "not a list ["
    copy = tmp_path / "bad.traj"
    copy.write_text(json.dumps(data))
    (trace,), log = ingest(copy)
    assert [reject.record for reject in log.examples] == ["history[4]", "history[6]"]
    assert log.summary()["records_rejected"] == 2
    assert trace.messages[-1].provenance.record == "trajectory[4]"


def test_not_a_trajectory_is_rejected(tmp_path: Path) -> None:
    copy = tmp_path / "list.traj"
    copy.write_text('{"trajectory": 3}')
    traces, log = ingest(copy)
    assert traces == [] and "not a SWE-agent trajectory" in log.examples[0].reason


def test_detect_only_swe_agent_samples() -> None:
    detected = {path.relative_to(TRACES).parts[0] for path in expand([TRACES]) if swe_agent.detect(path)}
    assert detected == {"swe_agent"}
    assert all(swe_agent.detect(path) for path in (TRACES / "swe_agent").iterdir())
