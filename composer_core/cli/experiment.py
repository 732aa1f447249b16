"""`composer-core experiment ladder`: does each composer channel help, on this model and task, at equal samples?"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from typing import Any

from composer_core.errors import ConfigError
from composer_core.experiment.ladder import PLOT_FILE, RESULT_FILE, run_ladder
from composer_core.experiment.settings import ARMS, LadderSettings, preset


def ladder_settings(args: argparse.Namespace) -> LadderSettings:
    """The preset for --model (or the embedded model), --quick applied, then the explicit options."""
    settings = preset(args.model, quick=args.quick)
    update: dict[str, Any] = {"backend": args.backend, "overrides": list(args.overrides)}
    if args.arms:
        unknown = [arm for arm in args.arms.split(",") if arm not in ARMS]
        if unknown:
            raise ConfigError(f"--arms: unknown arm(s) {unknown}; the arms are {', '.join(ARMS)}")
        update["arms"] = args.arms.split(",")
    for option in ("seeds", "distill_weight", "preference_weight"):
        if getattr(args, option) is not None:
            update[option] = getattr(args, option)
    if args.steps is not None:
        update["base"] = {**settings.base, "run": {**settings.base.get("run", {}), "max_steps": args.steps,
                                                   "save_steps": args.steps}}
    return LadderSettings.model_validate({**settings.model_dump(), **update})


def stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}; run the ladder again to resume it")


def ladder_command(args: argparse.Namespace) -> int:
    settings = ladder_settings(args)
    command = shlex.join(["composer-core", "experiment", "ladder", *sys.argv[3:]]) if len(sys.argv) > 2 else ""
    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)  # stop the running child as Ctrl-C does
    try:
        run_ladder(settings, args.output_dir, command=command)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"{args.output_dir}/{RESULT_FILE}\n{args.output_dir}/{PLOT_FILE}")
    return 0


def add_experiment_commands(commands: Any) -> None:
    experiment = commands.add_parser("experiment", help="experiments that measure what the composer channels do")
    kinds = experiment.add_subparsers(dest="experiment", required=True)
    ladder = kinds.add_parser("ladder", help="A1 GRPO, A2 + self-distillation, A3 + trace-replay DPO, A4 all: "
                                             "held-out reward over seeds at equal samples per step")
    ladder.add_argument("--output-dir", required=True,
                        help="where the runs, ladder.json and ladder.png go; run again on it to resume "
                             "(or to add seeds or arms)")
    ladder.add_argument("--model", help="model.path of every arm (a GGUF file, a saved folder or a hub id); default: "
                                        "the backend's embedded model. A model switches to the pretrained preset "
                                        "(A1 and A2, 2 seeds, number-only prompts)")
    ladder.add_argument("--quick", action="store_true", help="a few minutes: one seed, 4 steps, small files")
    ladder.add_argument("--arms", help=f"comma-separated subset of {','.join(ARMS)}")
    ladder.add_argument("--seeds", type=int, help="seeds per arm (0, 1, ...)")
    ladder.add_argument("--steps", type=int, help="training steps per run")
    ladder.add_argument("--distill-weight", type=float, help="distill.weight of A2 and A4 (default 0.5)")
    ladder.add_argument("--preference-weight", type=float, help="preference.weight of A3 and A4 (default 0.5)")
    ladder.add_argument("--backend", default="trl", help="the backend every run trains on")
    ladder.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="overrides of every arm's job config (run.learning_rate=5e-5)")
    ladder.set_defaults(run=ladder_command)
