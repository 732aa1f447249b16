"""The aider ingester on the real 4.2 MB chat history in shared/data/traces/aider, and on bad input."""

from __future__ import annotations

import re
import tempfile
import tracemalloc
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shared_data import TRACES
from trace_fuzz import read_text

from composer_core.plugins import registries
from composer_core.traces import aider, aider_lines, aider_messages
from composer_core.traces.contracts import Message, Trace
from composer_core.traces.formats import IngestLog

HISTORY = TRACES / "aider" / "Aider-AI__aider__chat-history.md"
CLINE_FIXTURES = Path(__file__).resolve().parent / "data" / "traces" / "cline"
STEM = HISTORY.stem

needs_history = pytest.mark.skipif(not HISTORY.is_file(), reason=f"real aider history not found at {HISTORY}")


def accounted(log: IngestLog) -> bool:
    return log.read == log.used + sum(log.skipped.values()) + sum(log.rejected.values())


def parse(path: Path) -> tuple[list[Trace], IngestLog]:
    log = IngestLog()
    return list(aider.read(path, log)), log


def write(tmp_path: Path, text: str | bytes, name: str = "history.md") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


@pytest.fixture(scope="module")
def real() -> tuple[list[Trace], IngestLog]:
    if not HISTORY.is_file():
        pytest.skip(f"real aider history not found at {HISTORY}")
    return parse(HISTORY)


def session(traces: list[Trace], header_line: int) -> Trace:
    return next(trace for trace in traces if trace.trace_id == f"{STEM}:{header_line}")


def at_line(traces: list[Trace], line: int) -> tuple[Trace, int]:
    """The trace and index of the message that starts at a line of the file."""
    for trace in traces:
        for index, message in enumerate(trace.messages):
            if message.provenance.line == line:
                return trace, index
    raise AssertionError(f"no message starts at line {line}")


def output(message: Message) -> str:
    assert message.tool_result is not None
    return message.tool_result.output


# --- the real file -------------------------------------------------------------------------------------------


def test_real_history_has_1133_sessions_and_a_headerless_preamble(real: tuple[list[Trace], IngestLog]) -> None:
    traces, log = real
    headed = [trace for trace in traces if trace.started_at is not None]
    assert len(headed) == 1133 and len(traces) == 1134
    preamble = traces[0]
    assert preamble.trace_id == f"{STEM}:1" and preamble.meta["headerless"] is True
    assert [(m.role, m.provenance.line) for m in preamble.messages] == [("tool", 2), ("user", 48), ("tool", 90)]
    assert preamble.messages[1].content.startswith("# Fix any errors below, if possible.")
    first = traces[1]
    assert first.trace_id == f"{STEM}:94" and first.started_at == datetime(2024, 8, 5, 19, 33, 2)
    assert first.messages == [] and first.agent_version == "0.47.2-dev"
    assert sum(not trace.messages for trace in headed) == 453
    assert log.rejected == {} and dict(log.skipped) == {"emacs mode line": 1} and accounted(log)


def test_real_session_user_edit_and_result(real: tuple[list[Trace], IngestLog]) -> None:
    trace = session(real[0], 103)
    assert trace.started_at == datetime(2024, 8, 5, 19, 33, 32)
    assert trace.model == "claude-3-5-sonnet-20240620" and trace.agent_version == "0.47.2-dev"
    assert trace.meta["edit_format"] == "diff" and trace.meta["weak_model"] == "claude-3-haiku-20240307"
    assert trace.task == "Use the Spinner instead of the inlined custom spinner"
    user, reply, result = trace.messages[:3]
    assert (user.role, user.provenance.line) == ("user", 113)
    assert user.content == "Use the Spinner instead of the inlined custom spinner"
    assert (reply.role, reply.provenance.line) == ("assistant", 115)
    assert reply.content.startswith("Certainly! I'll modify the `run_install` function")
    [call] = reply.tool_calls
    assert call.id == "edit@119" and call.name == "edit" and isinstance(call.arguments, dict)
    assert call.arguments["path"] == "aider/utils.py"
    assert call.arguments["search"].startswith("def run_install(cmd):")
    assert 'spinner = Spinner("Installing...")' in call.arguments["replace"]
    assert result.role == "tool" and result.provenance.line == 209 and result.tool_result is not None
    assert result.tool_result.call_id == "edit@119" and result.tool_result.name == "edit"
    assert not result.failed and "Applied edit to aider/utils.py" in output(result)
    assert [(m.role, m.content) for m in trace.messages[3:]] == [("user", "/diff"), ("user", "/ex")]


