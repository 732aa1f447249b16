"""One DiLoCo replica: the inner loop is the TRL backend's own job, wrapped by torchft's DiLoCo (composer_diloco.outer).

    python -m composer_diloco.replica --config CONFIG --output-dir DIR --replica-id N --lighthouse URL [--resume]
                                      [--host NAME]

CONFIG is a ComposerConfig file (the launcher passes the run's saved config.json); --lighthouse defaults to the
TORCHFT_LIGHTHOUSE environment variable; --host is the name the other replicas reach this one by (default: this
machine's hostname). DIR receives the inner backend's usual files (metrics.jsonl, summary.json, checkpoints, the
final model, which is the outer model) and diloco.json (composer_diloco.record). Every replica trains with
run.seed + N, so replicas sample different prompts and completions; advantages stay within each replica's groups.

--resume continues from DIR's last checkpoint on the schedule of the others; where DIR holds no checkpoint (a
replica killed before its first one), the previous attempt's files are set aside in DIR/aborted-K and the replica
starts fresh. Either way it heals from a live peer at its first sync.

Exit codes: 0 finished; 3 the training guard stopped it and it left the quorum; 1 its weights were not finite when a
sync was due (it left before its all-reduce; restarted with --resume it heals from a peer); 2 a configuration error;
128 + N a signal.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from composer_core.backends import Backend
from composer_core.cli.train import eval_line, exit_code
from composer_core.config import ComposerConfig
from composer_core.errors import ComposerError, ConfigError
from composer_core.plugins import registries
from composer_diloco.outer import NonFiniteWeights, TorchftDiloco
from composer_diloco.record import RECORD_FILE, ReplicaRecord

INNER_BACKEND = "trl"
ABORTED = "aborted-"


def replica_config(config: ComposerConfig, replica_id: int) -> ComposerConfig:
    """The config replica `replica_id` trains with: run.seed + replica_id, so that its data order and samples differ."""
    data = config.model_dump(mode="json")
    data["run"]["seed"] += replica_id
    return ComposerConfig.from_mapping(data, source=f"the config of replica {replica_id}")


def set_aside(folder: Path) -> Path:
    """Move what an earlier attempt left in `folder` (but diloco.json and earlier set-asides) to folder/aborted-K."""
    target = folder / f"{ABORTED}{sum(1 for entry in folder.glob(f'{ABORTED}*')) + 1}"
    target.mkdir()
    for entry in folder.iterdir():
        if entry.name != RECORD_FILE and not entry.name.startswith(ABORTED):
            entry.rename(target / entry.name)
    return target


def nothing_to_resume(error: ConfigError) -> bool:
    """The inner backend refused --resume because the folder holds no complete checkpoint (the TRL backend's
    messages, composer_trl.run_folder.resume_checkpoint)."""
    message = str(error)
    return message.startswith("--resume:") and "no checkpoint" in message


def train(backend: Backend, config: ComposerConfig, folder: Path, resume: bool, loop: TorchftDiloco
          ) -> dict[str, Any]:
    """The inner backend's job with the outer loop; a --resume with nothing to resume starts fresh."""
    try:
        return backend.train(config, output_dir=str(folder), resume=resume, outer_loop=loop)
    except ConfigError as error:
        if not resume or loop.started or not nothing_to_resume(error):
            raise
        aside = set_aside(folder)
        print(f"diloco: {error}; starting fresh (the earlier attempt's files are in {aside}); this replica heals "
              "from a live peer at its first sync", file=sys.stderr)
    return backend.train(config, output_dir=str(folder), outer_loop=loop)


def run_replica(config: ComposerConfig, *, replica_id: int, lighthouse: str, output_dir: str | None = None,
                resume: bool = False, host: str | None = None) -> dict[str, Any]:
    """Train replica `replica_id` of a DiLoCo run; returns the inner backend's summary with `diloco` (the record's
    path) added."""
    folder = Path(output_dir or config.run.output_dir)
    settings = config.diloco
    if config.run.max_steps % settings.sync_every:
        print(f"diloco: run.max_steps ({config.run.max_steps}) is not a multiple of diloco.sync_every "
              f"({settings.sync_every}): the last {config.run.max_steps % settings.sync_every} inner steps are never "
              "synced, and the final model is the last outer model", file=sys.stderr)
    record = ReplicaRecord(folder, replica_id, settings, resume=resume)
    loop = TorchftDiloco(settings, replica_id=replica_id, lighthouse=lighthouse, host=host or socket.gethostname(),
                         max_steps=config.run.max_steps, record=record)
    backend = registries().backends.get(INNER_BACKEND)
    try:
        summary = train(backend, replica_config(config, replica_id), folder, resume, loop)
    except BaseException as error:
        if loop.started:
            record.finish("interrupted" if isinstance(error, KeyboardInterrupt) else "failed", str(error) or None)
        raise
    finally:
        loop.close()
    stop = (summary.get("guard") or {}).get("stop")
    if stop:
        record.finish("left_quorum", f"the training guard stopped it at step {stop['step']}: {stop['message']}")
    else:
        record.finish("interrupted" if summary.get("interrupted") else "completed")
    return {**summary, "diloco": str(record.path)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m composer_diloco.replica", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a ComposerConfig file (YAML or JSON)")
    parser.add_argument("--output-dir", required=True, help="this replica's folder")
    parser.add_argument("--replica-id", type=int, required=True, help="0, 1, ...: unique in the run")
    parser.add_argument("--lighthouse", default=os.environ.get("TORCHFT_LIGHTHOUSE"),
                        help="the Lighthouse URL, e.g. http://host:29510 (default: $TORCHFT_LIGHTHOUSE)")
    parser.add_argument("--host", help="the name other replicas reach this one by (default: the hostname)")
    parser.add_argument("--resume", action="store_true", help="continue from this replica's last checkpoint")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.lighthouse:
        parser.error("--lighthouse is required (or set TORCHFT_LIGHTHOUSE)")
    if args.replica_id < 0:
        parser.error(f"--replica-id must be 0 or more, got {args.replica_id}")
    try:
        summary = run_replica(ComposerConfig.from_file(args.config), replica_id=args.replica_id,
                              lighthouse=args.lighthouse, output_dir=args.output_dir, resume=args.resume,
                              host=args.host)
    except ComposerError as error:
        print(f"composer_diloco.replica: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteWeights as error:
        print(f"composer_diloco.replica: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        print(f"composer_diloco.replica: {interrupt or 'interrupted'}", file=sys.stderr)
        return getattr(interrupt, "exit_code", 130)
    print(eval_line(summary))
    return exit_code(summary)


if __name__ == "__main__":
    sys.exit(main())
