"""Hostile inputs to the trace commands: outputs that name inputs, missing folders, symbolic link loops, FIFOs,
sockets, corrupt first lines, binary files, wrong files, and interrupted writes. Nothing is lost, nothing
hangs, nothing is silent: every refusal is a `composer-core: error:` naming the path, with exit code 2."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from shared_data import TRACES

from composer_core.cli.main import main
from composer_core.errors import ConfigError
from composer_core.replay.pairs import PreferencePair, read_pairs_jsonl, write_pairs_jsonl
from composer_core.traces.contracts import Message, Provenance, ToolCall, ToolResult, Trace
from composer_core.traces.failures import classify
from composer_core.traces.formats import IngestLog
from composer_core.traces.ingest import ingest
from composer_core.traces.targets import TargetReport, build_targets

SAMPLES = pytest.mark.skipif(not TRACES.is_dir(), reason=f"the shared trace samples are not at {TRACES}")
SWE = TRACES / "swe_agent"
CLAUDE = TRACES / "claude_code"
AIDER = TRACES / "aider" / "Aider-AI__aider__chat-history.md"
HERE = Provenance(format="synthetic", file="-")
DEADLINE_S = 120  # a bound on every wait below, never an assertion on duration


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The real `composer-core` entry point in this process: exit code, stdout, stderr."""
    code = main(["traces", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code, _, err = run(capsys, *args)
    assert code == 2, err
    assert "composer-core: error: " in err and "Traceback" not in err, err
    return err


@pytest.fixture
def traces_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """TRACES.jsonl ingested from the SWE-agent samples (small, with error turns)."""
    out = tmp_path / "traces.jsonl"
    assert run(capsys, "ingest", str(SWE), "--out", str(out))[0] == 0
    return out


@pytest.fixture
def teachers_file(tmp_path: Path) -> Path:
    path = tmp_path / "teachers.yaml"
    path.write_text("- {name: a, base_url: 'http://127.0.0.1:9/v1', model: a, max_retries: 0}\n")
    return path


# 1. An output that is an input (however spelt) is refused and the input is untouched.

@SAMPLES
@pytest.mark.parametrize("spelling", ["same", "symlink", "dotted"])
def test_targets_out_naming_its_input_is_refused(traces_file: Path, capsys: pytest.CaptureFixture[str],
                                                 spelling: str) -> None:
    before = digest(traces_file)
    out = {"same": traces_file, "dotted": traces_file.parent / "." / "x" / ".." / traces_file.name,
           "symlink": traces_file.parent / "link.jsonl"}[spelling]
    (traces_file.parent / "x").mkdir()
    if spelling == "symlink":
        out.symlink_to(traces_file)
    assert "also an input" in refused(capsys, "targets", str(traces_file), "--out", str(out))
    assert digest(traces_file) == before


@SAMPLES
def test_ingest_outputs_naming_inputs_or_each_other_are_refused(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "one.traj"
    shutil.copy(next(SWE.glob("*.traj")), source)
    before = digest(source)
    assert "also an input" in refused(capsys, "ingest", str(source), "--out", str(source))
    assert "also an input" in refused(capsys, "ingest", str(source), "--out", str(tmp_path / "o.jsonl"),
                                      "--rejects", str(source))
    assert "both name" in refused(capsys, "ingest", str(source), "--out", str(tmp_path / "o.jsonl"),
                                  "--rejects", str(tmp_path / "o.jsonl"))
    assert "inside the input folder" in refused(capsys, "ingest", str(tmp_path), "--out", str(tmp_path / "o.jsonl"))
    assert digest(source) == before and not (tmp_path / "o.jsonl").exists()


@SAMPLES
def test_replay_outputs_colliding_with_inputs_or_outputs_are_refused(
        traces_file: Path, teachers_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    pairs = str(tmp_path / "pairs.jsonl")
    base = ("replay", str(traces_file), "--teachers", str(teachers_file))
    before = {path: digest(path) for path in (traces_file, teachers_file)}
    cases = [(("--out", str(traces_file)), "also an input"),
             (("--out", pairs, "--cache", str(traces_file)), "also an input"),
             (("--out", pairs, "--cache", str(teachers_file)), "also an input"),
             (("--out", pairs, "--cache", pairs), "both name"),
             (("--out", pairs, "--dataset", pairs), "both name"),
             (("--out", str(keep / "p.jsonl"), "--dataset", str(keep)), "inside --dataset"),
             (("--out", pairs, "--dataset", str(keep)), "does not hold a saved dataset")]
    for extra, reason in cases:
        assert reason in refused(capsys, *base, *extra), extra
    assert {path: digest(path) for path in before} == before
    assert (keep / "notes.txt").read_text() == "precious" and not Path(pairs).exists()


# 2. A missing output folder, or an output under a regular file: a clear error.

@SAMPLES
def test_output_in_a_missing_folder_or_under_a_file_is_a_clear_error(traces_file: Path, teachers_file: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    missing, under_file = traces_file.parent / "nowhere" / "t.jsonl", traces_file / "t.jsonl"
    assert "does not exist" in refused(capsys, "targets", str(traces_file), "--out", str(missing))
    assert "is a file, not a folder" in refused(capsys, "targets", str(traces_file), "--out", str(under_file))
    assert "does not exist" in refused(capsys, "ingest", str(SWE), "--out", str(missing))
    assert "is a file" in refused(capsys, "replay", str(traces_file), "--teachers", str(teachers_file), "--out",
                                  str(traces_file.parent / "p.jsonl"), "--cache", str(under_file))


# 3. Symbolic link loops, FIFOs, sockets, devices: bounded walks, nothing read twice, nothing dropped silently.

@contextlib.contextmanager
def bounded(seconds: int = DEADLINE_S) -> Iterator[None]:
    """Fail instead of hanging: a real SIGALRM interrupts the block after `seconds` (a bound, not a measure)."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: a walk or read that never ends")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@SAMPLES
def test_symlink_loops_fifos_sockets_and_links_are_walked_once_and_reported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(SWE, tree / "swe")
    (tree / "swe" / "up").symlink_to("..")  # a loop
    (tree / "swe" / "root").symlink_to(tree.resolve())  # a second loop, absolute
    (tree / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tree / "again").symlink_to("swe")  # a second link to a folder
    first = sorted((tree / "swe").glob("*.traj"))[0]
    os.link(first, tree / "hard.traj")  # the same file under another name
    (tree / "dangling.json").symlink_to("nowhere")
    os.mkfifo(tree / "pipe.jsonl")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tree / "sock.jsonl"))
    try:
        with bounded():
            code, out, err = run(capsys, "ingest", str(tree), "--out", str(tmp_path / "out.jsonl"), "--json")
    finally:
        server.close()
    assert code == 0, err
    summary = json.loads(out)
    plain = IngestLog()
    assert summary["traces"] == len(list(ingest([SWE], plain))) == plain.traces  # every real trace once
    assert summary["files_skipped_by_reason"] == {
        "folder already walked (a symbolic link loop, or a second link to it)": 3,
        "file already read through another path (a symbolic or hard link to it)": 1,
        "hidden file that no trace format recognises": 1}
    rejects = {Path(json.loads(line)["file"]).name: json.loads(line)["reason"]
               for line in (tmp_path / "out.rejects.jsonl").read_text().splitlines()}
    assert set(rejects) == {"pipe.jsonl", "sock.jsonl", "dangling.json"}
    assert "not a regular file" in rejects["pipe.jsonl"] and "not a regular file" in rejects["sock.jsonl"]


@SAMPLES
def test_a_named_fifo_or_device_is_refused_by_every_command(tmp_path: Path, traces_file: Path, teachers_file: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    out = str(tmp_path / "o.jsonl")
    for args in (("ingest", str(fifo), "--out", out), ("ingest", "/dev/zero", "--out", out), ("stats", str(fifo)),
                 ("targets", str(fifo), "--out", out),
                 ("replay", str(fifo), "--teachers", str(teachers_file), "--out", out),
                 ("replay", str(traces_file), "--teachers", str(fifo), "--out", out),
                 ("replay", str(traces_file), "--teachers", str(teachers_file), "--targets", str(fifo), "--out", out),
                 ("replay", str(traces_file), "--teachers", str(teachers_file), "--out", out, "--cache", str(fifo))):
        assert "not a regular file" in refused(capsys, *args), args
    assert "does not exist" in refused(capsys, "ingest", str(tmp_path / "missing"), "--out", out)


@SAMPLES
def test_two_sessions_with_one_id_get_distinct_ids(tmp_path: Path) -> None:
    for project in ("one", "two"):
        (tmp_path / project).mkdir()
        shutil.copy(next(SWE.glob("*1458*")), tmp_path / project / "session.traj")
    log = IngestLog()
    traces = list(ingest([tmp_path], log))
    assert [trace.trace_id for trace in traces] == ["session", "session~2"]
    assert traces[1].meta["original_trace_id"] == "session" and log.trace_ids_renamed == 1


# 4. Detection looks past a corrupt or over-long first line; an unclaimed file is reported with its path.

@SAMPLES
@pytest.mark.parametrize("first_line", ["{not json at all\n", '{"pad": "' + "x" * (2 << 20) + '"'])
def test_a_bad_first_line_does_not_hide_a_file(tmp_path: Path, first_line: str) -> None:
    sample = max(CLAUDE.glob("*1af7fc5e*.jsonl"))
    damaged = tmp_path / sample.name
    damaged.write_text(first_line + "\n" + sample.read_text(encoding="utf-8"), encoding="utf-8")
    clean, broken = IngestLog(), IngestLog()
    expected = [trace.messages for trace in ingest([sample], clean)]
    assert [trace.messages and len(trace.messages) for trace in ingest([damaged], broken)] == [
        len(messages) for messages in expected]
    assert broken.rejected.total() == clean.rejected.total() + 1  # the bad line itself, with its line number
    assert broken.examples[-1].line == 1


def test_a_file_no_format_claims_is_rejected_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "notes.jsonl").write_text('{"hello": "world"}\n')
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 64)
    log = IngestLog()
    assert list(ingest([tmp_path], log)) == []
    assert sorted(Path(reject.file).name for reject in log.examples) == ["blob.bin", "notes.jsonl"]
    assert all("no registered trace format" in reject.reason for reject in log.examples)


# 5. A cache that is not sqlite, a wrong or missing pairs file, a binary input: clear errors, no traceback.

@SAMPLES
def test_wrong_files_are_named_not_tracebacks(traces_file: Path, teachers_file: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    not_sqlite = tmp_path / "cache.sqlite"
    not_sqlite.write_text("this is not a database, it is text long enough to hold a header" * 4)
    err = refused(capsys, "replay", str(traces_file), "--teachers", str(teachers_file), "--out",
                  str(tmp_path / "p.jsonl"), "--cache", str(not_sqlite))
    assert "not a usable sqlite cache" in err and str(not_sqlite) in err
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(traces_file.read_bytes().splitlines(keepends=True)[0] + b"\xff\xfe\x00garbage\n")
    err = refused(capsys, "stats", str(binary))
    assert f"{binary}:2 is not UTF-8" in err
    err = refused(capsys, "targets", str(teachers_file), "--out", str(tmp_path / "t.jsonl"))
    assert "teachers.yaml:1 is not a Trace record" in err


@SAMPLES
def test_reading_pairs_from_a_missing_empty_or_wrong_file_is_a_config_error(traces_file: Path,
                                                                           tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_pairs_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match=r"looks like traces \(from `composer-core traces ingest`\)"):
        read_pairs_jsonl(traces_file)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="holds no pairs"):
        read_pairs_jsonl(tmp_path / "empty.jsonl")


# Interrupted writes leave the previous complete file.

def _pair(index: int) -> PreferencePair:
    return PreferencePair(
        pair_id=f"p{index}", trace_id="t", step=1, prompt=[{"role": "user", "content": "fix it"}],
        chosen={"role": "assistant", "content": "a"}, rejected={"role": "assistant", "content": "b"},
        chosen_action="a", rejected_action="b", chosen_by="majority", chosen_teachers=["x", "y"],
        rejected_teachers=["z"], votes={"a": 2, "b": 1}, agreement=2 / 3, cost_usd=0.0, latency_s=0.1,
        provenance=HERE)


def _failing_stream(after: int) -> Iterator[PreferencePair]:
    yield from (_pair(index) for index in range(after))
    raise RuntimeError("the teacher connection broke")


def test_an_exception_mid_write_keeps_the_previous_pairs_file(tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    assert write_pairs_jsonl([_pair(index) for index in range(3)], out) == 3
    before = digest(out)
    with pytest.raises(RuntimeError):
        write_pairs_jsonl(_failing_stream(2), out)
    assert digest(out) == before and [path.name for path in tmp_path.iterdir()] == ["pairs.jsonl"]
    assert [pair.pair_id for pair in read_pairs_jsonl(out)] == ["p0", "p1", "p2"]


@pytest.fixture
def big_input(tmp_path: Path) -> Path:
    """Copies of the aider history (distinct files): ingestion takes long enough to be caught mid-write."""
    folder = tmp_path / "big"
    folder.mkdir()
    for index in range(24):
        shutil.copy(AIDER, folder / f"copy{index}.md")
    return folder


def as_started_from_a_shell() -> None:
    """The child's signals as a terminal's shell leaves them: SIGINT's default action and nothing blocked. A test
    worker may have inherited or set other dispositions (libraries loaded in-process by earlier tests do), which the
    child would otherwise inherit across exec, and then a SIGINT would never reach it."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_then_signal(tmp_path: Path, source: Path, out: Path, signal_number: int) -> subprocess.Popen:
    """Start an ingest, wait (bounded) until its temporary output holds data, then send the signal; its stderr
    goes to tmp_path/stderr.txt."""
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "composer_core.cli", "traces", "ingest", str(source),
                                    "--out", str(out)], stdout=subprocess.DEVNULL, stderr=stderr,
                                   preexec_fn=as_started_from_a_shell)
    deadline = time.monotonic() + DEADLINE_S
    while not any(path.stat().st_size for path in tmp_path.glob(f".{out.name}.*.partial")):
        assert process.poll() is None, "the ingest ended before it could be interrupted"
        assert time.monotonic() < deadline, "no partial output appeared"
        time.sleep(0.005)
    process.send_signal(signal_number)
    process.wait(timeout=DEADLINE_S)
    return process


@SAMPLES
@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGINT])
def test_a_killed_or_interrupted_ingest_keeps_the_previous_output(tmp_path: Path, big_input: Path,
                                                                  signal_number: int) -> None:
    out = tmp_path / "traces.jsonl"
    out.write_text('{"previous": "complete output"}\n')
    before = digest(out)
    process = _start_then_signal(tmp_path, big_input, out, signal_number)
    assert process.returncode != 0, (tmp_path / "stderr.txt").read_text()[-2000:]
    assert digest(out) == before
    leftovers = list(tmp_path.glob(".traces*.partial"))
    assert leftovers == [] if signal_number == signal.SIGINT else all(path.name.startswith(".") for path in leftovers)
    if signal_number == signal.SIGINT:  # Ctrl-C is one line and the shell's exit status, not a traceback
        stderr = (tmp_path / "stderr.txt").read_text()
        assert process.returncode == 130
        assert "Traceback" not in stderr and "composer-core: interrupted" in stderr


# 6. Prompts to the user are not failures; targets that `traces targets` makes are replayable.

def _tool(output: str, failed: bool = True) -> Message:
    return Message(role="tool", tool_result=ToolResult(name="bash", output=output, is_error=failed), provenance=HERE)


def test_prompts_to_the_user_are_neither_evidence_nor_detail() -> None:
    crash = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n    run()\n"
             "pip._internal.exceptions.DistributionNotFound: nothing matches\nAdd the output to the chat?\n"
             "(y/n/instructions) n")
    assert classify(_tool(crash)).detail == "pip._internal.exceptions.DistributionNotFound: nothing matches"
    for prompt in ("Continue? [y/N] n", "Attempt to fix lint errors? [Y/n] y", "Overwrite file? y"):
        failure = classify(_tool(f"rm: cannot remove 'a': Is a directory\n{prompt}"))
        assert failure is not None and failure.detail == "rm: cannot remove 'a': Is a directory"
        assert classify(_tool(f"all good\n{prompt}", failed=False)) is None


