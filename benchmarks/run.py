"""Run the suite: `python -m benchmarks.run [--quick] [--only TEXT] [--threads N]`.

Prints a line per case while it runs, then the table; writes benchmarks/results/latest.json and, when
matplotlib is installed, benchmarks/results/ratios.png.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from benchmarks import suite
from benchmarks.core import CaseSpec
from benchmarks.measure import Row, Settings, benchmark_case, default_device, memory_method
from benchmarks.report import format_table, machine_info, plot_ratios, usable_cores, write_json

RESULTS = Path(__file__).parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=usable_cores(), help="torch intra-op threads (default: cores)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each side before timing")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, two repeats: checks the harness only")
    parser.add_argument("--only", action="append", default=[], help="run the cases whose name contains TEXT")
    parser.add_argument("--in-process", action="store_true", help="measure memory in this process too (less exact)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for latest.json and ratios.png")
    return parser.parse_args(argv)


def select(specs: list[CaseSpec], only: list[str]) -> list[CaseSpec]:
    return [spec for spec in specs if not only or any(text in spec.name for text in only)]


def progress_line(row: Row, seconds: float) -> str:
    memory = "-" if row.memory_ratio is None else f"{row.memory_ratio:.2f}"
    return (f"agree (max rel diff {row.max_relative_difference:.1e}); ours {row.ours.median_ms:.2f} ms "
            f"{row.ours.peak_mb:.1f} MB, theirs {row.theirs.median_ms:.2f} ms {row.theirs.peak_mb:.1f} MB; "
            f"time x{row.time_ratio:.2f}, memory x{memory} [{seconds:.0f} s]")


def load_average() -> tuple[float, ...] | None:
    """1, 5 and 15 minute load averages: other work on the machine inflates and scatters the timings."""
    return tuple(round(value, 2) for value in os.getloadavg()) if hasattr(os, "getloadavg") else None


def print_header(meta: dict[str, object]) -> None:
    machine = meta["machine"]
    print(f"composer-core benchmarks on {machine['cpu']} ({machine['usable_cores']} cores), {machine['device']}, "
          f"torch {machine['torch']} with {machine['torch_threads']} threads; verl {machine['verl']}, "
          f"trl {machine['trl']}; load average {meta['load_average_start']}")
    print(f"shapes: policy {' and '.join('x'.join(map(str, s)) for s in suite.POLICY_SHAPES)} (batch x length), "
          f"float32; divergences {'x'.join(map(str, suite.DIVERGENCE_SHAPE))} (batch x length x vocab); hidden "
          f"{'x'.join(map(str, suite.HIDDEN_SHAPE))} (batch x length x hidden x vocab), chunk {suite.HIDDEN_CHUNK}")
    print(f"timing: forward+backward on the same tensors, ours and theirs alternating step by step; "
          f"{meta['warmup']} warm-up step(s) each, then the median of each case's repeats (time.perf_counter)")
    print(f"memory: {meta['memory_method']}")
    print("each case first checks that ours and theirs agree (outputs and gradients)\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = default_device()
    settings = Settings(threads=args.threads, warmup=args.warmup, isolate=not args.in_process)
    specs = select(suite.default_suite(quick=args.quick), args.only)
    meta = {"machine": machine_info(args.threads, device), "warmup": args.warmup, "quick": args.quick,
            "isolated": settings.isolate, "memory_method": memory_method(device), "load_average_start": load_average(),
            "ratios": "ours / theirs: below 1 means ours is faster or smaller"}
    print_header(meta)
    rows = []
    started = time.perf_counter()
    for index, spec in enumerate(specs, 1):
        print(f"[{index}/{len(specs)}] {spec.name} vs {spec.baseline} ...", end=" ", flush=True)
        case_start = time.perf_counter()
        rows.append(benchmark_case(spec, settings))
        print(progress_line(rows[-1], time.perf_counter() - case_start), flush=True)
    meta["load_average_end"] = load_average()
    print(f"\nratios are ours / theirs (below 1: ours faster or smaller); total {time.perf_counter() - started:.0f} s, "
          f"load average at the end {meta['load_average_end']}\n")
    print(format_table(rows))
    write_json(args.output / "latest.json", rows, meta)
    print(f"\nwrote {args.output / 'latest.json'}")
    if plot_ratios(args.output / "ratios.png", rows):
        print(f"wrote {args.output / 'ratios.png'}")
    else:
        print("matplotlib is not installed: skipped the chart (pip install matplotlib to get ratios.png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
