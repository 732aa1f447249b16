"""Machine description, the results table (Markdown), the JSON file and the optional bar chart."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from benchmarks.measure import Row
from benchmarks.results_file import write_results

HEADER = ("case", "vs", "shape", "ours ms", "theirs ms", "ratio", "cpu ratio", "ours peak MB", "theirs peak MB",
          "mem ratio")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module reports."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_info(threads: int, device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    return {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable_cores(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch_threads": threads, "python": platform.python_version(), "torch": torch.__version__,
            "verl": _version("verl"), "trl": _version("trl"), "platform": platform.platform()}


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table_cells(row: Row) -> tuple[str, ...]:
    return (row.case, row.baseline, row.shape, f"{row.ours.median_ms:.2f}", f"{row.theirs.median_ms:.2f}",
            _ratio(row.time_ratio), _ratio(row.cpu_time_ratio), f"{row.ours.peak_mb:.1f}", f"{row.theirs.peak_mb:.1f}",
            _ratio(row.memory_ratio))


def format_table(rows: list[Row]) -> str:
    """A Markdown table, padded so that it also reads in a terminal; ratios are ours / theirs (the cpu ratio
    compares median process CPU times, which a loaded machine scatters less than the wall clock)."""
    cells = [HEADER, *(table_cells(row) for row in rows)]
    widths = [max(len(line[column]) for line in cells) for column in range(len(HEADER))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) + " |"
             for line in cells]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def write_json(path: Path, rows: list[Row], meta: dict[str, Any]) -> None:
    """All measurements (every repeat's time too) with the ratios and the run's settings."""
    results = [{**asdict(row), "time_ratio": row.time_ratio, "cpu_time_ratio": row.cpu_time_ratio,
                "memory_ratio": row.memory_ratio} for row in rows]
    write_results(path.parent, path.name, {"meta": meta, "results": results})


def plot_ratios(path: Path, rows: list[Row]) -> bool:
    """A horizontal bar chart of the time ratios (log scale, 1 = parity); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = [f"{row.case} ({row.shape})" for row in rows]
    ratios = [row.time_ratio for row in rows]
    colours = ["tab:red" if ratio > 1 else "tab:green" for ratio in ratios]
    figure, axes = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.5))
    bars = axes.barh(labels, ratios, color=colours)
    axes.bar_label(bars, labels=[f"{ratio:.2f}" for ratio in ratios], padding=3, fontsize=8)
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_xscale("log")
    axes.invert_yaxis()
    axes.set_xlabel("time ratio, ours / theirs (forward+backward; < 1: ours faster)")
    axes.set_title("composer-core vs backend implementations")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
