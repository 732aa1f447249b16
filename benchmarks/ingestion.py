"""Trace ingestion throughput: `python -m benchmarks.ingestion [--sizes-mb S L] [--repeats N] [--quick]`.

Per format with a real sample in the shared data set, a large input is built by repeating the samples: the
aider history as one file (its sessions appended again and again, as aider itself appends), every other
format as many copies of its session files (one file is one session there). Each input is ingested through
`composer_core.traces.ingest.ingest`, the function `composer-core traces ingest` calls, each trace serialised
with `model_dump_json` as the command writes it; every run is a fresh process, single-threaded.

Reported per format and size: MB/s of ingestion alone, over the CPU time spent inside `ingest` (the per-core
figure, which other work on the machine barely moves) and over the wall time (with its spread); MB per CPU
second of ingestion plus serialisation (the command's work); medians over the repeats; and the growth of peak
RSS over the run: at two sizes, it shows whether memory grows with the input. Writes
benchmarks/results/ingestion.json. `--profile FORMAT` prints where the time goes (cProfile) instead.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.results_file import write_results

RESULTS = Path(__file__).parent / "results"
MB = 1024 * 1024
RSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
FORMATS = ("aider", "claude_code", "codex", "swe_agent", "openhands", "mini_swe_agent", "gemini_cli")
AIDER_HEADER = b"# aider chat started at "


def samples_root() -> Path:
    """The shared traces folder: $COMPOSER_SHARED_DATA/traces, else the workplace's /work/shared/data/traces."""
    base = os.environ.get("COMPOSER_SHARED_DATA") or "/work/shared/data"
    return Path(base) / "traces"


@dataclass(frozen=True)
class Run:
    """One ingestion in a fresh process: wall and CPU seconds inside `ingest` and serialising, counts, peak RSS
    growth."""

    ingest_s: float
    serialise_s: float
    ingest_cpu_s: float
    serialise_cpu_s: float
    traces: int
    records: int
    rejected: int
    peak_rss_growth_mb: float


@dataclass(frozen=True)
class Row:
    """One format at one input size: medians over the repeats, with the slowest and fastest rate. The CPU rate
    (input over this process's CPU seconds) is the per-core figure; the wall rates also count time the process
    waited for a core that other work held."""

    format: str
    input_mb: float
    files: int
    traces: int
    records: int
    rejected: int
    ingest_mb_s: float
    ingest_mb_s_min: float
    ingest_mb_s_max: float
    ingest_cpu_mb_s: float
    with_serialise_cpu_mb_s: float
    peak_rss_growth_mb: float
    repeats: int


def build_input(name: str, folder: Path, target_bytes: int) -> tuple[Path, int, int]:
    """A folder of at least `target_bytes` for format `name` made from its real samples: (path, bytes, files)."""
    source = samples_root() / name
    if not source.is_dir():
        raise SystemExit(f"no samples for {name} at {source}: set COMPOSER_SHARED_DATA")
    folder.mkdir(parents=True)
    if name == "aider":
        return folder, _repeat_aider(source, folder, target_bytes), 1
    entries = sorted(source.iterdir())
    written = copies = 0
    while written < target_bytes:
        for entry in entries:
            written += _copy_entry(entry, folder / f"{copies:06d}-{entry.name}")
            copies += 1
    return folder, written, copies


def _repeat_aider(source: Path, folder: Path, target_bytes: int) -> int:
    """One history file: the sample (cut after whole sessions when that is enough), then its sessions (from the
    first header on) again and again until large enough."""
    sample = next(source.glob("*.md")).read_bytes()
    sessions = sample[sample.index(AIDER_HEADER):]
    cut = sample.find(b"\n" + AIDER_HEADER, target_bytes)
    if cut != -1:  # a small input: the sample's sessions up to the first header past the target
        sample = sample[:cut + 1]
    if not sample.endswith(b"\n"):
        raise SystemExit("the aider sample does not end with a newline: its copies would join two lines")
    target = folder / "big.aider.chat.history.md"
    with target.open("wb") as sink:
        sink.write(sample)
        written = len(sample)
        while written < target_bytes:
            sink.write(sessions)
            written += len(sessions)
    return written


def _copy_entry(entry: Path, target: Path) -> int:
    """Copy a sample file or folder (a session stored as one file per event); its size in bytes."""
    if entry.is_dir():
        shutil.copytree(entry, target)
        return sum(path.stat().st_size for path in target.rglob("*") if path.is_file())
    shutil.copyfile(entry, target)
    return target.stat().st_size


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT


