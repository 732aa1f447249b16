"""`composer-core traces ...`: ingest real agent traces, describe them, and build training data from them."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from composer_core.errors import ConfigError, SpendCapReached
from composer_core.files import (
    atomic_directory,
    atomic_output,
    check_input,
    check_output,
    check_output_folder,
    same_path,
)
from composer_core.plugins import registries
from composer_core.replay.cache import ReplayCache
from composer_core.replay.pairs import pairs_to_dataset, write_pairs_jsonl
from composer_core.replay.runner import ReplayOptions, replay_traces
from composer_core.replay.teacher_config import load_teachers
from composer_core.replay.teachers import Budget
from composer_core.traces.contracts import Trace
from composer_core.traces.failures import find_error_turns
from composer_core.traces.formats import IngestLog
from composer_core.traces.ingest import check_named_paths, ingest
from composer_core.traces.store import read_records
from composer_core.traces.targets import SDTarget, TargetReport, build_all_targets


def _print_summary(title: str, summary: dict[str, Any]) -> None:
    print(f"{title}:", file=sys.stderr)
    for key, value in summary.items():
        print(f"  {key}: {value}", file=sys.stderr)


def _refuse_shared_paths(outputs: Mapping[str, Path]) -> None:
    """Refuse two outputs of one command that name the same file (the second would overwrite the first)."""
    named = list(outputs.items())
    for index, (first_flag, first) in enumerate(named):
        for second_flag, second in named[index + 1:]:
            if same_path(first, second):
                raise ConfigError(f"{first_flag} and {second_flag} both name {first}: one would overwrite the other; "
                                  "give different paths")


def ingest_command(args: argparse.Namespace) -> int:
    """Traces from agent files to one JSONL (a trace per line); rejects kept aside with file and line."""
    check_named_paths(args.paths)
    if args.format:
        registries().trace_formats.get(args.format)  # an unknown name fails here, before any output is opened
    out = Path(args.out)
    rejects = Path(args.rejects) if args.rejects else out.with_suffix(".rejects.jsonl")
    _refuse_shared_paths({"--out": out, "--rejects": rejects})
    with (atomic_output(out, args.paths, "--out") as sink,
          atomic_output(rejects, args.paths, "--rejects") as reject_sink):
        log = IngestLog(rejects_file=reject_sink)
        for trace in tqdm(ingest(args.paths, log, args.format), desc="traces", unit=" traces", file=sys.stderr):
            sink.write(trace.model_dump_json() + "\n")
    summary = {**log.summary(), "out": str(out), "rejects": str(rejects)}
    _print_summary("ingest", summary)
    if args.json:
        print(json.dumps(summary))
    return 0


def trace_stats(traces: Any) -> dict[str, Any]:
    """Counts over a stream of traces: formats, roles, tool calls, failures, error turns, thinking-only turns."""
    formats: Counter[str] = Counter()
    roles: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    failure_kinds: Counter[str] = Counter()
    for trace in traces:
        formats[trace.format] += 1
        for message in trace.messages:
            roles[message.role] += 1
            counts["tool_calls"] += len(message.tool_calls)
            counts["failed_tool_results"] += message.failed
            counts["thinking_only_assistant"] += bool(message.role == "assistant" and message.thinking
                                                      and not message.content.strip() and not message.tool_calls)
        for turn in find_error_turns(trace):
            failure_kinds[turn.failure.kind] += 1
            target = trace.messages[turn.target_index]
            counts["error_turns_with_thinking_only_target"] += bool(target.thinking and not target.content.strip()
                                                                    and not target.tool_calls)
    return {"traces": sum(formats.values()), "by_format": dict(formats), "messages_by_role": dict(roles),
            **dict(counts), "error_turns": sum(failure_kinds.values()), "error_turns_by_kind": dict(failure_kinds)}


def stats_command(args: argparse.Namespace) -> int:
    print(json.dumps(trace_stats(read_records(args.traces, Trace, "traces file")), indent=2))
    return 0


def targets_command(args: argparse.Namespace) -> int:
    """Self-distillation targets (student context, hinted teacher context, target message) from traces."""
    report = TargetReport()
    traces = read_records(check_input(args.traces, "traces file"), Trace)
    targets = build_all_targets(traces, report, provider=args.hint_provider, level=args.hint_level,
                                strip_thinking=args.strip_thinking, hint_role=args.hint_role)
    with atomic_output(args.out, [args.traces], "--out") as sink:
        for target in tqdm(targets, desc="targets", unit=" targets", file=sys.stderr):
            sink.write(target.model_dump_json() + "\n")
    summary = {**report.summary(), "out": args.out}
    _print_summary("targets", summary)
    if report.no_context_turns:
        print(f"note: {report.no_context_turns} error turns have no message before their target (a session whose "
              "start was not recorded): no context to distil or replay from, so no target was made", file=sys.stderr)
    if report.empty_targets:
        print(f"warning: {report.empty_targets} targets have nothing left to train on after --strip-thinking "
              "(their target message was pure thinking); they are kept and flagged empty_target", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    return 0


def _target_steps(path: str) -> dict[str, list[int]]:
    """Replay steps from a TARGETS.jsonl: the target message of each self-distillation target."""
    steps: dict[str, list[int]] = {}
    for target in read_records(path, SDTarget, "targets file"):
        steps.setdefault(target.trace_id, []).append(target.target_index)
    return steps


def _check_targets_match(steps: Mapping[str, list[int]], traces: str, targets: str) -> None:
    """Refuse targets that name traces the traces file does not hold (made from another file, or before a
    re-ingest renamed ids): they would be skipped, and the replay would quietly do less than asked."""
    missing = set(steps) - {trace.trace_id for trace in read_records(traces, Trace, "traces file")}
    if missing:
        examples = ", ".join(repr(name) for name in sorted(missing)[:3])
        raise ConfigError(f"{len(missing)} of the {len(steps)} traces named in the targets file {targets} are not in "
                          f"the traces file {traces} (for example {examples}): give the traces file the targets "
                          "were made from")


def _replay_paths(args: argparse.Namespace) -> tuple[list[str], str]:
    """Check every file replay reads and writes before any teacher is paid: the inputs exist and are regular
    files; no output is an input, shares a path with another output, or lies in a missing folder; --dataset
    does not replace a folder that is not a dataset. Returns the inputs and the cache path."""
    inputs = [str(check_input(args.traces, "traces file")), str(check_input(args.teachers, "teachers file"))]
    if args.targets:
        inputs.append(str(check_input(args.targets, "targets file")))
    cache = args.cache or str(Path(args.out).with_suffix(".cache.sqlite"))
    outputs = {"--out": Path(args.out), "--cache": Path(cache)}
    if args.dataset:
        outputs["--dataset"] = Path(args.dataset)
    _refuse_shared_paths(outputs)
    check_output(args.out, inputs, "--out")
    check_output(cache, inputs, "--cache")
    if args.dataset:
        _refuse_inside(Path(args.dataset), {"--out": Path(args.out), "--cache": Path(cache)})
        check_output_folder(args.dataset, [*inputs, args.out, cache], "--dataset")
        _refuse_foreign_folder(Path(args.dataset))
    return inputs, cache


def _refuse_inside(folder: Path, outputs: Mapping[str, Path]) -> None:
    """--dataset replaces its folder whole: refuse another output written inside it (it would be deleted)."""
    for flag, path in outputs.items():
        if path.resolve().is_relative_to(folder.resolve()):
            raise ConfigError(f"{flag} {path} lies inside --dataset {folder}, which is replaced whole when the dataset "
                              "is written: put it outside that folder")


def _refuse_foreign_folder(folder: Path) -> None:
    """--dataset replaces its folder whole: refuse one that holds something other than a saved dataset."""
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "dataset_info.json").is_file():
        raise ConfigError(f"--dataset {folder} is a folder that does not hold a saved dataset; writing the dataset "
                          "would replace everything in it: give a new or empty folder")


def replay_command(args: argparse.Namespace) -> int:
    """Replay traces with N teachers into preference pairs (channel 3, composer-core's own research channel)."""
    inputs, cache_path = _replay_paths(args)
    steps = _target_steps(args.targets) if args.targets else None
    if steps is not None:
        _check_targets_match(steps, args.traces, args.targets)
    budget = Budget(args.spend_cap)
    teachers = load_teachers(args.teachers, budget)
    options = ReplayOptions(steps=steps, max_steps_per_trace=args.max_steps_per_trace,
                            use_trace_outcome=args.use_trace_outcome, min_answers=args.min_answers,
                            max_concurrent_steps=args.max_concurrent_steps, progress=True)
    try:
        with ReplayCache(cache_path) as cache:
            result = replay_traces(read_records(args.traces, Trace, "traces file"), teachers, options, cache=cache)
    except SpendCapReached as error:
        print(f"composer-core: spend cap reached: {error}; the calls made so far are cached in {cache_path}: "
              "rerun with a higher --spend-cap to resume without paying for them again", file=sys.stderr)
        if error.report is not None:
            _print_summary("replay (partial)", error.report.model_dump(exclude={"errors"}))
        return 3
    written = write_pairs_jsonl(result.pairs, args.out, inputs)
    if args.dataset:
        with atomic_directory(args.dataset, [*inputs, args.out, cache_path], "--dataset") as folder:
            pairs_to_dataset(result.pairs).save_to_disk(str(folder))
    _print_summary("replay", {**result.report.model_dump(exclude={"errors"}), "out": args.out,
                              "written": written, "cache": cache_path})
    for failure in result.report.errors[:10]:
        print(f"  teacher {failure.teacher} failed at {failure.trace_id} step {failure.step}: {failure.error}",
              file=sys.stderr)
    if args.json:
        print(result.report.model_dump_json())
    return 0


def add_traces_commands(commands: Any) -> None:
    traces = commands.add_parser("traces", help="ingest agent traces and build training data from them")
    sub = traces.add_subparsers(dest="traces_command", required=True)
    ingest_parser = sub.add_parser("ingest", help="agent trace files -> TRACES.jsonl (format auto-detected)")
    ingest_parser.add_argument("paths", nargs="+", help="files or folders")
    ingest_parser.add_argument("--out", required=True, help="output JSONL, one trace per line")
    ingest_parser.add_argument("--format", help="force a format instead of detecting it")
    ingest_parser.add_argument("--rejects", help="where rejected records go (default: OUT.rejects.jsonl)")
    ingest_parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    ingest_parser.set_defaults(run=ingest_command)
    stats = sub.add_parser("stats", help="counts over TRACES.jsonl")
    stats.add_argument("traces")
    stats.set_defaults(run=stats_command)
    targets = sub.add_parser("targets", help="TRACES.jsonl -> self-distillation TARGETS.jsonl")
    targets.add_argument("traces")
    targets.add_argument("--out", required=True)
    targets.add_argument("--hint-provider", default="rules")
    targets.add_argument("--hint-level", type=int, default=2, choices=(1, 2, 3), help="1 terse ... 3 explicit")
    targets.add_argument("--hint-role", default="user", choices=("user", "system"))
    targets.add_argument("--strip-thinking", action="store_true",
                         help="drop thinking from contexts and targets (targets left empty are flagged)")
    targets.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    targets.set_defaults(run=targets_command)
    replay = sub.add_parser("replay", help="TRACES.jsonl -> preference PAIRS.jsonl by replaying steps with N "
                            "teachers (channel 3: composer-core's own research channel, not Cursor's recipe)")
    replay.add_argument("traces")
    replay.add_argument("--teachers", required=True, help="YAML/JSON list of teachers (kind openai or local_hf)")
    replay.add_argument("--out", required=True, help="preference pairs JSONL")
    replay.add_argument("--dataset", help="also save a Hugging Face dataset (TRL conversational format) here")
    replay.add_argument("--cache", help="sqlite cache of teacher calls (default: OUT.cache.sqlite)")
    replay.add_argument("--spend-cap", type=float, help="stop paying for calls beyond this many USD")
    replay.add_argument("--targets", help="replay only the target steps of this TARGETS.jsonl")
    replay.add_argument("--max-steps-per-trace", type=int)
    replay.add_argument("--use-trace-outcome", action="store_true",
                        help="choose the trace's own action when its tool results later succeeded")
    replay.add_argument("--min-answers", type=int, default=2)
    replay.add_argument("--max-concurrent-steps", type=int, default=4)
    replay.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    replay.set_defaults(run=replay_command)
