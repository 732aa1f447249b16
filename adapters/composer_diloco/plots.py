"""OUTPUT/metrics.png of a DiLoCo run: one curve per replica for each metric that moved, and the quorum size of every
outer step (a dip is a replica that died, hung or was healing)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from composer_core.plots import pyplot, save_figure

PANELS = (("reward", "train reward (sampled)"), ("eval/reward", "eval reward"),
          ("composer/loss/total", "composer loss"), ("grad_norm", "gradient norm"))
Series = dict[int, list[tuple[int, float]]]


def replica_series(metrics: Path, key: str) -> Series:
    """Per replica, the finite (step, value) points of `key` in the merged metrics file."""
    series: Series = {}
    for line in metrics.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            series.setdefault(row["replica"], []).append((row["step"], float(value)))
    return series


def plot_replicas(metrics: Path, quorum_sizes: dict[str, list[int]], png: Path) -> Path:
    """Draw the panels that have data into `png`, written atomically."""
    plt = pyplot()  # says clearly when matplotlib is missing
    from matplotlib.ticker import MaxNLocator
    drawn = [(key, title, replica_series(metrics, key)) for key, title in PANELS]
    drawn = [(key, title, series) for key, title, series in drawn if series]
    count = len(drawn) + 1
    figure, axes = plt.subplots(1, count, figsize=(4.6 * count, 3.4), squeeze=False)
    for axis, (_key, title, series) in zip(axes.flat, drawn, strict=False):
        for replica, points in sorted(series.items()):
            steps, values = zip(*sorted(points), strict=True)
            axis.plot(steps, values, marker=".", linewidth=1.2, label=f"replica {replica}")
        axis.set(title=title, xlabel="inner step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    quorum = axes.flat[count - 1]
    if quorum_sizes:
        steps = [int(step) for step in quorum_sizes]
        quorum.plot(steps, [max(sizes) for sizes in quorum_sizes.values()], "o-", color="black", markersize=3)
    quorum.set(title="quorum size per outer step", xlabel="outer step", ylabel="replicas", ylim=(0, None))
    quorum.yaxis.set_major_locator(MaxNLocator(integer=True))
    quorum.xaxis.set_major_locator(MaxNLocator(integer=True))
    quorum.grid(alpha=0.3)
    figure.suptitle(f"{png.parent.name}: DiLoCo, one curve per replica", fontsize=9)
    return save_figure(figure, png, metrics)
