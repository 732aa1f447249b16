"""Unit-test rewards in the local sandbox: pass fractions, the first failure as feedback, TRL and VeRL call forms,
and the bounded number of runs at once."""

from __future__ import annotations

import threading
import time

import pytest

from composer_core.rewards.unit_tests import compute_score, score_completions, unit_test_reward
from composer_core.sandbox import Limits, SandboxConfig, SandboxRequest, SandboxResult
from composer_core.sandbox.local import SandboxUnavailable, check_unshare, sandbox_processes
from composer_core.sandbox.runner import Sandbox
from composer_core.tasks.arithmetic import RewardResult

TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4, 'two and two'"]
FAST = {"timeout_s": 3.0, "memory_mb": 256}


@pytest.fixture(scope="module", autouse=True)
def local_sandbox() -> None:
    try:
        check_unshare()
    except SandboxUnavailable as error:
        pytest.skip(f"the local sandbox cannot run here: {error}")
    yield
    assert sandbox_processes() == []


def _python(code: str) -> str:
    return f"Here it is:\n```python\n{code}\n```\n"


def test_pass_fraction_and_first_failure_for_each_completion() -> None:
    completions = [_python("def add(a, b):\n    return a + b"),
                   [{"role": "assistant", "content": _python("def add(a, b):\n    return a * b if a > 1 else a + b")}],
                   _python("def add(a, b):\n    return a + b if a > 0 else a - b"),
                   _python("def add(a b):"),
                   "I cannot solve this."]
    results = unit_test_reward(prompts=["p"] * 5, completions=completions, tests=[TESTS] * 5, sandbox=FAST)
    assert all(isinstance(result, RewardResult) for result in results)
    assert [result.reward for result in results] == pytest.approx([1.0, 1.0, 2 / 3, 0.0, 0.0])
    assert results[0].feedback is None
    assert results[2].feedback.startswith("Test 2 of 3 failed: AssertionError") and "add(-1, 1)" in results[2].feedback
    assert "SyntaxError" in results[3].feedback and "before any test ran" in results[3].feedback


def test_a_test_that_hangs_keeps_the_earlier_passes() -> None:
    code = "def add(a, b):\n    while a == 2:\n        pass\n    return a + b"
    started = time.monotonic()
    [result] = unit_test_reward(completions=[_python(code)], tests=[TESTS], sandbox=FAST, timeout_s=1.0)
    assert result.reward == pytest.approx(2 / 3)
    assert result.feedback.startswith("Test 3 of 3 did not finish") and "time limit of 1.0 s" in result.feedback
    assert time.monotonic() - started < 5


def test_assertion_messages_and_solution_lines_reach_the_feedback() -> None:
    code = "def add(a, b):\n    return a + b + (1 if a == 2 else 0)\n\ndef div(a):\n    return 1 / a"
    [result] = unit_test_reward(completions=[_python(code)], tests=[[*TESTS, "assert div(0)"]], sandbox=FAST)
    assert result.reward == pytest.approx(0.5)
    assert "AssertionError: two and two" in result.feedback
    [result] = unit_test_reward(completions=[_python(code)], tests=[["assert div(0)"]], sandbox=FAST)
    assert "ZeroDivisionError" in result.feedback and "solution.py line 5" in result.feedback


def test_floats_without_feedback_for_plain_trl() -> None:
    rewards = unit_test_reward(completions=[_python("def add(a, b):\n    return a + b")],
                               tests=['["assert add(0, 0) == 0"]'], with_feedback=False, sandbox=FAST)
    assert rewards == [1.0]


def test_a_missing_tests_column_is_named() -> None:
    with pytest.raises(Exception, match="dataset column 'tests'"):
        unit_test_reward(completions=["x"], problem=["y"])


def test_stdin_stdout_cases_each_run_the_program() -> None:
    tests = {"inputs": ["3\n", "5\n", "0\n"], "outputs": ["6\n", "10", "0\n"]}
    [good, wrong] = score_completions(["print(int(input()) * 2)", "print(int(input()) + 3)"], [tests, tests], FAST)
    assert good == RewardResult(1.0, None)
    assert wrong.reward == pytest.approx(1 / 3)
    assert wrong.feedback == "Test 2 of 3 failed on input:\n5\nexpected output:\n10\nyour output:\n8"


def test_verl_form_returns_score_and_feedback() -> None:
    answer = compute_score("codecontests", _python("def add(a, b):\n    return a - b"),
                           '{"assert_case": ["assert add(1, 1) == 0", "assert add(1, 2) == 3"]}', {"index": 0},
                           sandbox=FAST)
    assert answer["score"] == 0.5 and answer["passed"] == 1 and answer["total"] == 2
    assert answer["feedback"].startswith("Test 2 of 2 failed")
    passing = compute_score("x", _python("def add(a, b):\n    return a + b"), ["assert add(1, 2) == 3"], sandbox=FAST)
    assert passing == {"score": 1.0, "feedback": "", "passed": 1, "total": 1}


class CountingBackend:
    """Records how many runs overlap; each run sleeps briefly."""

    name = "counting"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = self.peak = self.calls = 0

    def run(self, request: SandboxRequest, limits: Limits) -> SandboxResult:
        with self.lock:
            self.running += 1
            self.calls += 1
            self.peak = max(self.peak, self.running)
        time.sleep(0.02)
        with self.lock:
            self.running -= 1
        return SandboxResult(0, "", "", 0.02)


def test_a_batch_of_256_never_runs_more_than_max_concurrency_at_once() -> None:
    backend = CountingBackend()
    sandbox = Sandbox(SandboxConfig(max_concurrency=3), backend=backend)
    threads = [threading.Thread(target=sandbox.run_many, args=([SandboxRequest(code="pass")] * 64,))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert backend.calls == 256 and backend.peak == 3


def test_a_full_queue_is_an_error_after_the_queue_timeout() -> None:
    backend = CountingBackend()
    sandbox = Sandbox(SandboxConfig(max_concurrency=1, queue_timeout_s=0.01), backend=backend)
    sandbox._slots.acquire()
    with pytest.raises(Exception, match="no sandbox run slot came free"):
        sandbox.run(SandboxRequest(code="pass"))