def test_real_edit_format_failures_and_their_retries(real: tuple[list[Trace], IngestLog]) -> None:
    traces = real[0]
    failures = [(trace, index) for trace in traces for index, message in enumerate(trace.messages)
                if message.role == "tool" and "The LLM did not conform to the edit format." in output(message)]
    assert len(failures) == 55
    assert all(trace.messages[index].failed and trace.messages[index].tool_result.name == "edit"  # type: ignore[union-attr]
               for trace, index in failures)
    retried = [(trace, index) for trace, index in failures if index + 1 < len(trace.messages)
               and trace.messages[index + 1].role == "assistant" and trace.messages[index + 1].tool_calls]
    assert len(retried) == 39
    assert sum("failed to match" in output(m) for t in traces for m in t.messages if m.role == "tool") == 47
    # line 3922: a SEARCH block failed to match; the retry at 3956 is applied at 4005
    trace, index = at_line(traces, 3922)
    failed, retry, applied = trace.messages[index:index + 3]
    assert failed.failed and "SEARCH/REPLACE block failed to match" in output(failed)
    assert retry.role == "assistant" and retry.provenance.line == 3956
    assert [call.id for call in retry.tool_calls] == ["edit@3960"]
    assert applied.tool_result is not None and applied.tool_result.call_id == "edit@3960"
    assert not applied.failed and "Applied edit to tests/basic/test_main.py" in output(applied)


def test_real_command_results(real: tuple[list[Trace], IngestLog]) -> None:
    traces = real[0]
    trace, index = at_line(traces, 2144)
    command, result = trace.messages[index:index + 2]
    assert command.content == "/test pytest tests/basic/test_repomap.py"
    assert result.tool_result is not None and result.tool_result.name == "test" and result.failed
    assert "1 failed, 6 passed" in output(result)
    trace, index = at_line(traces, 28111)
    assert trace.messages[index].tool_result.name == "test"  # type: ignore[union-attr]
    assert not trace.messages[index].failed and "4 passed" in output(trace.messages[index])
    trace, index = at_line(traces, 42575)
    lint = trace.messages[index].tool_result
    assert lint is not None and lint.name == "lint" and lint.exit_code == 1 and lint.failed


def test_real_interrupted_reply_keeps_its_unterminated_block_raw(real: tuple[list[Trace], IngestLog]) -> None:
    calls = {call.id: call for trace in real[0] for message in trace.messages for call in message.tool_calls}
    assert len(calls) == 704 and sum(isinstance(call.arguments, str) for call in calls.values()) == 37
    interrupted = calls["edit@67116"]
    assert isinstance(interrupted.arguments, str)
    assert interrupted.arguments.startswith("<<<<<<< SEARCH\n    register_models(")


def test_real_provenance_lines_point_at_the_message(real: tuple[list[Trace], IngestLog]) -> None:
    lines = HISTORY.read_text(encoding="utf-8").split("\n")
    prefixes = {"user": ("####",), "tool": (">",)}
    for trace in real[0]:
        if trace.started_at is not None:
            assert lines[int(trace.trace_id.rsplit(":", 1)[1]) - 1].startswith("# aider chat started at ")
        for message in trace.messages:
            assert message.provenance.format == "aider" and message.provenance.file == str(HISTORY)
            first = lines[message.provenance.line - 1]  # type: ignore[operator]
            if message.role == "assistant":
                assert first.strip() and not first.startswith(("####", ">"))
            else:
                assert first.startswith(prefixes[message.role])


@needs_history
def test_streams_one_session_at_a_time_with_flat_memory(tmp_path: Path) -> None:
    big = write(tmp_path, HISTORY.read_bytes() * 3, "big.aider.chat.history.md")
    log = IngestLog()
    sessions = aider.read(big, log)
    next(sessions)
    assert log.read < 10, "the first session must come before the file is read through"
    tracemalloc.start()
    count = 1 + sum(1 for _ in sessions)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 3 * 1133 + 1
    assert peak < big.stat().st_size / 4, f"peak {peak} bytes for a {big.stat().st_size} byte file"


# --- detection -----------------------------------------------------------------------------------------------


