"""metrics.png: the run's metrics as a grid of panels, each drawn only when it carries information.

Every backend's metric names have a place: TRL's (`reward`, `composer/...`), and the names the torchtune recipe
logs (the guard's canonical `reward_mean`, the core loss's `policy/...`). matplotlib is needed only to draw.

Each training series is drawn faint as logged and solid after smoothing (an exponential moving average); eval
points (`eval/reward` rows and the before/after measurements) are markers joined by a line, told apart from the
sampled training reward. A series whose values never change, or that is absent, is not drawn, and a panel with
nothing left to draw is left out, so the figure holds only what moved.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from composer_core.errors import ConfigError
from composer_core.files import atomic_output

if TYPE_CHECKING:
    from matplotlib.axes import Axes

Series = list[tuple[int, float]]
EVAL_KEYS = ("eval/reward", "eval_reward")  # periodic eval rows: TRL's job (composer_trl.evaluation), torchtune's
EVAL_SERIES = "eval reward"  # the eval rows plus the before/after points
COLUMNS = 3


@dataclass(frozen=True)
class Panel:
    title: str
    ylabel: str
    keys: tuple[tuple[str, str], ...]  # (series name, legend label)


PANELS = (
    Panel("reward", "mean reward", (("reward", "train (sampled)"), ("reward_mean", "train (sampled)"),
                                    (EVAL_SERIES, "eval (held-out, greedy)"))),
    Panel("loss by channel", "loss", (("composer/policy/loss", "policy"), ("policy/loss", "policy"),
                                      ("composer/distill/loss", "self-distillation"),
                                      ("distill/loss", "self-distillation"),
                                      ("composer/preference/loss", "trace-replay DPO"),
                                      ("composer/loss/total", "total"), ("loss/total", "total"))),
    Panel("completion length", "tokens", (("completions/mean_length", "mean"), ("response_length", "mean"),
                                          ("completions/max_length", "max"), ("completions/min_length", "min"))),
    Panel("truncation", "fraction of samples", (("completions/clipped_ratio", "completions cut at max length"),
                                               ("truncated_fraction", "completions cut at max length"),
                                               ("composer/prompts/truncated_fraction", "prompts cut at max length"))),
    Panel("KL and policy drift", "value", (("composer/policy/kl", "KL to reference"), ("kl", "KL to reference"),
                                           ("composer/policy/approx_kl", "approx KL to old policy"),
                                           ("policy/approx_kl", "approx KL to old policy"),
                                           ("composer/policy/clipfrac", "clipped fraction"),
                                           ("policy/clipfrac", "clipped fraction"))),
    Panel("gradient norm", "norm", (("grad_norm", "grad norm"),)),
    Panel("self-distillation", "fraction", (("composer/distill/coverage", "SD mask coverage"),
                                            ("distill/coverage", "SD mask coverage"),
                                            ("composer/distill/empty_mask", "empty SD mask"),
                                            ("distill/empty_mask", "empty SD mask"),
                                            ("composer/teacher/demonstration_fraction", "teacher saw a solution"),
                                            ("self_distillation/demonstration_fraction", "teacher saw a solution"),
                                            ("composer/teacher/feedback_fraction", "teacher saw feedback"),
                                            ("self_distillation/feedback_fraction", "teacher saw feedback"),
                                            ("composer/teacher/hint_fraction", "teacher saw a hint"),
                                            ("self_distillation/hint_fraction", "teacher saw a hint"))),
)


def read_series(metrics: Path) -> dict[str, Series]:
    """Each metric's (step, value) points from a metrics JSONL file (non-finite values skipped)."""
    series: dict[str, Series] = {}
    for line in metrics.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool) \
                    and math.isfinite(value):
                series.setdefault(key, []).append((record["step"], float(value)))
    return series


def with_eval_points(series: dict[str, Series], before: float | None, after: float | None,
                     before_step: int = 0) -> dict[str, Series]:
    """The series plus EVAL_SERIES: the eval rows, the before point at `before_step` (where training started: 0,
    or the checkpoint a resumed run continued from) and the after point at the last step."""
    points = [point for key in EVAL_KEYS for point in series.get(key, [])]
    if before is not None:
        points.append((before_step, before))
    if after is not None:
        last = max((step for values in series.values() for step, _ in values), default=0)
        points.append((last, after))
    return {**series, EVAL_SERIES: sorted(points)} if points else dict(series)


def varies(values: Series) -> bool:
    return len({value for _, value in values}) > 1


def chosen_panels(series: dict[str, Series]) -> list[tuple[Panel, list[tuple[str, str]]]]:
    """The panels with at least one series that changes, each with the series it draws."""
    chosen = []
    for panel in PANELS:
        drawn = [(key, label) for key, label in panel.keys if varies(series.get(key, []))]
        if drawn:
            chosen.append((panel, drawn))
    return chosen


def smoothed(values: list[float]) -> list[float]:
    """Exponential moving average over about a tenth of the run (debiased, as TensorBoard's)."""
    weight = 1.0 - 1.0 / max(len(values) / 10.0, 1.0)
    average, out = 0.0, []
    for index, value in enumerate(values, start=1):
        average = weight * average + (1.0 - weight) * value
        out.append(average / (1.0 - weight ** index) if weight > 0 else value)
    return out


def draw(axis: Axes, series: dict[str, Series], keys: list[tuple[str, str]]) -> None:
    for key, label in keys:
        steps, values = zip(*series[key], strict=True)
        if key == EVAL_SERIES:
            axis.plot(steps, values, "o-", color="black", markersize=4, linewidth=1, label=label, zorder=3)
            continue
        line, = axis.plot(steps, smoothed(list(values)), linewidth=1.6, label=label)
        axis.plot(steps, values, color=line.get_color(), alpha=0.25, linewidth=0.8)


def pyplot() -> Any:
    """matplotlib's pyplot drawing to files only; a clear error when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("metrics.png needs matplotlib: pip install matplotlib (the trl extra brings it)") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(metrics: Path, png: Path, *, before: float | None, after: float | None, before_step: int = 0) -> Path:
    """Draw the run's metrics into `png`, written atomically (None `after`: not measured, the run was stopped)."""
    plt = pyplot()
    series = with_eval_points(read_series(metrics), before, after, before_step)
    panels = chosen_panels(series)
    rows = max(1, math.ceil(len(panels) / COLUMNS))
    columns = min(max(len(panels), 1), COLUMNS)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False)
    for axis, (panel, keys) in zip(axes.flat, panels, strict=False):
        draw(axis, series, keys)
        axis.set_title(panel.title)
        axis.set_xlabel("step")
        axis.set_ylabel(panel.ylabel)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    if not panels:
        steps = len({step for values in series.values() for step, _ in values})
        axes.flat[0].text(0.5, 0.5, f"no metric changed over the {steps} logged step(s)", ha="center", va="center")
    figure.suptitle(f"{metrics.parent.name}: faint = as logged, solid = smoothed", fontsize=9)
    return save_figure(figure, png, metrics)


def save_figure(figure: Any, png: Path, metrics: Path) -> Path:
    """Write `figure` into `png` atomically (never over the metrics it was drawn from), then free it."""
    figure.tight_layout()
    try:
        with atomic_output(png, inputs=[metrics], what="metrics plot", binary=True) as stream:
            figure.savefig(stream, dpi=100, format="png")
    finally:
        pyplot().close(figure)
    return png
