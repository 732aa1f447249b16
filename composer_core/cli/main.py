"""The `composer-core` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from composer_core.cli.traces import add_traces_commands
from composer_core.cli.train import add_train_command
from composer_core.config import ComposerConfig
from composer_core.errors import ComposerError
from composer_core.plugins import plugin_sources, registries


def _describe(item: object) -> str:
    return getattr(item, "description", "") or ""


def plugins_command(args: argparse.Namespace) -> int:
    """List every registered objective, estimator, divergence and preference loss, and where it came from."""
    listing = {kind: [{"name": entry.name, "plugin": entry.plugin, "source": entry.source,
                       "description": _describe(entry.item)} for entry in registry]
               for kind, registry in registries().all().items()}
    if args.json:
        print(json.dumps({"plugins": plugin_sources(), "registries": listing}, indent=2))
        return 0
    print("plugins:")
    for name, source in plugin_sources().items():
        print(f"  {name}  ({source})")
    for kind, entries in listing.items():
        print(f"\n{kind.replace('_', ' ')}:")
        for entry in entries:
            print(f"  {entry['name']:<30} {entry['plugin']:<38} {entry['description']}")
    return 0


def config_command(args: argparse.Namespace) -> int:
    """Validate a config file and print it with every default filled in."""
    config = ComposerConfig.from_file(args.file) if args.file else ComposerConfig()
    print(json.dumps(config.model_dump(mode="json"), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="composer-core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    plugins = commands.add_parser("plugins", help="list what is registered and which plugin it came from")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(run=plugins_command)
    config = commands.add_parser("config", help="validate a ComposerConfig (YAML/JSON) and show it resolved")
    config.add_argument("file", nargs="?", help="config file; omitted: the defaults")
    config.set_defaults(run=config_command)
    add_traces_commands(commands)
    add_train_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ComposerError as error:
        print(f"composer-core: error: {error}", file=sys.stderr)
        return 2

