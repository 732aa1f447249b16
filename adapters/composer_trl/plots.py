"""A PNG of a run's metrics: reward, the loss of each channel, and self-distillation mask coverage."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from composer_core.files import atomic_output

PANELS = (
    ("reward", ("reward",)),
    ("loss by channel", ("composer/policy/loss", "composer/distill/loss", "composer/preference/loss")),
    ("self-distillation", ("composer/distill/coverage", "composer/distill/empty_mask")),
)


def read_series(metrics: Path) -> dict[str, list[tuple[int, float]]]:
    """Each metric's (step, value) points from a metrics JSONL file."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float):
                series.setdefault(key, []).append((record["step"], float(value)))
    return series


def plot_metrics(metrics: Path, png: Path, *, before: float, after: float | None) -> Path:
    """Draw the run's metrics into `png`, written atomically (None `after`: not measured, the run was stopped)."""
    series = read_series(metrics)
    figure, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    for axis, (title, keys) in zip(axes, PANELS, strict=True):
        for key in keys:
            if key in series:
                steps, values = zip(*series[key], strict=True)
                axis.plot(steps, values, label=key.removeprefix("composer/"))
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.legend(fontsize=7)
    axes[0].axhline(before, linestyle=":", color="grey", label=f"eval before {before:.2f}")
    if after is not None:
        axes[0].axhline(after, linestyle="--", color="black", label=f"eval after {after:.2f}")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    try:
        with atomic_output(png, inputs=[metrics], what="metrics plot", binary=True) as stream:
            figure.savefig(stream, dpi=100, format="png")
    finally:
        plt.close(figure)
    return png
