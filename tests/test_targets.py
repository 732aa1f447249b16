"""Error-turn detection, rule hints and self-distillation targets on constructed traces."""

import pytest

from composer_core.errors import ConfigError
from composer_core.traces.contracts import Message, Provenance, ToolCall, ToolResult, Trace
from composer_core.traces.failures import classify, find_error_turns
from composer_core.traces.hints import HintRequest, rule_hints
from composer_core.traces.targets import TargetReport, build_targets

WHERE = Provenance(format="test", file="constructed", line=1)


def user(text: str) -> Message:
    return Message(role="user", content=text, provenance=WHERE)


def call(name: str, call_id: str, thinking: str | None = None, text: str = "", **arguments: str) -> Message:
    return Message(role="assistant", content=text, thinking=thinking, provenance=WHERE,
                   tool_calls=[ToolCall(id=call_id, name=name, arguments=arguments)])


def result(call_id: str, output: str, *, is_error: bool = False, exit_code: int | None = None) -> Message:
    return Message(role="tool", provenance=WHERE,
                   tool_result=ToolResult(call_id=call_id, output=output, is_error=is_error, exit_code=exit_code))


def trace(*messages: Message, tools: tuple[str, ...] = ()) -> Trace:
    return Trace(trace_id="t1", format="test", source="constructed", messages=list(messages), tools=list(tools))


TEST_FAILURE = trace(
    user("fix the bug"),
    call("bash", "c1", command="pytest"),
    result("c1", "tests/test_x.py F\nE   AssertionError: assert 2 == 3\n=== 1 failed in 0.1s ===", exit_code=1),
    call("edit", "c2", thinking="the off-by-one", path="x.py"),
    result("c2", "ok"),
)


def test_classify_kinds() -> None:
    assert classify(result("a", "Error: No such tool available: Grep", is_error=True)).kind == "unknown_tool"
    assert classify(result("a", "bash: foo: command not found", exit_code=127)).kind == "unknown_tool"
    assert classify(result("a", "SEARCH/REPLACE block failed to match")).kind == "edit_rejected"
    assert classify(result("a", "ls: cannot access 'x'", exit_code=2)).kind == "nonzero_exit"
    assert classify(result("a", "The user doesn't want to proceed", is_error=True)).kind == "permission_denied"
    assert classify(result("a", "all good")) is None
    failure = classify(TEST_FAILURE.messages[2])
    assert failure.kind == "test_failure" and "assert 2 == 3" in failure.detail


def test_error_turn_needs_a_recovery() -> None:
    turns = find_error_turns(TEST_FAILURE)
    assert [(turn.target_index, turn.failure_index, turn.recovery_index) for turn in turns] == [(1, 2, 3)]
    unrecovered = trace(*TEST_FAILURE.messages[:3])
    assert find_error_turns(unrecovered) == []


def test_unknown_tool_hint_lists_the_tools_on_offer() -> None:
    session = trace(user("search"), call("grep", "c1", pattern="x"),
                    result("c1", "Error: No such tool available: grep", is_error=True),
                    call("Grep", "c2", pattern="x"), result("c2", "x.py:1"), tools=("Grep", "Read", "Bash"))
    turn = find_error_turns(session)[0]
    hints = rule_hints(HintRequest(session, turn))
    assert [hint.level for hint in hints] == [1, 2, 3]
    assert hints[0].text == "`grep` is not an available tool."
    assert "Available tools: Bash, Grep, Read." in hints[1].text
    assert hints[2].text.startswith(hints[1].text)


def test_target_contexts_differ_only_by_the_hint() -> None:
    report = TargetReport()
    (target,) = build_targets(TEST_FAILURE, report, level=2)
    assert target.teacher_context[:-1] == target.student_context
    assert target.teacher_context[-1] == {"role": "user", "content": f"Hint: {target.hint.text}"}
    assert "Failing check: E   AssertionError: assert 2 == 3" in target.hint.text
    assert target.target["tool_calls"][0]["function"]["name"] == "bash"
    assert target.recovery["tool_calls"][0]["function"]["name"] == "edit"
    assert report.summary()["by_kind"] == {"test_failure": 1}


def test_thinking_only_targets_are_kept_by_default_and_reported_when_stripped() -> None:
    thinking_only = Message(role="assistant", thinking="I should run the tests", provenance=WHERE)
    session = trace(user("go"), thinking_only, result("c9", "Traceback (most recent call last):\nValueError: x",
                                                      is_error=True), call("bash", "c2"), result("c2", "ok"))
    kept = TargetReport()
    (target,) = build_targets(session, kept)
    assert not target.empty_target and target.target["reasoning_content"] == "I should run the tests"
    assert (kept.thinking_only_targets, kept.empty_targets) == (1, 0)
    stripped = TargetReport()
    (target,) = build_targets(session, stripped, strip_thinking=True)
    assert target.empty_target and "reasoning_content" not in target.target
    assert stripped.empty_targets == 1


def test_unknown_provider_and_missing_level() -> None:
    with pytest.raises(ConfigError, match="unknown hint provider 'llm'"):
        list(build_targets(TEST_FAILURE, TargetReport(), provider="llm"))
    with pytest.raises(ConfigError, match="gave no level-4 hint"):
        list(build_targets(TEST_FAILURE, TargetReport(), level=4))