@SAMPLES
def test_aider_lint_prompts_do_not_fail_an_applied_edit() -> None:
    log = IngestLog()
    lint_results = [message for trace in ingest([AIDER], log) for message in trace.messages
                    if message.role == "tool" and "Attempt to fix lint errors?" in message.tool_result.output]
    assert lint_results  # the sample has them
    for message in lint_results:
        rejected = "did not conform to the edit format" in message.tool_result.output
        assert message.failed == rejected and (classify(message) is None) != rejected


def test_a_failing_first_message_gives_no_target_and_is_counted() -> None:
    call = ToolCall(id="c1", name="bash", arguments={"command": "false"})
    trace = Trace(trace_id="t", format="synthetic", source="-", messages=[
        Message(role="assistant", tool_calls=[call], provenance=HERE),
        Message(role="tool", tool_result=ToolResult(call_id="c1", name="bash", output="boom", exit_code=1),
                provenance=HERE),
        Message(role="assistant", content="done", provenance=HERE)])
    report = TargetReport()
    assert list(build_targets(trace, report)) == []
    assert report.error_turns == 1 and report.no_context_turns == 1 and report.targets == 0


@SAMPLES
def test_replay_of_every_target_made_from_the_shared_samples(tmp_path: Path, server: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    traces, targets = tmp_path / "traces.jsonl", tmp_path / "targets.jsonl"
    assert run(capsys, "ingest", str(TRACES), "--out", str(traces))[0] == 0
    code, out, err = run(capsys, "targets", str(traces), "--out", str(targets), "--json")
    assert code == 0, err
    made = json.loads(out)["targets"]
    assert made == len(targets.read_text().splitlines()) > 0
    teachers = tmp_path / "teachers.yaml"
    teachers.write_text("".join(f"- {{name: {name}, base_url: '{server}/v1', model: {name}, max_retries: 1}}\n"
                                for name in ("a", "b", "c")))
    code, out, err = run(capsys, "replay", str(traces), "--teachers", str(teachers), "--targets", str(targets),
                         "--out", str(tmp_path / "pairs.jsonl"), "--json")
    assert code == 0, err
    assert json.loads(out)["steps_replayed"] == made
    other = tmp_path / "other.jsonl"
    other.write_text("".join(line + "\n" for line in traces.read_text().splitlines()[:3]))
    err = refused(capsys, "replay", str(other), "--teachers", str(teachers), "--targets", str(targets), "--out",
                  str(tmp_path / "p2.jsonl"))
    assert "are not in the traces file" in err


WRONG_TYPED = [("type", "[]"), ("type", "{}"), ("role", "[]"), ("role", "{}")]


def _wrong_typed_copies(folder: Path) -> list[Path]:
    """Every JSONL sample with its first three string values of `type` or `role` made a list or an object."""
    copies = []
    for sample in sorted(TRACES.rglob("*.jsonl")):
        text = sample.read_text(encoding="utf-8", errors="replace")
        for key, value in WRONG_TYPED:
            changed, count = re.subn(rf'"{key}"\s*:\s*"[^"]*"', f'"{key}": {value}', text, count=3)
            if count:
                copy = folder / f"{key}-{'list' if value == '[]' else 'object'}" / sample.parent.name / sample.name
                copy.parent.mkdir(parents=True, exist_ok=True)
                copy.write_text(changed, encoding="utf-8")
                copies.append(copy)
    return copies


@SAMPLES
def test_wrong_typed_type_and_role_fields_are_rejected_not_raised(tmp_path: Path) -> None:
    """A list or an object where a line's `type` or a message's `role` should be a string once stopped the whole
    ingestion with `TypeError: unhashable type` inside detection (claude_code, codex) or a reader
    (openai_messages). Each copy is read by detection and by every format forced onto it: rejects, never raised."""
    copies = _wrong_typed_copies(tmp_path)
    assert len(copies) >= 10
    formats = [None, "claude_code", "codex", "openai_messages", "gemini_cli", "cline", "mini_swe_agent"]
    for copy in copies:
        for forced in formats:
            log = IngestLog()
            for trace in ingest([copy], log, forced):
                trace.model_dump_json()
            assert log.read > 0, (copy, forced)


def test_a_lone_surrogate_escape_is_ingested_and_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """JSON may escape a lone surrogate (`\\ud800`), which no UTF-8 file can hold: it reads as U+FFFD, so the
    trace is written instead of the command failing while writing it."""
    source = tmp_path / "chat.jsonl"
    source.write_text(json.dumps({"messages": [{"role": "user", "content": "fix it"},
                                               {"role": "assistant", "content": "done"}]}).replace(
                                                   "fix it", "fix \\ud800 it") + "\n", encoding="utf-8")
    output = tmp_path / "traces.jsonl"
    code, _, err = run(capsys, "ingest", str(source), "--out", str(output))
    assert code == 0, err
    [trace] = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert trace["messages"][0]["content"] == "fix \ufffd it"
