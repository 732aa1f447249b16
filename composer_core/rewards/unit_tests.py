"""Unit-test rewards for Python code completions, run in the sandbox: the pass fraction as the reward, and the first
failing test's message as the feedback that the self-distillation teacher receives.

The code: the last ```python (or ```py) fenced block of the completion, else its last fenced block, else the whole
completion; an unclosed block (a generation cut at max length) counts up to the end.

The tests (a dataset column, `tests` by default; VeRL's `ground_truth`), one of:
- a list of Python test snippets, each one test, typically an `assert` (`["assert add(1, 2) == 3", ...]`); they run
  in order in one sandboxed process, after the solution, in its namespace (its module name is `solution`, so an
  `if __name__ == "__main__":` block does not run);
- a dict `{"assert_case": [...]}` (the SandboxFusion/VeRL form of the same);
- a dict `{"inputs": [...], "outputs": [...]}`: stdin/stdout cases (codecontests, APPS), each its own run of the
  solution as a program; it passes when its stdout equals the output up to trailing newlines (as VeRL compares);
- a JSON text of one of these (parquet columns often hold JSON); a plain string is one test snippet.

The assert tests share the solution's process: code written to cheat (exiting early, patching `AssertionError`,
printing fake results) can fool them; stdin/stdout cases are judged outside the process. See docs/sandbox.md.

Use from TRL (`unit_test_reward`, one RewardResult per completion, or floats with `with_feedback=False`) and from
VeRL (`compute_score`, the custom_reward_function signature, returning {"score", "feedback", "passed", "total"}).
Both take the sandbox's settings as keyword arguments (`sandbox={...}` and overrides such as `timeout_s`), which a
config's `reward[].params` (TRL) or `custom_reward_function.reward_kwargs` (VeRL) binds.
"""

# no `from __future__ import annotations`: VeRL loads a custom_reward_function file without registering it in
# sys.modules, and dataclasses with string annotations then fail to build (they look their module up there)
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from composer_core.errors import ConfigError
from composer_core.sandbox.protocol import SandboxRequest, SandboxResult
from composer_core.sandbox.runner import sandbox_for
from composer_core.sandbox.settings import SandboxConfig
from composer_core.tasks.arithmetic import RewardResult

FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
PYTHON_TAGS = {"python", "py", "python3"}
EXCERPT = 300  # characters of a test, an input or an output quoted in feedback
HARNESS = """\
import json, sys, traceback

MARK = {mark!r}
out = sys.stdout


def report(index, message=None):
    out.write(MARK + json.dumps([index, message]) + "\\n")
    out.flush()


def describe(error):
    where = [frame for frame in traceback.extract_tb(error.__traceback__) if frame.filename == "solution.py"]
    line = f" (solution.py line {{where[-1].lineno}})" if where else ""
    return "".join(traceback.format_exception_only(type(error), error)).strip() + line


namespace = {{"__name__": "solution"}}
try:
    exec(compile(open("solution.py").read(), "solution.py", "exec"), namespace)
except BaseException as error:
    report(-1, describe(error))
    raise SystemExit(0)
report(-1)
for index, test in enumerate(json.load(open("tests.json"))):
    try:
        exec(compile(test, f"test {{index + 1}}", "exec"), namespace)
    except BaseException as error:
        report(index, describe(error))
    else:
        report(index)
"""


@dataclass(frozen=True)
class AssertTests:
    """Test snippets run after the solution, in its process."""

    snippets: tuple[str, ...]


