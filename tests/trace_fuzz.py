"""Robustness checks for trace ingesters: real lines with random parts replaced or removed, arbitrary objects
built from a format's own vocabulary, and lines that are not JSON objects at all."""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from composer_core.traces.contracts import Trace
from composer_core.traces.formats import IngestLog

Reader = Callable[[Path, IngestLog], Iterator[Trace]]
NOT_OBJECTS = ("{oops", "[1, 2]", "null", '"text"')


def samples(path: Path) -> list[Any]:
    """The JSON lines of a real sample file (none when the shared samples are absent)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def json_values(keys: Sequence[str], words: Sequence[str]) -> st.SearchStrategy[Any]:
    """JSON values whose keys and strings come mostly from the format, nested a few levels deep."""
    scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(list(words)) | st.text(max_size=4)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.sampled_from(list(keys)), inner, max_size=4), max_leaves=12)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place inside a JSON value, as the keys and indices leading to it."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


@st.composite
def mutated(draw: st.DrawFn, originals: Sequence[Any], values: st.SearchStrategy[Any]) -> Any:
    """A real record with up to three places replaced by a generated value or removed."""
    record = copy.deepcopy(draw(st.sampled_from(list(originals))))
    for _ in range(draw(st.integers(0, 3))):
        places = list(_paths(record))
        if not places:
            break
        *route, key = draw(st.sampled_from(places))
        parent = record
        for step in route:
            parent = parent[step]
        if draw(st.booleans()):
            parent[key] = draw(values)
        else:
            del parent[key]
    return record


def records(originals: Sequence[Any], keys: Sequence[str], words: Sequence[str]) -> st.SearchStrategy[Any]:
    """Mutated real records (mostly) and arbitrary objects from the vocabulary."""
    values = json_values(keys, words)
    arbitrary = st.dictionaries(st.sampled_from(list(keys)), values, max_size=6)
    return (mutated(originals, values) | arbitrary) if originals else arbitrary


def json_lines(originals: Sequence[Any], keys: Sequence[str], words: Sequence[str]) -> st.SearchStrategy[list[str]]:
    """A file's lines: generated records, now and then a line that is not JSON or not an object."""
    line = records(originals, keys, words).map(json.dumps) | st.sampled_from(NOT_OBJECTS)
    return st.lists(line, max_size=10)


def read_text(reader: Reader, text: str, suffix: str) -> IngestLog:
    """Read `text` as a file with `suffix`; every record must be used, skipped or rejected, exactly once."""
    log = IngestLog()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"fuzz{suffix}"
        path.write_text(text, encoding="utf-8")
        for trace in reader(path, log):
            assert all(message.provenance.file == str(path) for message in trace.messages)
    summary = log.summary()
    assert summary["records_read"] == (summary["records_used"] + summary["records_skipped"]
                                       + summary["records_rejected"])
    return log
