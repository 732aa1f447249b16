"""The trace ingestion benchmark keeps working: tiny inputs built from the real samples, every format measured,
the results file written (structure and positive rates only, never a timing threshold)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from shared_data import TRACES

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/ is a top-level package beside composer_core/

pytestmark = pytest.mark.skipif(not TRACES.is_dir(), reason=f"the shared trace samples are not at {TRACES}")


@pytest.fixture
def ingestion(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("COMPOSER_SHARED_DATA", str(TRACES.parent))
    from benchmarks import ingestion

    return ingestion


def test_quick_benchmark_measures_every_format_at_two_sizes(tmp_path: Path, ingestion: ModuleType) -> None:
    formats = ["aider", "claude_code", "openhands"]
    assert ingestion.main(["--quick", "--formats", *formats, "--output", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "ingestion.json").read_text())
    rows = data["results"]
    assert [(row["format"], index % 2) for index, row in enumerate(rows)] == [
        (name, size) for name in formats for size in (0, 1)]
    assert data["json_parser"].startswith("msgspec")
    for small, large in zip(rows[::2], rows[1::2], strict=True):
        assert 0 < small["input_mb"] < large["input_mb"] and small["traces"] < large["traces"]
    for row in rows:
        assert row["ingest_mb_s"] > 0 and row["ingest_cpu_mb_s"] > 0 and row["with_serialise_cpu_mb_s"] > 0
        assert row["repeats"] == 1
        assert row["ingest_mb_s_min"] <= row["ingest_mb_s"] <= row["ingest_mb_s_max"]
        assert row["records"] > 0 and row["rejected"] == 0 and row["peak_rss_growth_mb"] >= 0


@pytest.mark.parametrize("name", ["aider", "claude_code", "openhands", "gemini_cli"])
def test_built_inputs_are_valid_repeats_of_the_samples(tmp_path: Path, ingestion: ModuleType, name: str) -> None:
    """A built input reaches its size and reads without a single reject: the repeats keep every record valid."""
    from composer_core.traces.formats import IngestLog
    from composer_core.traces.ingest import ingest

    folder, size, files = ingestion.build_input(name, tmp_path / name, 300_000)
    assert size >= 300_000 and files >= 1
    log = IngestLog()
    traces = list(ingest([folder], log))
    assert traces and log.summary()["records_rejected"] == 0 and log.files == files


# The parser the benchmark led to (msgspec, the stdlib where msgspec refuses) reads every input as the stdlib did.

EDGE_CASES = [b'{"a": NaN, "b": Infinity, "c": -Infinity}', b'{"a": 1, "a": 2}',
              b'{"s": "\\ud83d\\ude00"}', b'{"n": 123456789012345678901234567890}', b'{"n": -18446744073709551617}',
              b'{"x": 1e400}', b'{"x": 0.1e-400}', b'{"s": "\xff\xfe"}', b'{"s": "\xed\xa0\x80"}', b'\xef\xbb\xbf{}',
              b'{"s": "a\x00b"}', b'{"a": 1,}', b'{"a": "open', b"", b"  \n", b'[1, 2] x', b"\xc2\xa0{}", b"1.5"]


@pytest.mark.parametrize("raw", EDGE_CASES)
def test_json_reads_as_the_standard_library_does(raw: bytes) -> None:
    from composer_core.traces.formats import loads

    def outcome(parse: Callable[[], object]) -> object:
        try:
            value = parse()
        except json.JSONDecodeError as error:
            return ("error", error.msg, error.lineno, error.colno)
        return ("value", repr(value), type(value).__name__)

    text = raw.decode("utf-8", errors="replace")
    expected = outcome(lambda: json.loads(text))
    assert outcome(lambda: loads(raw)) == expected
    assert outcome(lambda: loads(text)) == expected


def test_a_lone_surrogate_escape_reads_as_the_replacement_character() -> None:
    """The stdlib keeps a lone surrogate, which no UTF-8 output can hold (writing the trace or the reject would
    fail): it reads as U+FFFD, in values and keys, while an escaped pair stays the character it encodes."""
    from composer_core.traces.formats import loads

    raw = b'{"s": "a\\ud800b", "\\udfff": ["\\ud83d\\ude00", "\\uDBFF", NaN]}'
    value = loads(raw)
    assert value["s"] == "a\ufffdb" and value["\ufffd"][:2] == ["\U0001f600", "\ufffd"]
    assert json.dumps(value, ensure_ascii=False).encode()  # encodable as UTF-8
    assert loads(b'{"s": "\\ud83d\\ude00"}') == {"s": "\U0001f600"}


def test_jsonl_lines_and_numbers_as_a_text_mode_read_gives_them(tmp_path: Path) -> None:
    """CR and CRLF line ends, a line of Unicode spaces, a bad byte and a NaN: same records, numbers and rejects."""
    from composer_core.traces.formats import IngestLog, jsonl_records

    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"a": 1}\r\n{"b": NaN}\r{"c": "\xff"}\n\xc2\xa0\n{oops\n[1]\n{"d": 4}')
    log = IngestLog()
    records = [(where.line, value) for where, value in jsonl_records(path, "test", log)]
    assert repr(records) == repr([(1, {"a": 1}), (2, {"b": float("nan")}), (3, {"c": "\ufffd"}), (7, {"d": 4})])
    assert [(reject.line, reject.reason) for reject in log.examples] == [
        (5, "malformed JSON: Expecting property name enclosed in double quotes at column 2"),
        (6, "not a JSON object: a list")]
    assert log.read == 6


def test_json_nested_too_deeply_is_a_reject_not_a_crash(tmp_path: Path) -> None:
    from composer_core.traces.formats import IngestLog, jsonl_records

    path = tmp_path / "deep.jsonl"
    path.write_text('{"a": 1}\n' + "[" * 5000 + "]" * 5000 + "\n")
    log = IngestLog()
    assert [where.line for where, _ in jsonl_records(path, "test", log)] == [1]
    assert [(reject.line, reject.reason) for reject in log.examples] == [
        (2, "malformed JSON: nested too deeply at column 1")]
