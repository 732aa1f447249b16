"""`composer-core train`: one experiment config, trained on the backend this cluster has."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any
from urllib.parse import urlsplit

from composer_core.config import DEFAULT_JOB, ComposerConfig  # DEFAULT_JOB: also what `config` shows
from composer_core.errors import ConfigError
from composer_core.guard import GUARD_EXIT_CODE
from composer_core.plugins import registries

DILOCO = "diloco"  # the backend the replica options below belong to (adapters/composer_diloco)
REPLICA_OPTIONS = (("lighthouse", "--lighthouse"), ("replica_id", "--replica-id"), ("replicas", "--replicas"))


def job_config(args: argparse.Namespace) -> ComposerConfig:
    """The config file (or the default job) with the command line's `key=value` overrides and --max-steps applied,
    validated as a whole exactly as a config file is."""
    overrides = [*args.overrides, *([f"run.max_steps={args.max_steps}"] if args.max_steps is not None else [])]
    if args.config:
        return ComposerConfig.from_file(args.config, overrides)
    return ComposerConfig.from_mapping(DEFAULT_JOB, source="the default train job", overrides=overrides)


def replica_options(args: argparse.Namespace) -> dict[str, Any]:
    """--lighthouse, --replica-id and --replicas as backend.train options, only those given; refused for a backend
    other than diloco, and in a combination that does not say one way to run (checked again by the backend)."""
    given = {name: getattr(args, name) for name, _ in REPLICA_OPTIONS if getattr(args, name) is not None}
    flags = [flag for name, flag in REPLICA_OPTIONS if name in given]
    if given and args.backend != DILOCO:
        raise ConfigError(f"{' and '.join(flags)} {'is' if len(flags) == 1 else 'are'} only for --backend {DILOCO} "
                          f"(replicas of a DiLoCo run); the "
                          f"{args.backend} backend trains without them: drop them or add --backend {DILOCO}")
    if ("lighthouse" in given) != ("replica_id" in given):
        raise ConfigError("--lighthouse and --replica-id go together: one replica joining a Lighthouse that runs "
                          "elsewhere (or give --replicas N to start N replicas and a Lighthouse here)")
    if "replicas" in given and "lighthouse" in given:
        raise ConfigError("--replicas starts a Lighthouse on this machine and --lighthouse joins a running one: "
                          "give one of them")
    return given


def lighthouse_url(value: str) -> str:
    """An http(s)://host:port address, as torchft_lighthouse prints it."""
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise argparse.ArgumentTypeError(f"expected the Lighthouse's address as http://HOST:PORT (its default port "
                                         f"is 29510), got {value!r}")
    return value


def count(minimum: int) -> Any:
    """An argparse type: an integer of at least `minimum`."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = minimum - 1
        if number < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer of at least {minimum}, got {value!r}")
        return number
    return parse


def exit_code(summary: dict[str, Any]) -> int:
    """0 for a finished run; GUARD_EXIT_CODE (3) for one the training guard stopped; for one stopped by a signal,
    128 + its number as a shell reports it (130 Ctrl-C); 1 for a run that failed (no DiLoCo replica finished)."""
    if (summary.get("guard") or {}).get("stopped"):
        return GUARD_EXIT_CODE
    if summary.get("failed"):
        return 1
    if not summary.get("interrupted"):
        return 0
    name = summary.get("signal")
    return 128 + int(signal.Signals[name]) if name in signal.Signals.__members__ else 130


def reward(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.2f}"


def eval_line(summary: dict[str, Any]) -> str:
    """The one stdout line of a run: its eval reward before and after, or why one was not measured."""
    before, after = summary["eval_reward_before"], summary["eval_reward_after"]
    stop = (summary.get("guard") or {}).get("stop")
    if stop:
        return (f"stopped by the training guard at step {stop['step']}: {stop['message']}; the last good state (step "
                f"{stop['last_good_step']}) is {stop['checkpoint']}, eval reward {reward(before)} -> {reward(after)} "
                f"(see {summary['guard']['report']})")
    if before is None:
        return "eval reward: not measured: data.eval is not set (no held-out prompts)"
    if after is None:
        return (f"eval reward: {before:.2f} -> not measured: stopped by {summary.get('signal') or 'a signal'} at step "
                f"{summary.get('steps')}; continue with --resume")
    return f"eval reward: {before:.2f} -> {after:.2f}"


def train_command(args: argparse.Namespace) -> int:
    """Train the job on the chosen backend (or print its native config); the summary goes to stderr."""
    config = job_config(args)
    backend = registries().backends.get(args.backend)
    replicas = replica_options(args)
    if args.print_backend_config:
        # run settings only when asked: a backend written before the option still works without them
        print(backend.native_config(config, run_settings=True) if args.with_run_settings
              else backend.native_config(config))
        return 0
    if args.with_run_settings:
        raise ConfigError("--with-run-settings only changes what --print-backend-config prints; add that option")
    options: dict[str, Any] = {"output_dir": args.output_dir, **replicas}
    if args.resume:
        options["resume"] = True
    try:
        summary = backend.train(config, **options)
    except KeyboardInterrupt as interrupt:  # stopped outside the training loop, before the summary was written
        print(f"composer-core: {interrupt or 'interrupted'} before the run could finish; nothing after its last "
              "checkpoint was saved", file=sys.stderr)
        return getattr(interrupt, "exit_code", 130)
    print(json.dumps(summary, indent=2), file=sys.stderr)
    print(eval_line(summary))
    return exit_code(summary)


def add_train_command(commands: Any) -> None:
    train = commands.add_parser("train", help="train with the composer loss (default: the embedded job on TRL)")
    train.add_argument("--config", help="a ComposerConfig (YAML/JSON); default: GRPO + self-distillation demo")
    train.add_argument("--backend", default="trl", help="where to train (see `composer-core plugins`)")
    train.add_argument("--output-dir", help="default: the config's run.output_dir")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="dotted overrides of the config, validated like the file (run.max_steps=10 "
                            "data.train=rows.jsonl 'reward=[my_rewards.py:score]')")
    train.add_argument("--max-steps", type=int, help="the same as run.max_steps=N")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in the output folder from its last checkpoint (an output folder that "
                            "holds a run is refused without it)")
    train.add_argument("--print-backend-config", action="store_true",
                       help="print the backend's own configuration that the config's composer loss maps to (to paste "
                            "into an existing job), and exit")
    train.add_argument("--with-run-settings", action="store_true",
                       help="with --print-backend-config: also print the config's run settings (learning rate, batch "
                            "shape, lengths, steps, saving, precision, logging, and run.trl on TRL), which would "
                            "replace the job's own")
    train.add_argument("--replicas", type=count(1), metavar="N",
                       help="--backend diloco: start a Lighthouse and N replicas as processes on this machine")
    train.add_argument("--lighthouse", type=lighthouse_url, metavar="URL",
                       help="--backend diloco: the Lighthouse (http://HOST:29510) of a run on several clusters; this "
                            "command trains one replica of it (with --replica-id)")
    train.add_argument("--replica-id", type=count(0), metavar="N",
                       help="--backend diloco, with --lighthouse: this replica's id, unique in the run (0, 1, ...)")
    train.set_defaults(run=train_command)
