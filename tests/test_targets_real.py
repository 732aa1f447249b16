"""Error turns, hints and targets on the real agent traces of the shared data set."""

from __future__ import annotations

import pytest
from shared_data import TRACES

from composer_core.traces.contracts import Trace
from composer_core.traces.failures import find_error_turns
from composer_core.traces.formats import IngestLog
from composer_core.traces.hints import HintRequest, rule_hints
from composer_core.traces.ingest import ingest
from composer_core.traces.targets import TargetReport, build_targets

pytestmark = pytest.mark.skipif(not TRACES.is_dir(), reason=f"the shared trace samples are not at {TRACES}")


def first_trace(relative: str) -> Trace:
    return next(iter(ingest([TRACES / relative], IngestLog())))


def test_swe_agent_traceback_and_three_rejected_edits_then_the_fix() -> None:
    trace = first_trace("swe_agent/SWE-agent__SWE-agent__pydicom__pydicom-1458.traj")
    turns = find_error_turns(trace)
    assert [(turn.target_index, turn.failure.kind) for turn in turns] == [
        (7, "tool_error"), (13, "edit_rejected"), (15, "edit_rejected"), (17, "edit_rejected")]
    assert turns[0].failure.detail.startswith("AttributeError: Unable to convert the pixel data")
    assert {turn.recovery_index for turn in turns[1:]} == {19}  # the edit that finally applies


def test_claude_code_permission_denial_hint() -> None:
    trace = first_trace("claude_code/d-kimuson__claude-code-viewer__1af7fc5e-8455-4414-9ccd-011d40f70b2a.jsonl")
    (turn,) = find_error_turns(trace)
    assert turn.failure.kind == "permission_denied"
    hints = rule_hints(HintRequest(trace, turn))
    assert hints[1].text == "That action is not permitted here. Using `Write` this way was denied."


def test_mini_swe_agent_exit_codes_give_command_hints() -> None:
    trace = first_trace("mini_swe_agent/SWE-agent__mini-swe-agent__test_output.v1.13.4.json")
    report = TargetReport()
    targets = list(build_targets(trace, report, level=2))
    assert [target.failure.exit_code for target in targets] == [1, 1]
    assert targets[1].hint.text == ("This command fails (exit code 1). "
                                    "It reports: ZeroDivisionError: division by zero.")
    assert "No such file or directory" in targets[0].hint.text
    for target in targets:
        assert target.teacher_context[-1] == {"role": "user", "content": f"Hint: {target.hint.text}"}
        assert target.provenance.file.endswith("test_output.v1.13.4.json")
    assert report.summary()["by_kind"] == {"nonzero_exit": 2}


def test_targets_over_every_real_trace_are_accounted_for() -> None:
    report = TargetReport()
    targets = [target for trace in ingest([TRACES], IngestLog()) for target in build_targets(trace, report)]
    assert report.targets == len(targets) == report.error_turns - report.no_context_turns > 20
    assert all(target.student_context for target in targets)  # something to distil, and to replay, from
    assert set(report.by_kind) >= {"edit_rejected", "nonzero_exit", "permission_denied", "test_failure"}
    assert all(not target.empty_target for target in targets)  # thinking is kept by default