def current_rss_bytes() -> int:
    """Resident memory now (Linux /proc); elsewhere the peak so far, which can only understate the growth."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_rss_bytes()
    return pages * os.sysconf("SC_PAGE_SIZE")


def warm_up() -> None:
    """Ingest the SWE-agent samples once, so that imports, plugins and caches are loaded before timing."""
    from composer_core.traces.formats import IngestLog
    from composer_core.traces.ingest import ingest

    for trace in ingest([samples_root() / "swe_agent"], IngestLog()):
        trace.model_dump_json()


def ingest_once(path: Path) -> Run:
    """Ingest `path` as the command does (rejects kept in memory, traces serialised to nowhere) and time it."""
    from composer_core.traces.formats import IngestLog
    from composer_core.traces.ingest import ingest

    log, serialise_s, serialise_cpu_s = IngestLog(rejects_file=io.StringIO()), 0.0, 0.0
    gc.collect()
    before = current_rss_bytes()
    with open(os.devnull, "w", encoding="utf-8") as sink:
        started, started_cpu = time.perf_counter(), time.process_time()
        for trace in ingest([path], log):
            mark, mark_cpu = time.perf_counter(), time.process_time()
            sink.write(trace.model_dump_json() + "\n")
            serialise_s += time.perf_counter() - mark
            serialise_cpu_s += time.process_time() - mark_cpu
        total_s, total_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
    summary = log.summary()
    return Run(ingest_s=total_s - serialise_s, serialise_s=serialise_s, ingest_cpu_s=total_cpu_s - serialise_cpu_s,
               serialise_cpu_s=serialise_cpu_s, traces=summary["traces"],
               records=summary["records_read"], rejected=summary["records_rejected"],
               peak_rss_growth_mb=(peak_rss_bytes() - before) / MB)


def run_child(path: Path) -> Run:
    """`ingest_once` in a fresh interpreter, so peak RSS and caches start from the same state every time."""
    command = [sys.executable, "-m", "benchmarks.ingestion", "--child", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=Path(__file__).parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"ingesting {path} failed:\n{done.stderr}")
    return Run(**json.loads(done.stdout.strip().splitlines()[-1]))


def measure(name: str, size_mb: float, repeats: int, scratch: Path) -> Row:
    """Build the input for one format and size, ingest it `repeats` times, and summarise."""
    folder, size, files = build_input(name, scratch / f"{name}-{size_mb:g}", int(size_mb * MB))
    try:
        runs = [run_child(folder) for _ in range(repeats)]
    finally:
        shutil.rmtree(folder)
    rates = [size / MB / run.ingest_s for run in runs]
    total = [size / MB / (run.ingest_cpu_s + run.serialise_cpu_s) for run in runs]
    first = runs[0]
    return Row(format=name, input_mb=round(size / MB, 2), files=files, traces=first.traces, records=first.records,
               rejected=first.rejected, ingest_mb_s=round(statistics.median(rates), 2),
               ingest_mb_s_min=round(min(rates), 2), ingest_mb_s_max=round(max(rates), 2),
               ingest_cpu_mb_s=round(statistics.median(size / MB / run.ingest_cpu_s for run in runs), 2),
               with_serialise_cpu_mb_s=round(statistics.median(total), 2),
               peak_rss_growth_mb=round(statistics.median(run.peak_rss_growth_mb for run in runs), 1), repeats=repeats)


def profile(name: str, size_mb: float, scratch: Path, top: int = 30) -> str:
    """cProfile of one ingestion of a built input: the `top` functions by own time."""
    folder, _, _ = build_input(name, scratch / f"{name}-profile", int(size_mb * MB))
    warm_up()
    profiler = cProfile.Profile()
    profiler.runcall(ingest_once, folder)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def json_parser() -> str:
    """The JSON parser the trace readers use (reported with the results)."""
    from composer_core.traces import formats

    return str(getattr(formats, "JSON_PARSER", "json (stdlib)"))


def table(rows: list[Row]) -> str:
    lines = [f"{'format':<15} {'MB':>8} {'files':>6} {'traces':>7} {'MB/CPU-s':>9} {'wall MB/s (min-max)':>22} "
             f"{'+serialise':>10} {'peak RSS +MB':>12}"]
    for row in rows:
        spread = f"{row.ingest_mb_s:.1f} ({row.ingest_mb_s_min:.1f}-{row.ingest_mb_s_max:.1f})"
        lines.append(f"{row.format:<15} {row.input_mb:>8.1f} {row.files:>6} {row.traces:>7} "
                     f"{row.ingest_cpu_mb_s:>9.1f} {spread:>22} {row.with_serialise_cpu_mb_s:>10.1f} "
                     f"{row.peak_rss_growth_mb:>12.1f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingestion", description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--sizes-mb", nargs=2, type=float, default=[25.0, 100.0], metavar=("SMALL", "LARGE"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny inputs, one run each (a smoke test)")
    parser.add_argument("--profile", choices=FORMATS, help="print a cProfile of this format instead of measuring")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes_mb, args.repeats = [0.5, 1.0], 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        warm_up()
        print(json.dumps(asdict(ingest_once(args.child))))
        return 0
    with tempfile.TemporaryDirectory(prefix="ingestion-bench-") as scratch:
        if args.profile:
            print(profile(args.profile, args.sizes_mb[0], Path(scratch)))
            return 0
        rows = [measure(name, size, args.repeats, Path(scratch)) for name in args.formats for size in args.sizes_mb]
    print(table(rows))
    machine = {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "python": platform.python_version(), "platform": platform.platform()}
    data: dict[str, Any] = {"benchmark": "trace ingestion", "machine": machine, "json_parser": json_parser(),
                            "settings": {"sizes_mb": args.sizes_mb, "repeats": args.repeats},
                            "results": [asdict(row) for row in rows]}
    print(f"wrote {write_results(args.output, 'ingestion.json', data)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
