"""Inputs checked before opening, outputs renamed into place only when complete (composer_core.files)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from composer_core.errors import ConfigError
from composer_core.files import atomic_directory, atomic_output, check_input, check_output, read_text


def test_check_input_refuses_a_fifo_instead_of_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="FIFO.*block"):
        check_input(fifo, "config file")


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p, "does not exist"),
    (lambda p: (p.mkdir(), p)[1], "is a folder"),
])
def test_check_input_names_missing_and_folder(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_input(make(tmp_path / "x"), "traces")


def test_read_text_refuses_binary_with_the_offset(tmp_path: Path) -> None:
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"ok\n\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8 text.*offset 3"):
        read_text(binary, "config file")


def test_output_equal_to_an_input_is_refused_in_every_spelling(tmp_path: Path) -> None:
    source = tmp_path / "traces.jsonl"
    source.write_text("keep\n")
    (tmp_path / "link.jsonl").symlink_to(source)
    (tmp_path / "sub").mkdir()
    for spelling in (source, tmp_path / "link.jsonl", tmp_path / "sub" / ".." / "traces.jsonl"):
        with pytest.raises(ConfigError, match="also an input"):
            check_output(spelling, [source])
    assert source.read_text() == "keep\n"


def test_output_inside_an_input_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="inside the input folder"):
        check_output(tmp_path / "out.jsonl", [tmp_path])


def test_output_folder_missing_or_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; create it"):
        check_output(tmp_path / "missing" / "out.jsonl")
    (tmp_path / "plain").write_text("")
    with pytest.raises(ConfigError, match="plain is a file, not a folder"):
        check_output(tmp_path / "plain" / "deeper" / "out.jsonl")


def test_atomic_output_keeps_the_previous_file_when_interrupted(tmp_path: Path) -> None:
    target = tmp_path / "pairs.jsonl"
    target.write_text("complete\n")
    with pytest.raises(KeyboardInterrupt), atomic_output(target) as stream:
        stream.write("partial")
        raise KeyboardInterrupt
    assert target.read_text() == "complete\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]


def test_atomic_output_replaces_on_success_with_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    with atomic_output(target) as stream:
        stream.write("new\n")
    assert target.read_text() == "new\n"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_kill_9_mid_write_leaves_the_previous_complete_file(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("complete\n")
    script = textwrap.dedent(f"""
        import os, signal
        from composer_core.files import atomic_output
        with atomic_output({str(target)!r}) as stream:
            stream.write("half")
            stream.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == -9
    assert target.read_text() == "complete\n"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out.jsonl"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".out.jsonl.") and leftovers[0].endswith(".partial")


def test_atomic_directory_swaps_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "dataset"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "new").write_text("new")
        raise RuntimeError("failed halfway")
    assert [p.name for p in target.iterdir()] == ["old"]
    with atomic_directory(target) as staging:
        (staging / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_atomic_directory_refuses_a_folder_holding_an_input(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "traces.jsonl").write_text("keep")
    with pytest.raises(ConfigError, match="holds an input"), atomic_directory(target, [target / "traces.jsonl"]):
        pass
    assert (target / "traces.jsonl").read_text() == "keep"


def test_an_output_folder_in_a_missing_folder_is_named_as_given(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "dataset"
    with pytest.raises(ConfigError, match=r"cannot write --dataset .*missing/dataset: the folder .* does not exist") \
            as caught, atomic_directory(target, what="--dataset"):
        pass
    assert ".dataset." not in str(caught.value)
