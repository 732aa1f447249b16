"""The `composer-core` command."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections.abc import Sequence

from composer_core.cli.experiment import add_experiment_commands
from composer_core.cli.model import add_model_commands
from composer_core.cli.sandbox import add_sandbox_commands
from composer_core.cli.traces import add_traces_commands
from composer_core.cli.train import add_train_command
from composer_core.config import DEFAULT_JOB, ComposerConfig
from composer_core.errors import ComposerError, ConfigError, PluginError
from composer_core.plugins import Registries, plugin_sources, registries


def _describe(item: object) -> str:
    return getattr(item, "description", "") or ""


def _print_plugins(sources: dict[str, str]) -> None:
    print("plugins:")
    for name, source in sources.items():
        print(f"  {name}  ({source})")


def _listing(loaded: Registries) -> dict[str, list[dict[str, str]]]:
    return {kind: [{"name": entry.name, "plugin": entry.plugin, "source": entry.source,
                    "description": _describe(entry.item)} for entry in registry]
            for kind, registry in loaded.all().items()}


def plugins_command(args: argparse.Namespace) -> int:
    """List every registered objective, estimator, divergence and preference loss, and where it came from.

    When the plugins' registrations fail (two plugins registering one name, a hook that raises), the plugins
    and their distributions are still listed before the error, so the conflict can be diagnosed.
    """
    sources = plugin_sources()
    try:
        listing = _listing(registries())
    except PluginError as error:
        if args.json:
            print(json.dumps({"plugins": sources, "registries": None, "error": str(error)}, indent=2))
        else:
            _print_plugins(sources)
        raise
    if args.json:
        print(json.dumps({"plugins": sources, "registries": listing}, indent=2))
        return 0
    _print_plugins(sources)
    for kind, entries in listing.items():
        print(f"\n{kind.replace('_', ' ')}:")
        for entry in entries:
            print(f"  {entry['name']:<30} {entry['plugin']:<38} {entry['description']}")
    return 0


def _file_and_overrides(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """`config [FILE] [KEY=VALUE ...]`: the one item without `=` is the file."""
    files = [item for item in items if "=" not in item]
    if len(files) > 1:
        raise ConfigError(f"config takes one file, got {files}; overrides have the form section.key=value")
    return (files[0] if files else None), [item for item in items if "=" in item]


def _config_to_show(args: argparse.Namespace) -> tuple[ComposerConfig, str]:
    """The config the command shows and a line saying what it is."""
    file, overrides = _file_and_overrides(args.items)
    if file:
        return ComposerConfig.from_file(file, overrides), f"config file {file}"
    if args.library_defaults:
        return ComposerConfig.from_mapping({}, overrides=overrides), ("the library defaults, ComposerConfig(): every "
                                                                      "composer channel off")
    return (ComposerConfig.from_mapping(DEFAULT_JOB, source="the default train job", overrides=overrides),
            "no file given: the job `composer-core train` runs without --config (the library defaults, with "
            "self-distillation off: --library-defaults)")


def config_command(args: argparse.Namespace) -> int:
    """Validate a config and print it as JSON with every default filled in, including those the objective, its
    advantage estimator and the teacher-context builder supply; stderr says what was shown and what was filled."""
    config, what = _config_to_show(args)
    data, notes = config.resolved()
    print(json.dumps(data, indent=2))
    print(f"composer-core config: {what}", file=sys.stderr)
    for note in notes:
        print(f"  resolved {note}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="composer-core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    plugins = commands.add_parser("plugins", help="list what is registered and which plugin it came from")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(run=plugins_command)
    config = commands.add_parser("config", help="validate a ComposerConfig (YAML/JSON) and show it resolved")
    config.add_argument("items", nargs="*", metavar="FILE | KEY=VALUE",
                        help="a config file (omitted: the job `composer-core train` runs without --config) and dotted "
                             "overrides, as `train` takes them")
    config.add_argument("--library-defaults", action="store_true",
                        help="show ComposerConfig()'s defaults (composer channels off) instead of the train job")
    config.set_defaults(run=config_command)
    add_experiment_commands(commands)
    add_model_commands(commands)
    add_sandbox_commands(commands)
    add_traces_commands(commands)
    add_train_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user's mistake, Ctrl-C, a closed pipe or a full disk is one line on stderr, not a
    traceback (outputs are written atomically, so an interrupted command leaves the previous files)."""
    args = build_parser().parse_args(argv)
    gc.freeze()  # the imports' objects (torch's ~180,000) leave the collector: each full collection skips them
    try:
        return args.run(args)
    except ComposerError as error:
        print(f"composer-core: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("composer-core: interrupted; files it was writing were left as they were before", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the reader left (`| head`): no flush error
        return 141
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        print(f"composer-core: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1

