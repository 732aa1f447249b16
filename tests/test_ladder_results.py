"""The evidence ladder's statistics and settings: t-intervals, paired differences from A1, how collapsed and failed
runs are counted, the arms' configs, and the output folder's claim (resume only with the same settings)."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path
from typing import Any

import pytest

from composer_core.cli.experiment import ladder_settings
from composer_core.cli.main import build_parser
from composer_core.errors import ConfigError
from composer_core.experiment.ladder import claim_folder
from composer_core.experiment.results import interval, summarise, t_quantile, table
from composer_core.experiment.runs import arm_config, default_model_folder, steady_step_time
from composer_core.experiment.settings import ARMS, preset
from composer_core.experiment.task_files import REWARD, rows


def t_cdf(x: float, degrees: int) -> float:
    """Student's t CDF by Simpson integration of its density from 0 (an independent reference)."""
    log_norm = math.lgamma((degrees + 1) / 2) - math.lgamma(degrees / 2) - 0.5 * math.log(degrees * math.pi)
    density = lambda t: math.exp(log_norm - (degrees + 1) / 2 * math.log1p(t * t / degrees))  # noqa: E731
    steps = 20_000
    width = x / steps
    total = density(0) + density(x) + sum((4 if i % 2 else 2) * density(i * width) for i in range(1, steps))
    return 0.5 + total * width / 3


@pytest.mark.parametrize("degrees", [1, 2, 4, 9, 29, 30, 31, 60, 200])
def test_t_quantile_is_the_97_5_percent_point(degrees: int) -> None:
    assert t_cdf(t_quantile(degrees), degrees) == pytest.approx(0.975, abs=2e-4)


def test_interval_covers_the_mean_at_about_95_percent() -> None:
    rng = random.Random(0)
    trials, covered = 2000, 0
    for _ in range(trials):
        low, high = interval([rng.gauss(0.3, 0.1) for _ in range(5)])["ci95"]
        covered += low <= 0.3 <= high
    assert 0.93 < covered / trials < 0.97


def test_one_value_has_no_interval() -> None:
    assert interval([0.4]) == {"n": 1, "mean": 0.4, "ci95": None}


def record(arm: str, seed: int, after: float | None, status: str = "finished", **extra: Any) -> dict[str, Any]:
    return {"arm": arm, "seed": seed, "status": status, "eval_reward_before": 0.5, "eval_reward_after": after,
            "steps": 10, "train_s": 5.0, "step_s": 0.5 if arm == "A1" else 0.75, "wall_s": 20.0, "tokens": 100.0,
            "completion_tokens": 40.0, "guard_rules": extra.get("rules", []), "guard_stop_step": extra.get("step"),
            "curves": {}}


def test_summaries_pair_each_seed_with_a1_and_count_collapsed_and_failed_runs() -> None:
    records = [record("A1", 0, 0.50), record("A1", 1, 0.60), record("A1", 2, 0.70),
               record("A2", 0, 0.55), record("A2", 1, 0.70),
               record("A2", 2, 0.70, "collapsed", rules=["reward_collapse"], step=7),
               {"arm": "A2", "seed": 3, "status": "failed", "exit_code": 1}]
    summaries = summarise(["A1", "A2"], records)
    a2 = summaries["A2"]
    assert a2["status"] == {"finished": 2, "collapsed": 1, "failed": 1} and a2["runs"] == 4
    assert a2["collapsed"] == [{"seed": 2, "rules": ["reward_collapse"], "step": 7}]
    assert a2["eval_reward_after"]["mean"] == pytest.approx(statistics.fmean([0.55, 0.70, 0.70]))
    differences = [0.05, 0.10, 0.0]
    assert a2["minus_A1"]["mean"] == pytest.approx(statistics.fmean(differences))
    half = t_quantile(2) * statistics.stdev(differences) / math.sqrt(3)
    assert a2["minus_A1"]["ci95"] == pytest.approx([0.05 - half, 0.05 + half])
    assert summaries["A1"]["minus_A1"] is None and a2["step_time_vs_A1"] == pytest.approx(1.5)
    assert "| A2 GRPO + self-distillation | 4 |" in table(summaries)


