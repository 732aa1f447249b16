"""The self-distillation step benchmark keeps working: one step per arm on the embedded model, in-process (its
structure is checked, never its timings)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/ is a top-level package beside composer_core/


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """benchmarks.sd_step, importable from the repository root; skipped without TRL."""
    pytest.importorskip("trl")
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import sd_step

    return sd_step


def test_the_arms_differ_only_in_self_distillation(bench: types.ModuleType) -> None:
    setup = bench.model_setup("embedded")
    grpo, sd = (bench.job(setup, distill, steps=3, length=8) for distill in (False, True))
    assert grpo.distill.weight == 0.0 and sd.distill.weight == 0.5 and sd.distill.top_k == 20
    assert grpo.run == sd.run and grpo.data == sd.data and grpo.policy == sd.policy
    assert sd.run.trl["generation_kwargs"] == {"min_new_tokens": 8} and sd.run.max_completion_length == 8
    assert bench.job(setup, True, steps=3, length=8, forced=False).run.trl == {}


def test_one_step_per_arm_reports_every_phase(bench: types.ModuleType, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the trainers' run folders stay out of the checkout
    settings = bench.Settings("embedded", completion_length=4, forced=True, warmup=0, steps=1, repeats=1, threads=0)
    arms = bench.measure(settings)
    assert sorted(arms) == ["grpo", "grpo_sd"]
    for name, arm in arms.items():
        summary = arm.summary()
        assert summary["timed_steps"] == 1 and summary["median_step_ms"] > 0
        assert sorted(summary["median_phase_ms"]) == sorted(bench.PHASES)
        forward = summary["median_phase_ms"]["teacher_forward"]
        assert (forward > 0) == (name == "grpo_sd")  # only the self-distillation arm runs a teacher
    assert bench.phase_ratio(arms["grpo_sd"]) > 1.0
    table = bench.report(settings, arms)
    assert all(f"| {phase} |" in table for phase in bench.PHASES)


def test_results_of_other_runs_are_kept(bench: types.ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "sd_step.json"
    path.write_text(json.dumps({"runs": {"smollm2-64": {"ratio": 1.2}, "embedded-64": {"ratio": 9.0}}}))
    merged = bench.merged_results(path, "embedded-64", {"ratio": 1.4})
    assert merged == {"runs": {"smollm2-64": {"ratio": 1.2}, "embedded-64": {"ratio": 1.4}}}
    assert bench.merged_results(tmp_path / "missing.json", "embedded-64-natural", {}) == {
        "runs": {"embedded-64-natural": {}}}
