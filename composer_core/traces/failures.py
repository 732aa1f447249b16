"""Error-turn detection: a failed tool call, a non-zero exit or a failing test, followed by a recovery.

The assistant message whose call failed is the *target*: the message a hint should improve. A failure is
only an error turn when the agent later recovers (a later assistant action whose results do not fail):
without a recovery there is no evidence of what the better action looked like.
"""

from __future__ import annotations

import re
from typing import Literal

from composer_core.traces.contracts import Contract, Message, Trace

FailureKind = Literal["unknown_tool", "permission_denied", "edit_rejected", "test_failure", "nonzero_exit",
                      "tool_error"]

PATTERNS: tuple[tuple[FailureKind, re.Pattern[str]], ...] = (
    ("unknown_tool", re.compile(r"no such tool|unknown tool|tool .{0,60}(not found|does not exist|is not available)"
                                r"|command not found", re.I)),
    ("permission_denied", re.compile(r"permission (denied|to use)|not permitted|user (doesn't|does not) want"
                                     r"|requested permissions? to", re.I)),
    ("edit_rejected", re.compile(r"did not conform to the edit format|failed to match|edit .{0,40}rejected"
                                 r"|proposed edit has introduced|old_string .{0,40}not found|string to replace "
                                 r"(was )?not found", re.I)),
    ("test_failure", re.compile(r"^FAILED |\b\d+ failed\b|AssertionError|^E\s{3}|FAIL: test", re.M)),
)
TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
# A line where an interface asks the user something and the answer typed after it ("Attempt to fix lint
# errors? [Y/n] y", "(y/n/instructions) n", "Continue? [y/N]"): a conversation with the user, never evidence
# of a failure nor the detail that names one, whatever the question.
_CHOICES = r"(?:\[[^\]\n]{1,40}\]|\([^)\n]{1,40}\))"
_ANSWER = r"(?:y|n|yes|no|a|all|s|skip|d|don't ask again)"
PROMPT_LINE = re.compile(rf"^[^\n]*\?[ \t]*(?:{_CHOICES}[ \t]*{_ANSWER}?|{_ANSWER})[ \t]*$"
                         rf"|^[ \t]*[\[(][yn]/[^\])\n]{{0,40}}[\])][ \t]*{_ANSWER}?[ \t]*$", re.M | re.I)
EXCEPTION_LINE = re.compile(r"^\s*(?:[A-Za-z_]\w*\.)*\w*(?:Error|Exception)\b.*$", re.M)
TAG = re.compile(r"</?[A-Za-z_][\w-]*>")
DETAIL_CHARS = 400


class Failure(Contract):
    """What went wrong: the kind, a short detail (the line that says it), the tool and exit code."""

    kind: FailureKind
    detail: str
    tool: str | None = None
    exit_code: int | None = None


class ErrorTurn(Contract):
    """Indices into `trace.messages`: the target assistant message, the failing tool message, the recovery."""

    trace_id: str
    target_index: int
    failure_index: int
    recovery_index: int
    failure: Failure


def classify(message: Message) -> Failure | None:
    """The failure a tool message reports, or None when it reports success. Prompts to the user and their
    answers (`PROMPT_LINE`) are left out before the output is read."""
    result = message.tool_result
    if result is None:
        return None
    output = without_prompts(result.output)
    for kind, pattern in PATTERNS:
        match = pattern.search(output)
        if match and (result.failed or kind in ("unknown_tool", "test_failure", "edit_rejected")):
            return Failure(kind=kind, detail=_detail(output, match.start()), tool=result.name,
                           exit_code=result.exit_code)
    if result.failed or TRACEBACK.search(output):
        kind: FailureKind = "nonzero_exit" if result.exit_code not in (None, 0) else "tool_error"
        return Failure(kind=kind, detail=_detail(output, _last_error_line(output)), tool=result.name,
                       exit_code=result.exit_code)
    return None


def without_prompts(output: str) -> str:
    """The output without the lines that ask the user something (and the answers typed after them)."""
    return PROMPT_LINE.sub("", output)


def _detail(output: str, position: int) -> str:
    """The line at `position`, without markup tags, trimmed."""
    start = output.rfind("\n", 0, position) + 1
    end = output.find("\n", position)
    return _clean(output[start:] if end == -1 else output[start:end])[:DETAIL_CHARS]


def _clean(line: str) -> str:
    return TAG.sub("", line).strip()


def _last_error_line(output: str) -> int:
    """Position of the line that names the error: a traceback's exception line (the first unindented line after
    its frames, `pkg.module.SomeError: message` included), else the last line naming an error or exception,
    else the last line with text."""
    tracebacks = list(TRACEBACK.finditer(output))
    if tracebacks:
        line_end = output.find("\n", tracebacks[-1].end())
        after = len(output) if line_end == -1 else line_end
        for line in re.finditer(r"^\S.*$", output[after:], re.M):
            if _clean(line.group()):
                return after + line.start()
    matches = list(EXCEPTION_LINE.finditer(output))
    if matches:
        return matches[-1].start()
    lines = [match for match in re.finditer(r"^.*$", output, re.M) if _clean(match.group())]
    return lines[-1].start() if lines else 0


def issuer(trace: Trace, tool_index: int) -> int | None:
    """Index of the assistant message that made the call a tool message answers."""
    call_id = trace.messages[tool_index].tool_result.call_id if trace.messages[tool_index].tool_result else None
    fallback = None
    for index in range(tool_index - 1, -1, -1):
        message = trace.messages[index]
        if message.role != "assistant":
            continue
        if call_id is None or any(call.id == call_id for call in message.tool_calls):
            return index
        fallback = index if fallback is None else fallback
    return fallback


def recovery(trace: Trace, after: int) -> int | None:
    """The first later assistant action whose tool results all succeed (or that ends without a tool call)."""
    messages = trace.messages
    for index in range(after + 1, len(messages)):
        if messages[index].role != "assistant":
            continue
        results = []
        for later in messages[index + 1:]:
            if later.role != "tool":
                break
            results.append(later)
        if all(classify(result) is None for result in results):
            return index
    return None


def find_error_turns(trace: Trace) -> list[ErrorTurn]:
    """Every failure in the trace that an assistant message caused and a later action recovered from.

    Several failing results of one assistant message give one error turn (the first failure).
    """
    turns: list[ErrorTurn] = []
    seen_targets: set[int] = set()
    for index, message in enumerate(trace.messages):
        failure = classify(message) if message.role == "tool" else None
        if failure is None:
            continue
        target = issuer(trace, index)
        if target is None or target in seen_targets:
            continue
        recovered = recovery(trace, index)
        if recovered is None:
            continue
        seen_targets.add(target)
        turns.append(ErrorTurn(trace_id=trace.trace_id, target_index=target, failure_index=index,
                               recovery_index=recovered, failure=failure))
    return turns