@needs_history
def test_detects_only_aider_histories(tmp_path: Path) -> None:
    assert aider.detect(HISTORY)
    assert aider.detect(write(tmp_path, "", ".aider.chat.history.md"))
    others = [path for path in TRACES.rglob("*") if path.name != "MANIFEST.md" and "aider" not in path.parts]
    assert others and not [path for path in others if aider.detect(path)]
    assert not [path for path in CLINE_FIXTURES.iterdir() if aider.detect(path)]
    assert not aider.detect(tmp_path)


@needs_history
def test_no_other_format_claims_the_history() -> None:
    claims = [entry.name for entry in registries().trace_formats if entry.item.detect(HISTORY)]
    assert claims == ["aider"]


# --- small histories: layout rules and bad input ------------------------------------------------------------

REPLY_WITH_QUOTE = """# aider chat started at 2024-09-01 10:00:00

> Aider v0.52.0|
> Main model: gpt-4o with diff edit format|
> Weak model: gpt-4o-mini|

#### explain the change|

Here is a quote:

> quoted text in the reply

#### A Markdown heading in the reply

Done.

> Tokens: 1k sent, 20 received.
Cost: $0.01 message, $0.01 session.|

#### /run false|
> exit code: 2|
""".replace("|\n", "  \n")  # `|` marks aider's two trailing spaces


def test_quotes_and_headings_stay_in_the_reply_and_multi_line_output_ends_it(tmp_path: Path) -> None:
    [trace], log = parse(write(tmp_path, REPLY_WITH_QUOTE))
    assert trace.model == "gpt-4o" and trace.agent_version == "0.52.0" and trace.meta["weak_model"] == "gpt-4o-mini"
    roles = [(m.role, m.provenance.line) for m in trace.messages]
    assert roles == [("user", 7), ("assistant", 9), ("tool", 17), ("user", 20), ("tool", 21)]
    reply = trace.messages[1].content
    assert "> quoted text in the reply" in reply and "#### A Markdown heading in the reply" in reply
    assert output(trace.messages[2]) == "Tokens: 1k sent, 20 received.\nCost: $0.01 message, $0.01 session."
    run = trace.messages[4].tool_result
    assert run is not None and run.name == "run" and run.exit_code == 2 and run.failed
    assert accounted(log) and log.rejected == {}


def test_truncated_copy_rejects_the_cut_message(tmp_path: Path) -> None:
    text = REPLY_WITH_QUOTE.encode()
    cut = text[:text.index(b"Done.") + 3]
    [trace], log = parse(write(tmp_path, cut))
    assert trace.meta["truncated"] is True
    assert [m.role for m in trace.messages] == ["user"]
    [reject] = log.examples
    assert reject.line == 15 and reject.reason.startswith("truncated") and reject.file.endswith("history.md")
    assert accounted(log)


def test_bad_timestamp_nul_bytes_and_bad_utf8_are_rejected_with_their_line(tmp_path: Path) -> None:
    text = (b"# aider chat started at yesterday\n\n#### hello  \n\nreply \x00 with a NUL\n\n#### next \xff  \n\n"
            b"fine reply\n")
    [trace], log = parse(write(tmp_path, text))
    assert trace.started_at is None and [m.role for m in trace.messages] == ["user", "assistant"]
    assert [(r.line, r.reason.split(":")[0]) for r in log.examples] == [
        (1, "bad session timestamp 'yesterday'"), (5, "binary content"), (7, "not UTF-8 text")]
    assert [m.content for m in trace.messages] == ["hello", "fine reply"] and accounted(log)


def test_binary_garbage_never_crashes(tmp_path: Path) -> None:
    garbage = write(tmp_path, bytes(range(256)) * 64 + b"\n\x00\x01 no newline at the end")
    assert not aider.detect(garbage)
    traces, log = parse(garbage)
    assert traces == [] and log.used == 0 and log.rejected and accounted(log)


def test_over_long_lines_are_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aider_lines, "MAX_LINE_BYTES", 64)
    text = "# aider chat started at 2024-09-01 10:00:00\n\n#### hi  \n\n" + "x" * 500 + "\nmore\n"
    [trace], log = parse(write(tmp_path, text))
    assert [m.role for m in trace.messages] == ["user"]
    assert [(r.line, r.reason) for r in log.examples] == [(5, "line longer than 64 bytes")] and accounted(log)


