"""`composer-core train`: one experiment config, trained on the backend this cluster has."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from composer_core.config import ComposerConfig
from composer_core.plugins import registries

# The main job's default: Composer's Dr.GRPO-like objective plus self-distillation from the task's
# feedback and hints (full-vocabulary JSD: the embedded model's vocabulary is small).
DEFAULT_JOB: dict[str, Any] = {
    "policy": {"objective": {"name": "dr_grpo"}},
    "distill": {"weight": 0.5, "support": "full", "alpha": 0.5},
}


def train_command(args: argparse.Namespace) -> int:
    config = ComposerConfig.from_file(args.config) if args.config else ComposerConfig.from_mapping(DEFAULT_JOB)
    if args.max_steps is not None:
        config = config.model_copy(update={"run": config.run.model_copy(update={"max_steps": args.max_steps})})
    backend = registries().backends.get(args.backend)
    if args.print_backend_config:
        print(backend.native_config(config))
        return 0
    summary = backend.train(config, output_dir=args.output_dir)
    print(json.dumps(summary, indent=2), file=sys.stderr)
    print(f"eval reward: {summary['eval_reward_before']:.2f} -> {summary['eval_reward_after']:.2f}")
    return 130 if summary.get("interrupted") else 0


def add_train_command(commands: Any) -> None:
    train = commands.add_parser("train", help="train with the composer loss (default: the embedded job on TRL)")
    train.add_argument("--config", help="a ComposerConfig (YAML/JSON); default: GRPO + self-distillation demo")
    train.add_argument("--backend", default="trl", help="where to train (see `composer-core plugins`)")
    train.add_argument("--output-dir", help="default: the config's run.output_dir")
    train.add_argument("--max-steps", type=int, help="override run.max_steps")
    train.add_argument("--print-backend-config", action="store_true",
                       help="print the backend's own configuration that the config maps to, and exit")
    train.set_defaults(run=train_command)