def test_an_arm_without_a_finished_run_is_listed_not_dropped() -> None:
    summaries = summarise(["A1", "A3"], [record("A1", 0, 0.5), {"arm": "A3", "seed": 0, "status": "failed"}])
    assert summaries["A3"]["status"]["failed"] == 1 and "eval_reward_after" not in summaries["A3"]
    assert "| A3 GRPO + trace-replay DPO | 1 | - | no finished run |" in table(summaries)


def test_steady_step_time_leaves_out_the_warm_up_step() -> None:
    assert steady_step_time([{"step_time": 9.0}, {"step_time": 1.0}, {"step_time": 3.0}, {}]) == 2.0
    assert steady_step_time([{"step_time": 4.0}]) == 4.0 and steady_step_time([{}]) is None


@pytest.mark.parametrize("arm", ARMS)
def test_each_arm_switches_on_its_channels_and_nothing_else(arm: str) -> None:
    settings = preset(None, quick=False)
    data = {"data": {"train": "t.jsonl", "eval": "e.jsonl"}, "reward": [REWARD]}
    config = arm_config(settings, arm, 3, data, "pairs.jsonl")
    assert (config.distill.weight > 0) == (arm in ("A2", "A4"))
    assert (config.preference.weight > 0) == (arm in ("A3", "A4"))
    assert config.data.preference_pairs == ("pairs.jsonl" if arm in ("A3", "A4") else None)
    assert config.run.seed == 3 and config.policy.objective.name == "dr_grpo"
    same = arm_config(settings, "A1", 3, data, None).run
    assert (config.run.prompts_per_step, config.run.num_generations, config.run.max_steps) == \
        (same.prompts_per_step, same.num_generations, same.max_steps)


def test_pretrained_preset_asks_for_the_number_and_samples_at_the_distill_temperature() -> None:
    settings = preset("model.gguf", quick=False)
    assert settings.arms == ["A1", "A2"] and settings.seeds == 2 and settings.prompt_style == "number_only"
    config = arm_config(settings, "A2", 0, {"data": {"train": "t", "eval": "e"}, "reward": [REWARD]}, None)
    assert config.model.path == "model.gguf" and config.distill.support == "student_topk"
    prompt = rows(1, 0, "train", "number_only")[0]["prompt"][0]["content"]
    assert prompt.endswith("Reply with only the number.")


def parse(*args: str) -> Any:
    return ladder_settings(build_parser().parse_args(["experiment", "ladder", "--output-dir", "x", *args]))


def test_command_line_options_change_the_preset() -> None:
    settings = parse("--quick", "--arms", "A1,A3", "--seeds", "2", "--steps", "6", "--preference-weight", "0.1",
                     "run.learning_rate=1e-3")
    assert settings.arms == ["A1", "A3"] and settings.seeds == 2 and settings.base["run"]["max_steps"] == 6
    assert settings.preference_weight == 0.1 and settings.distill_weight == 0.5
    assert settings.overrides == ["run.learning_rate=1e-3"] and settings.train_size == 32
    with pytest.raises(ConfigError, match="unknown arm"):
        parse("--arms", "A1,B7")


def test_a_folder_is_resumed_or_extended_only_under_the_same_settings(tmp_path: Path) -> None:
    folder = tmp_path / "ladder"
    claim_folder(folder, preset(None, quick=True))
    claim_folder(folder, preset(None, quick=True))  # the same: resumed
    assert json.loads((folder / "ladder_settings.json").read_text())["seeds"] == 1
    more = preset(None, quick=True).model_copy(update={"seeds": 3, "arms": ["A1", "A2"]})
    claim_folder(folder, more)  # more seeds, fewer arms: the same runs, some added, some left out
    assert json.loads((folder / "ladder_settings.json").read_text())["seeds"] == 3
    with pytest.raises(ConfigError, match="train_size differ"):
        claim_folder(folder, more.model_copy(update={"train_size": 64}))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no ladder"):
        claim_folder(other, preset(None, quick=True))


def test_replay_teachers_use_the_backend_s_default_model_or_ask_for_one() -> None:
    assert (default_model_folder("trl") / "config.json").is_file()  # the trl backend's embedded model
    with pytest.raises(ConfigError, match="names no default one: give --model"):
        default_model_folder("verl")