def test_empty_file_gives_nothing(tmp_path: Path) -> None:
    traces, log = parse(write(tmp_path, ""))
    assert traces == [] and log.read == 0


def test_edit_blocks_reuse_the_last_path_and_keep_unterminated_blocks_raw(tmp_path: Path) -> None:
    text = ("# aider chat started at 2024-09-01 10:00:00\n\n#### change it  \n\n"
            "a.py\n```python\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE\n```\n\n"
            "```python\n<<<<<<< SEARCH\ny = 1\n=======\ny = 2\n>>>>>>> REPLACE\n```\n\n"
            "b.py\n```python\n<<<<<<< SEARCH\nz = 1\n")
    [trace], _ = parse(write(tmp_path, text))
    calls = trace.messages[1].tool_calls
    assert [call.arguments for call in calls[:2]] == [{"path": "a.py", "search": "x = 1", "replace": "x = 2"},
                                                    {"path": "a.py", "search": "y = 1", "replace": "y = 2"}]
    assert calls[2].arguments == "<<<<<<< SEARCH\nz = 1" and calls[2].id == "edit@24"


def test_windows_line_endings_parse_the_same(tmp_path: Path) -> None:
    [unix], _ = parse(write(tmp_path, REPLY_WITH_QUOTE))
    [windows], _ = parse(write(tmp_path, REPLY_WITH_QUOTE.replace("\n", "\r\n"), "crlf.md"))
    assert [(m.role, m.content, m.provenance.line) for m in windows.messages] == [
        (m.role, m.content, m.provenance.line) for m in unix.messages]
    assert windows.messages[2].tool_result == unix.messages[2].tool_result


LINES = ("# aider chat started at 2024-09-01 10:00:00", "# aider chat started at never", "", "  ", "#### ask  ",
         "#### ", "####", "> out  ", "> multi", ">  ", ">", "reply", "path.py", "```python", "```",
         "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE", "> The LLM did not conform to the edit format.  ",
         "#### /run make  ", "> exit code: 1  ", "tail  ", "-*- mode: fundamental -*-")


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.sampled_from(LINES) | st.text(max_size=6), max_size=40), final_newline=st.booleans())
def test_arbitrary_lines_never_crash_and_are_all_accounted(lines: list[str], final_newline: bool) -> None:
    text = "\n".join(lines) + ("\n" if final_newline else "")
    read_text(aider.read, text, ".md")


# --- bulk reading: runs of lines taken at once must read exactly as the line-by-line rules -------------------

TRICKY_LINES = (
    *LINES, "> x   ", "> x    ", ">  ", ">\t  ", ">x  ", "> > nested  ", "#### > quoted  ", "####\t", "#####  ",
    "# heading", "x  ", "x   ", "  ", "\t", "\u00a0", "\x1c", "\u2028", "\u00e9  ", "x\u00a0  ", "a\rb",
    "<<<<<<< SEARCH  ", "=======  ", ">>>>>>> REPLACE  ", "> Applied edit to a.py  ", "#### /test pytest  ",
    "> 2 failed, 1 passed  ", "> exit status 3  ", "> EX\u0130T code: 4  ", "```",
    "# aider chat started at 2024-09-02 11:00:00  ")


def physical_line(chunk: bytes) -> tuple[str, str | None]:
    """One line's bytes (with its newline, unless it is an unterminated last line): its text and problem."""
    if len(chunk.removesuffix(b"\n")) >= aider_lines.MAX_LINE_BYTES:
        return "", f"line longer than {aider_lines.MAX_LINE_BYTES} bytes"
    return aider_lines.decode_line(chunk)


def read_line_by_line(path: Path, log: IngestLog) -> list[Trace]:
    """The reference: every physical line decoded and fed on its own, with no run taken at once."""
    parser = aider.Parser(path, log)
    chunks = [chunk + b"\n" for chunk in path.read_bytes().split(b"\n")]
    chunks[-1] = chunks[-1][:-1]  # b"" after a final newline, else an unterminated last line
    lines = [physical_line(chunk) for chunk in chunks if chunk]
    traces = [trace for line in lines if (trace := parser.feed_line(*line)) is not None]
    return traces + [trace for trace in [parser.finish()] if trace is not None]


def outcome(traces: list[Trace], log: IngestLog) -> tuple[list[str], dict, list[str]]:
    return [trace.model_dump_json() for trace in traces], log.summary(), [r.model_dump_json() for r in log.examples]


