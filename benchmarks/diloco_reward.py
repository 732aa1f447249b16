"""Eval reward on the embedded task: 2 DiLoCo replicas against 1 replica that sees the same total samples.

Both arms train the default job (`composer-core train`'s: GRPO + self-distillation on the embedded model) for the
same number of optimizer steps from the same start; per step, each DiLoCo replica samples `prompts` prompts and the
single replica 2 x `prompts`, so both see the same number of samples in all (the single replica is what 2-way plain
data-parallel training of the same global batch computes). DiLoCo: sync every H inner steps, outer Nesterov SGD
(the diloco section's defaults), min_replicas 2 so that every outer step averages both replicas; replicas train with
run.seed + replica id. The training guard is off in both arms (a stop would end an arm early). The eval reward is
the greedy accuracy on the task's held-out prompts after training (identical on both DiLoCo replicas: same weights).

A third arm replaces the outer optimizer by plain averaging (outer SGD at lr 1 without momentum: every H steps the
replicas' weights are averaged), to separate the outer optimizer's effect from that of training apart.

Run `python -m benchmarks.diloco_reward [--seeds 0 1 2 3 4] [--steps 40] [--prompts 4] [--sync-every 8]`; writes
benchmarks/results/diloco_reward.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from composer_core.config import DEFAULT_JOB, ComposerConfig
from composer_core.files import write_text_atomic
from composer_core.plugins import registries
from composer_diloco.launcher import launch

RESULTS = Path(__file__).parent / "results"
EVAL_SIZE = 64


# the outer optimizer of each DiLoCo arm: the diloco section's defaults (the DiLoCo paper's), and plain averaging
OUTER = {"diloco_2_replicas": [], "averaging_2_replicas": ["diloco.outer_lr=1.0", "diloco.outer_momentum=0.0",
                                                           "diloco.nesterov=false"]}


def job(seed: int, steps: int, prompts: int, sync_every: int, outer: list[str] = ()) -> ComposerConfig:
    return ComposerConfig.from_mapping(DEFAULT_JOB, source="the default job", overrides=[
        f"run.seed={seed}", f"run.max_steps={steps}", f"run.prompts_per_step={prompts}", f"data.eval_size={EVAL_SIZE}",
        "guard.enabled=false", f"diloco.sync_every={sync_every}", "diloco.min_replicas=2", *outer])


def arm(name: str, train: Any, folder: Path) -> dict[str, Any]:
    """One training run: its eval rewards, steps and wall time."""
    began = time.perf_counter()
    summary = train(str(folder))
    seconds = time.perf_counter() - began
    if summary.get("interrupted"):
        raise SystemExit(f"{name}: stopped by {summary.get('signal')}; no result written")
    print(f"{name}: eval reward {summary['eval_reward_before']} -> {summary['eval_reward_after']} "
          f"({seconds:.0f} s)", file=sys.stderr)
    return {"eval_reward_before": summary["eval_reward_before"], "eval_reward_after": summary["eval_reward_after"],
            "steps": summary["steps"], "seconds": round(seconds, 1),
            **({"faults": summary["faults"], "weights_agree": summary["weights"]["agree"]}
               if "faults" in summary else {})}


def run_seed(seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"seed": seed}
    for name, outer in OUTER.items():
        config = job(seed, args.steps, args.prompts, args.sync_every, outer)
        row[name] = arm(f"seed {seed}, {name}", lambda out, config=config: launch(config, output_dir=out, replicas=2),
                        root / f"{name}-{seed}")
    single = job(seed, args.steps, 2 * args.prompts, args.sync_every)
    trl = registries().backends.get("trl")
    row["single_replica"] = arm(f"seed {seed}, single_replica", lambda out: trl.train(single, output_dir=out),
                                root / f"single-{seed}")
    return row


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    def cell(values: list[float]) -> str:
        spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.3f}{spread}"

    arms = [*OUTER, "single_replica"]
    lines = ["| seed | before | 2 replicas, DiLoCo (outer Nesterov SGD 0.7 / 0.9) | 2 replicas, averaging (outer "
             "SGD 1.0, no momentum) | 1 replica, same samples |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['seed']} | {row['single_replica']['eval_reward_before']:.3f} | "
                     + " | ".join(f"{row[name]['eval_reward_after']:.3f}" for name in arms) + " |")
    lines.append(f"| mean ± sd | {cell([row['single_replica']['eval_reward_before'] for row in rows])} | "
                 + " | ".join(cell([row[name]['eval_reward_after'] for row in rows]) for name in arms) + " |")
    lines.append(f"\n{args.steps} optimizer steps in every run; each DiLoCo replica {args.prompts} prompts per step, "
                 f"H = {args.sync_every}; one replica {2 * args.prompts} prompts per step; eval: {EVAL_SIZE} held-out "
                 "prompts, greedy.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of every run (the default job's 40)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step of each DiLoCo replica")
    parser.add_argument("--sync-every", type=int, default=8, help="DiLoCo's H")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="diloco-reward-") as root:
        rows = [run_seed(seed, args, Path(root)) for seed in args.seeds]
    text = table(rows, args)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "diloco_reward.json"
    command = "python -m benchmarks.diloco_reward " + " ".join(sys.argv[1:])
    write_text_atomic(out, json.dumps({"command": command.strip(), "machine": {"platform": platform.platform(),
                                                                              "cpus": os.cpu_count()},
                                       "settings": vars(args), "rows": rows, "table": text}, indent=2) + "\n",
                      what="benchmark results")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
