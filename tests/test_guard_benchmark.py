"""The guard benchmark keeps working: a short stream, in-process (no timing limits asserted)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from composer_core.guard import GUARD_METRICS, Guard, GuardConfig

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/ is a top-level package beside composer_core/


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """benchmarks.guard, importable from the repository root (it needs neither verl nor TRL)."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import guard

    return guard


def test_the_benchmark_stream_is_realistic_and_healthy(bench: types.ModuleType) -> None:
    stream = bench.realistic_stream(400, seed=3)
    assert len(stream) == 400 and all(set(metrics) == set(GUARD_METRICS) for metrics in stream)
    assert all(0.0 <= metrics["reward_mean"] <= 1.0 for metrics in stream)
    guard = Guard(GuardConfig())
    assert not any(guard.observe(step, metrics).findings for step, metrics in enumerate(stream, 1))


def test_a_short_measurement_reports_every_checkpoint_and_rule(bench: types.ModuleType) -> None:
    result = bench.measure(steps=150, repeats=1, checkpoints=(100,))
    assert sorted(result.observe_us) == [100, 150] and all(value > 0 for value in result.observe_us.values())
    assert result.rules == 9 and sorted(result.rule_us) == sorted(rule.rule.name for rule in Guard(GuardConfig()).rules)
    assert result.total_s > 0
    assert "| 150 |" in bench.format_result(result)


def test_an_unhealthy_stream_is_refused_rather_than_timed(bench: types.ModuleType) -> None:
    stream = bench.realistic_stream(20)
    stream[10]["loss"] = float("nan")
    with pytest.raises(AssertionError, match="meant to be healthy.*non_finite"):
        bench.observe_times_us(stream)


def test_main_quick_writes_the_results(bench: types.ModuleType, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--output", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "guard.json").read_text())
    assert written["result"]["steps"] == 200 and written["meta"]["quick"] is True
    assert "us per observe" in capsys.readouterr().out