@dataclass(frozen=True)
class StdioTests:
    """stdin -> expected stdout cases, each a run of the solution as a program."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


Tests = AssertTests | StdioTests


def parse_tests(tests: Any) -> Tests:
    """The tests of one problem in any of the forms of the module docstring; anything else is a ConfigError."""
    if isinstance(tests, AssertTests | StdioTests):
        return tests
    if hasattr(tests, "tolist"):  # a numpy array or scalar from a parquet/Arrow column
        tests = tests.tolist()
    if isinstance(tests, str):
        try:
            decoded = json.loads(tests)
        except json.JSONDecodeError:
            return AssertTests((tests,))
        return parse_tests(decoded) if isinstance(decoded, list | dict) else AssertTests((tests,))
    if isinstance(tests, Mapping):
        if tests.get("fn_name"):
            raise ConfigError("tests with fn_name (call-based cases) are not supported; give assert tests "
                              "(assert_case) or stdin/stdout cases (inputs/outputs)")
        if isinstance(tests.get("assert_case"), list):
            return parse_tests(tests["assert_case"])
        if "inputs" in tests and "outputs" in tests:
            inputs, outputs = list(tests["inputs"]), list(tests["outputs"])
            if len(inputs) != len(outputs) or not inputs:
                raise ConfigError(f"stdin/stdout tests need as many outputs as inputs, at least one: got "
                                  f"{len(inputs)} inputs and {len(outputs)} outputs")
            return StdioTests(tuple(map(str, inputs)), tuple(map(str, outputs)))
        raise ConfigError(f"tests given as a dict need 'assert_case' or 'inputs' and 'outputs'; got keys "
                          f"{sorted(tests)}")
    if isinstance(tests, list | tuple) and tests and all(isinstance(test, str) for test in tests):
        return AssertTests(tuple(tests))
    raise ConfigError(f"tests must be a non-empty list of test snippets, a dict of assert_case or inputs/outputs, "
                      f"or a JSON text of one; got {type(tests).__name__} {str(tests)[:80]!r}")


def completion_text(completion: Any) -> str:
    """A TRL completion as text: a string, or the last message of a chat (its content or its text parts)."""
    if isinstance(completion, str):
        return completion
    if not completion:
        return ""
    content = completion[-1].get("content") or ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    return str(content)


def extract_code(completion: str) -> str:
    """The last ```python block, else the last fenced block, else the whole completion."""
    blocks = FENCE.findall(completion)
    if not blocks:
        return completion
    python = [code for tag, code in blocks if tag.lower() in PYTHON_TAGS]
    return (python or [code for _, code in blocks])[-1]


def _excerpt(text: str) -> str:
    text = text.strip()
    return text if len(text) <= EXCERPT else text[:EXCERPT] + "..."


class Scorer:
    """Turns completions and their tests into sandbox requests, and the results into RewardResults."""

    def __init__(self, settings: SandboxConfig) -> None:
        self.settings = settings

    def requests(self, code: str, tests: Tests) -> tuple[list[SandboxRequest], str | None]:
        """The runs one completion needs, and (assert tests) the mark of the harness's result lines."""
        if isinstance(tests, StdioTests):
            return [SandboxRequest(code=code, stdin=stdin) for stdin in tests.inputs], None
        mark = f"@@composer-result-{secrets.token_hex(8)}@@"
        files = {"solution.py": code, "tests.json": json.dumps(list(tests.snippets))}
        return [SandboxRequest(code=HARNESS.format(mark=mark), files=files)], mark

    def score(self, tests: Tests, results: Sequence[SandboxResult], mark: str | None) -> RewardResult:
        if isinstance(tests, StdioTests):
            return self.score_stdio(tests, results)
        return self.score_asserts(tests, results[0], mark or "")

    def score_asserts(self, tests: AssertTests, result: SandboxResult, mark: str) -> RewardResult:
        reports: dict[int, str | None] = {}
        for line in result.stdout.splitlines():
            if line.startswith(mark):
                index, message = json.loads(line[len(mark):])
                reports[index] = message
        total = len(tests.snippets)
        passed = sum(1 for index in range(total) if index in reports and reports[index] is None)
        if -1 not in reports:
            return RewardResult(0.0, f"Your code did not finish loading: {self.ended(result)}")
        if reports[-1] is not None:
            return RewardResult(0.0, f"Your code failed before any test ran: {reports[-1]}")
        for index, snippet in enumerate(tests.snippets):
            if index not in reports:
                return RewardResult(passed / total, f"Test {index + 1} of {total} did not finish: "
                                                    f"{self.ended(result)}\nThe test:\n{_excerpt(snippet)}")
            if reports[index] is not None:
                return RewardResult(passed / total, f"Test {index + 1} of {total} failed: {reports[index]}\n"
                                                    f"The test:\n{_excerpt(snippet)}")
        return RewardResult(1.0, None)

    def score_stdio(self, tests: StdioTests, results: Sequence[SandboxResult]) -> RewardResult:
        total, feedback, passed = len(results), None, 0
        for index, (stdin, expected, result) in enumerate(zip(tests.inputs, tests.outputs, results, strict=True)):
            if result.ok and result.stdout.rstrip("\n") == expected.rstrip("\n"):
                passed += 1
                continue
            if feedback is None:
                problem = (f"expected output:\n{_excerpt(expected)}\nyour output:\n{_excerpt(result.stdout)}"
                           if result.ok else self.ended(result))
                feedback = f"Test {index + 1} of {total} failed on input:\n{_excerpt(stdin)}\n{problem}"
        return RewardResult(passed / total, feedback)

    def ended(self, result: SandboxResult) -> str:
        """How a run that did not report ended, in words for the student's teacher."""
        if result.stopped == "timeout":
            return f"it was stopped after the time limit of {self.settings.timeout_s} s"
        if result.stopped == "output_limit":
            return f"it printed more than {self.settings.max_output_bytes} bytes and was stopped"
        if result.stopped == "memory":
            return f"it ran out of memory (limit {self.settings.memory_mb} MiB)"
        last = result.stderr.strip().splitlines()[-1:] or [f"exit code {result.exit_code}"]
        return f"it exited with {_excerpt(last[0])}"


def score_completions(codes: Sequence[str], tests: Sequence[Any], settings: SandboxConfig | Mapping[str, Any] | None
                      = None, **overrides: Any) -> list[RewardResult]:
    """One RewardResult per code, each against its tests, all runs sharing the bounded run slots."""
    if len(codes) != len(tests):
        raise ConfigError(f"{len(codes)} completions but {len(tests)} test sets: give one test set per completion")
    sandbox = sandbox_for(settings, **overrides)
    scorer = Scorer(sandbox.config)
    parsed = [parse_tests(test) for test in tests]
    plans = [scorer.requests(code, test) for code, test in zip(codes, parsed, strict=True)]
    results = sandbox.run_many([request for requests, _ in plans for request in requests])
    scored, start = [], 0
    for test, (requests, mark) in zip(parsed, plans, strict=True):
        scored.append(scorer.score(test, results[start:start + len(requests)], mark))
        start += len(requests)
    return scored


def unit_test_reward(prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), *,
                     tests_column: str = "tests", with_feedback: bool = True,
                     sandbox: SandboxConfig | Mapping[str, Any] | None = None, max_concurrency: int | None = None,
                     timeout_s: float | None = None, memory_mb: int | None = None, **columns: Any) -> list[Any]:
    """TRL reward function: per completion, the fraction of its tests (dataset column `tests_column`) that pass,
    as a RewardResult with the first failure as feedback (floats with `with_feedback=False`)."""
    if tests_column not in columns:
        raise ConfigError(f"unit_test_reward needs the dataset column {tests_column!r} with each problem's tests; "
                          f"columns: {sorted(columns)}")
    codes = [extract_code(completion_text(completion)) for completion in completions]
    results = score_completions(codes, list(columns[tests_column]), sandbox, max_concurrency=max_concurrency,
                                timeout_s=timeout_s, memory_mb=memory_mb)
    return results if with_feedback else [result.reward for result in results]


def compute_score(data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
                  extra_info: Any = None, *, sandbox: SandboxConfig | Mapping[str, Any] | None = None,
                  max_concurrency: int | None = None, timeout_s: float | None = None,
                  memory_mb: int | None = None, **_: Any) -> dict[str, Any]:
    """VeRL custom_reward_function: the pass fraction of `solution_str` against the tests in `ground_truth` as
    "score", with "feedback" (the first failure; "" when all pass), "passed" and "total" as extra outputs."""
    tests = parse_tests(ground_truth)
    [result] = score_completions([extract_code(solution_str)], [tests], sandbox, max_concurrency=max_concurrency,
                                 timeout_s=timeout_s, memory_mb=memory_mb)
    total = len(tests.snippets) if isinstance(tests, AssertTests) else len(tests.inputs)
    return {"score": result.reward, "feedback": result.feedback or "", "passed": round(result.reward * total),
            "total": total}