def assert_reads_as_line_by_line(path: Path) -> None:
    bulk_log, reference_log = IngestLog(), IngestLog()
    assert outcome(list(aider.read(path, bulk_log)), bulk_log) == outcome(read_line_by_line(path, reference_log),
                                                                         reference_log)


line_ends = st.sampled_from(["\n", "\n", "\n", "\r\n", "\r\r\n"])


@settings(max_examples=400, deadline=None)
@given(lines=st.lists(st.tuples(st.sampled_from(TRICKY_LINES) | st.text(max_size=5), line_ends), max_size=60),
       final_newline=st.booleans(), read_bytes=st.sampled_from([1, 3, 16, 1 << 16]),
       line_limit=st.sampled_from([8, 40, 1 << 20]))
def test_runs_taken_at_once_read_as_the_lines_one_by_one(lines: list[tuple[str, str]], final_newline: bool,
                                                        read_bytes: int, line_limit: int) -> None:
    """Whatever the lines, the read size (so where a block of lines ends, in the middle of a run too) and the line
    limit (an over-long line inside a run), reading in runs gives the traces, log and rejects of the line-by-line
    rules."""
    text = "".join(line + end for line, end in lines)
    text = text if final_newline else text.rstrip("\r\n")
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        patch.setattr(aider_lines, "READ_BYTES", read_bytes)
        patch.setattr(aider_lines, "MAX_LINE_BYTES", line_limit)
        path = write(Path(folder), text)
        assert_reads_as_line_by_line(path)


@needs_history
@pytest.mark.parametrize("read_bytes", [7, 4096, 1 << 16])
def test_real_history_reads_as_line_by_line_whatever_the_read_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  read_bytes: int) -> None:
    monkeypatch.setattr(aider_lines, "READ_BYTES", read_bytes)
    sample = HISTORY.read_bytes()[:600_000]
    assert_reads_as_line_by_line(write(tmp_path, sample[:sample.rindex(b"\n# aider chat") + 1]))


def test_crlf_and_lone_cr_line_ends(tmp_path: Path) -> None:
    """CR LF (and any CRs before the LF) end a line as LF does; a lone CR stays in the line's text."""
    [unix], _ = parse(write(tmp_path, REPLY_WITH_QUOTE))
    mixed = REPLY_WITH_QUOTE.replace("\n", "\r\r\n", 3).replace("Done.", "Done.\rstill the same line")
    [other], _ = parse(write(tmp_path, mixed, "mixed.md"))
    assert [m.provenance.line for m in other.messages] == [m.provenance.line for m in unix.messages]
    assert other.messages[1].content == unix.messages[1].content.replace("Done.", "Done.\rstill the same line")
    assert_reads_as_line_by_line(write(tmp_path, mixed, "again.md"))


def test_over_long_line_inside_an_output_rejects_that_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aider_lines, "MAX_LINE_BYTES", 64)
    text = ("# aider chat started at 2024-09-01 10:00:00\n\n#### /run make  \n> one  \n> " + "y" * 200 + "  \n"
            "> three  \n\n#### next  \n")
    [trace], log = parse(write(tmp_path, text))
    assert [(m.role, m.content) for m in trace.messages] == [("user", "/run make"), ("user", "next")]
    assert [(r.line, r.reason) for r in log.examples] == [(5, "line longer than 64 bytes")] and accounted(log)


