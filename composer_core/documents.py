"""YAML and JSON documents read strictly: a duplicate key, an alias bomb or a binary file is a clear error.

Plain `yaml.safe_load` keeps the last of two equal keys (a setting silently lost), and builds alias-shared
structures whose expanded size can be exponential in the text (a few lines that take gigabytes once validated
or printed). Here a duplicate key names its line, and a document whose expanded size passes `MAX_NODES`, or
which refers to itself, is refused before anything walks it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from composer_core.errors import ConfigError
from composer_core.files import PathLike, read_text

MAX_NODES = 100_000


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise ConfigError(f"duplicate key {key!r} at line {line} (first at line {seen[key]}): remove one "
                                  "of them")
            seen[key] = line
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, f"unhashable mapping key {key!r}",
                                                    key_node.start_mark) from None
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ConfigError(f"duplicate key {key!r}: remove one of them")
        result[key] = value
    return result


def _check_size(document: Any) -> None:
    """Refuse self-reference and an expanded size above MAX_NODES (each distinct node is visited once)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, dict | list):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError("the document refers to itself (a recursive YAML alias); write the values out")
        open_nodes.add(key)
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        total = 1 + sum(size(child) for child in children)
        open_nodes.discard(key)
        sizes[key] = total
        if total > MAX_NODES:
            raise ConfigError(f"the document expands to more than {MAX_NODES} values (YAML aliases repeat "
                              "shared parts); a config this large is almost certainly an alias bomb")
        return total

    size(document)


def parse_document(text: str, *, json_format: bool, source: str) -> Any:
    """Parse YAML (a superset of JSON) or strict JSON text; errors name `source`."""
    try:
        if json_format:
            document = json.loads(text, object_pairs_hook=_refuse_duplicates)
        else:
            document = yaml.load(text, Loader=_StrictLoader)
        _check_size(document)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{source} is not valid {'JSON' if json_format else 'YAML'}: {error}") from None
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply to be a config") from None
    return document


def load_document(path: PathLike, what: str = "config file") -> Any:
    """Read a .json file as JSON and anything else as YAML, strictly (see the module docstring)."""
    path = Path(path)
    text = read_text(path, what)
    return parse_document(text, json_format=path.suffix.lower() == ".json", source=f"{what} {path}")
