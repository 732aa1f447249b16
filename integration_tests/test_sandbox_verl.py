"""VeRL's own sandbox_fusion scoring against `composer-core sandbox serve` on loopback, and our unit-test reward
loaded the way VeRL loads a custom_reward_function."""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from composer_core.sandbox.local import SandboxUnavailable, check_unshare, sandbox_processes

pytest.importorskip("verl")
START_TIMEOUT_S = 60.0
ADD = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
SUBTRACT = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"
CASES = {"inputs": ["1 2\n", "3 4\n", "5 0\n"], "outputs": ["3\n", "7\n", "5\n"]}


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """`composer-core sandbox serve --port 0` as its own process; the /run_code URL it printed."""
    try:
        check_unshare()
    except SandboxUnavailable as error:
        pytest.skip(f"the local sandbox cannot run here: {error}")
    process = subprocess.Popen([sys.executable, "-m", "composer_core.cli", "sandbox", "serve", "--port", "0",
                                "--timeout", "5", "--memory-mb", "512", "--max-concurrency", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            if not selector.select(START_TIMEOUT_S):
                pytest.fail(f"`composer-core sandbox serve` printed no URL within {START_TIMEOUT_S} s")
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        yield f"{url}/run_code"
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert sandbox_processes() == []


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """VeRL's client uses requests, which would send loopback traffic to a configured proxy."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_verls_compute_score_scores_against_our_server(server_url: str) -> None:
    from verl.utils.reward_score.sandbox_fusion import compute_score

    semaphore = threading.Semaphore(4)
    right, right_details = compute_score(server_url, semaphore, 256, ADD, json.dumps(CASES))
    wrong, wrong_details = compute_score(server_url, semaphore, 256, SUBTRACT, CASES)
    assert right == 1.0, right_details
    assert [detail["status"] for detail in right_details] == ["success"] * 3
    assert wrong == pytest.approx(1 / 3), wrong_details  # 5 - 0 == 5 + 0
    assert [detail["status"] for detail in wrong_details] == ["wrong_answer", "wrong_answer", "success"]


def test_verls_statuses_for_errors_and_timeouts(server_url: str) -> None:
    from verl.utils.reward_score.sandbox_fusion import compute_score

    crash = "```python\nraise ValueError('no')\n```"
    hang = "```python\nwhile True:\n    pass\n```"
    score, details = compute_score(server_url, None, 256, crash, {"inputs": ["1\n"], "outputs": ["1\n"]})
    assert score == 0.0 and details[0]["status"] == "runtime_error" and "ValueError" in details[0]["stderr"]
    score, details = compute_score(server_url, None, 256, hang, {"inputs": ["1\n"], "outputs": ["1\n"]}, timeout=1)
    assert score == 0.0 and details[0]["status"] == "timeout"
    asserts = "```python\ndef add(a, b):\n    return a + b\n```"
    score, details = compute_score(server_url, None, 256, asserts,
                                   {"assert_case": ["assert add(1, 2) == 3", "assert add(1, 1) == 3"]})
    assert score == 0.5, details


def test_verls_default_scorer_for_code_datasets_uses_our_server(server_url: str) -> None:
    from verl.utils.reward_score import default_compute_score

    score = default_compute_score("codecontests", ADD, json.dumps(CASES), sandbox_fusion_url=server_url,
                                  concurrent_semaphore=threading.Semaphore(2), memory_limit_mb=256)
    assert score == 1.0


def test_our_reward_as_verls_custom_reward_function() -> None:
    try:
        check_unshare()
    except SandboxUnavailable as error:
        pytest.skip(f"the local sandbox cannot run here: {error}")
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    import composer_core.rewards.unit_tests as unit_tests

    config = OmegaConf.create({"reward": {"custom_reward_function": {
        "path": str(Path(unit_tests.__file__)), "name": "compute_score",
        "reward_kwargs": {"sandbox": {"timeout_s": 5, "memory_mb": 256, "readonly_paths": ["/usr/share"]},
                          "max_concurrency": 2}}}})
    score_fn = get_custom_reward_fn(config)
    assert score_fn is not None
    answer = score_fn(data_source="codecontests", solution_str=SUBTRACT, ground_truth=json.dumps(CASES),
                      extra_info={"index": 0})
    assert answer["score"] == pytest.approx(1 / 3) and answer["total"] == 3
    assert answer["feedback"].startswith("Test 1 of 3 failed on input")
