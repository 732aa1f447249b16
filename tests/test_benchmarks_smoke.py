"""The benchmark suite keeps working: one case per kind at a tiny shape, in-process (no timing assertions)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/ is a top-level package beside composer_core/


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    """The benchmark modules, importable from the repository root; skipped without verl or TRL."""
    pytest.importorskip("verl")
    pytest.importorskip("trl")
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import core, measure, suite

    return core, measure, suite


def _spec(suite, name: str):
    return next(spec for spec in suite.default_suite(quick=True) if spec.name == name)


@pytest.mark.parametrize("name", ["ppo", "ppo via ComposerLoss", "ppo via ComposerLoss vs bare",
                                  "student top-K + tail, a=0.5", "teacher top-K tensors, forward KL",
                                  "chunked from hidden (full, a=0.5)"])
def test_a_tiny_case_returns_a_row_with_positive_timings(bench, name: str) -> None:
    _, measure, suite = bench
    row = measure.benchmark_case(_spec(suite, name), measure.Settings(threads=1, warmup=0, isolate=False))
    assert row.case == name
    assert row.ours.median_ms > 0 and row.theirs.median_ms > 0
    assert row.ours.cpu_median_ms > 0 and row.theirs.cpu_median_ms > 0
    assert len(row.ours.times_ms) == len(row.theirs.times_ms) == 2
    assert row.time_ratio > 0
    assert 0.0 <= row.max_relative_difference <= 1e-4


def test_the_agreement_check_catches_a_different_implementation(bench) -> None:
    core, _, suite = bench
    pair = suite.prepare(_spec(suite, "ppo"), torch.device("cpu"))
    assert core.check_agreement(pair, "ppo") <= pair.tolerance
    wrong = core.Pair(lambda: pair.ours() * 1.01, pair.theirs, pair.leaves, pair.shape_label, pair.tolerance)
    with pytest.raises(core.DisagreementError, match="differs"):
        core.check_agreement(wrong, "ppo")
