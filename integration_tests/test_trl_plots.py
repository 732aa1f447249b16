"""metrics.png: the panels drawn depend on the metrics the run logged; constant or absent series are left out."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from composer_core.plots import EVAL_SERIES, chosen_panels, plot_metrics, read_series, smoothed, with_eval_points


def write_metrics(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def titles(series: dict) -> list[str]:
    return [panel.title for panel, _ in chosen_panels(series)]


def test_panels_follow_the_metrics_present_and_constant_series_are_left_out(tmp_path: Path) -> None:
    plain = [{"step": step, "reward": 0.1 * step, "loss": 1.0 / step, "grad_norm": 1.0,
              "composer/policy/loss": 0.5 - 0.1 * step, "completions/mean_length": 4.0,
              "completions/clipped_ratio": 0.0} for step in range(1, 5)]
    series = read_series(write_metrics(tmp_path / "plain.jsonl", plain))
    assert titles(series) == ["reward", "loss by channel"]  # grad norm, length and truncation never moved
    distilled = [{**row, "composer/distill/loss": 0.3 / row["step"], "composer/distill/coverage": 1.0,
                  "composer/teacher/feedback_fraction": 0.25 * (row["step"] % 2), "grad_norm": row["step"] / 3,
                  "completions/clipped_ratio": 0.5 * (row["step"] == 2)} for row in plain]
    series = read_series(write_metrics(tmp_path / "distilled.jsonl", distilled))
    assert titles(series) == ["reward", "loss by channel", "truncation", "gradient norm", "self-distillation"]
    drawn = dict(chosen_panels(series))
    by_title = {panel.title: [key for key, _ in keys] for panel, keys in drawn.items()}
    assert by_title["loss by channel"] == ["composer/policy/loss", "composer/distill/loss"]
    assert by_title["self-distillation"] == ["composer/teacher/feedback_fraction"]  # coverage stayed at 1


def test_eval_rows_and_before_after_are_one_eval_series_apart_from_the_train_reward(tmp_path: Path) -> None:
    rows = [{"step": 1, "reward": 0.5}, {"step": 2, "reward": 0.5}, {"step": 2, "eval/reward": 0.4},
            {"step": 4, "reward": 0.5}]
    series = with_eval_points(read_series(write_metrics(tmp_path / "m.jsonl", rows)), 0.3, 0.6, before_step=0)
    assert series[EVAL_SERIES] == [(0, 0.3), (2, 0.4), (4, 0.6)]
    panel, keys = chosen_panels(series)[0]
    assert panel.title == "reward" and [key for key, _ in keys] == [EVAL_SERIES]  # the train reward was flat
    alone = with_eval_points(read_series(tmp_path / "m.jsonl"), None, None)
    assert alone[EVAL_SERIES] == [(2, 0.4)] and titles(alone) == []  # one eval point and a flat reward: no panel


def test_smoothing_follows_a_trend_and_keeps_a_constant(tmp_path: Path) -> None:
    assert smoothed([2.0] * 30) == pytest.approx([2.0] * 30)
    noisy = [float(step % 2) + step / 10 for step in range(40)]
    curve = smoothed(noisy)
    assert max(abs(a - b) for a, b in pairwise(curve[20:])) < 0.5  # the raw one jumps by ~1
    assert curve[-1] > curve[10]


def test_the_png_is_written_with_panels_or_with_a_note_when_nothing_moved(tmp_path: Path) -> None:
    rows = [{"step": step, "reward": step % 3 / 3, "composer/distill/loss": 1 / step} for step in range(1, 30)]
    png = plot_metrics(write_metrics(tmp_path / "m.jsonl", rows), tmp_path / "m.png", before=0.2, after=0.4)
    assert png.read_bytes()[:4] == b"\x89PNG"
    flat = plot_metrics(write_metrics(tmp_path / "flat.jsonl", [{"step": 1, "reward": 0.5}]), tmp_path / "flat.png",
                        before=None, after=None)
    assert flat.read_bytes()[:4] == b"\x89PNG" and flat.stat().st_size < png.stat().st_size