def test_a_run_cut_by_the_read_size_reads_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block of lines that ends in the middle of a reply, an output or input changes nothing."""
    path = write(tmp_path, REPLY_WITH_QUOTE)
    [whole], _ = parse(path)
    for read_bytes in (1, 2, 5, 33):
        monkeypatch.setattr(aider_lines, "READ_BYTES", read_bytes)
        [cut], _ = parse(path)
        assert cut.model_dump_json() == whole.model_dump_json()


# --- message texts and results, against the definitions they replace ----------------------------------------

def block_text_by_line(kind: str, raw: str) -> str:
    """Each line without its two trailing spaces, then without its prefix and the space after it."""
    prefix = "####" if kind == "user" else ">"
    lines = []
    for text in raw.split("\n"):
        text = text.removesuffix("  ")
        lines.append(text[len(prefix) + 1:] if text.startswith(prefix + " ") or text == prefix else text)
    return "\n".join(lines).strip()


@settings(max_examples=3000, deadline=None)
@given(parts=st.lists(st.sampled_from(["> ", ">", "#### ", "####", " ", "  ", "x", "\n", "\t", "> > ", "#"]),
                      max_size=14), kind=st.sampled_from(["user", "tool"]))
def test_block_text_is_the_line_by_line_text(parts: list[str], kind: str) -> None:
    raw = "".join(parts)
    assert aider_messages.block_text(kind, raw) == block_text_by_line(kind, raw)  # type: ignore[arg-type]


COMMAND_FAILURE = re.compile(r"Traceback \(most recent call last\)|^FAILED |\b[1-9]\d* (?:failed|errors?)\b"
                             r"|\.{3,}Failed\b|exit code: [1-9]", re.M)
OUTPUT_WORDS = ["FAILED ", "\n", " ", "1", "0", "12", "a", "_", "\u0663", " failed", " errors", " error", "x",
                "....Failed", "exit code: ", "exit status ", "EXIT CODE ", "Ex\u0130t code: ", "ex\u0131t status: ",
                "-", "Traceback (most recent call last)", "\u017ftatus"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(OUTPUT_WORDS), max_size=10))
def test_command_failure_and_exit_code_read_as_the_single_patterns(words: list[str]) -> None:
    text = "".join(words)
    assert aider_messages.command_failed(text) == bool(COMMAND_FAILURE.search(text))
    codes = [int(match.group(1)) for match in aider_messages.EXIT_CODE.finditer(text)]
    assert aider_messages.exit_code(text) == next((code for code in codes if code != 0), 0 if codes else None)


def edit_calls_by_line(raw: str, start: int) -> list[dict]:
    """Every line tried as a SEARCH line; each block read on line by line to its divider and REPLACE line."""
    lines, calls, path, index = raw.split("\n"), [], "", 0
    while index < len(lines):
        if not aider_messages.SEARCH.fullmatch(lines[index]):
            index += 1
            continue
        path = aider_messages.edit_path(lines[max(0, index - 3):index]) or path
        divider, stop, arguments = None, len(lines), None
        for after in range(index + 1, len(lines)):
            if divider is None and aider_messages.SEARCH.fullmatch(lines[after]):
                stop = after
                break
            if divider is None and aider_messages.DIVIDER.fullmatch(lines[after]):
                divider = after
            elif divider is not None and aider_messages.REPLACE.fullmatch(lines[after]):
                stop, arguments = after + 1, {"path": path, "search": "\n".join(lines[index + 1:divider]),
                                              "replace": "\n".join(lines[divider + 1:after])}
                break
        calls.append({"id": f"edit@{start + index}", "name": "edit",
                      "arguments": arguments if arguments is not None else "\n".join(lines[index:stop])})
        index = stop
    return calls


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(["<<<<<<< SEARCH", "<<<<< SEARCH \t", "<<<< SEARCH", "=======", "=====", "====",
                                 ">>>>>>> REPLACE", ">>>>>>>>>> REPLACE", "a.py", "```python", "x = 1", "", "b c",
                                 "<<<<<<< SEARCH x", "=======x"]), max_size=16))
def test_edit_calls_read_as_line_by_line(lines: list[str]) -> None:
    raw = "\n".join(lines)
    assert aider_messages.edit_calls(raw, 7) == edit_calls_by_line(raw, 7)


def test_regex_whitespace_is_python_whitespace() -> None:
    """The runs' patterns use `\\s` where the parser's line tests use `str.isspace` and `strip`."""
    space = re.compile(r"\s")
    assert not [code for code in range(0x110000) if bool(space.match(chr(code))) != chr(code).isspace()]


def test_the_shortcuts_of_the_failure_and_exit_code_searches_hold_for_every_character() -> None:
    """`failure_count` takes a word character to be alphanumeric or `_`; `exit_code` takes every character that
    `exit` matches case-insensitively to lower to one of EXIT_LOWERED's letters."""
    word = re.compile(r"\w")
    assert not [code for code in range(0x110000) if bool(word.match(chr(code))) != (chr(code).isalnum()
                                                                                    or chr(code) == "_")]
    letters = re.compile("[xit]", re.I)
    assert {chr(code).lower() for code in range(0x110000) if letters.match(chr(code))} == {"x", "i", "t", "\u0131",
                                                                                            "i\u0307"}
