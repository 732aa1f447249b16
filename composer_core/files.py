"""Files are never lost: inputs are checked before they are opened, outputs appear only when complete.

Every command that writes a file goes through `atomic_output` (or `atomic_directory`): the result is written
to a hidden temporary sibling and renamed into place only when complete, so Ctrl-C or kill -9 leaves the
previous complete file; an output that names one of the command's inputs is refused before anything opens.
Every input goes through `check_input`: a FIFO, a device or a folder where a file is expected is refused
instead of blocking forever or failing with a raw traceback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from composer_core.errors import ConfigError

PathLike = str | os.PathLike[str]


def check_input(path: PathLike, what: str = "input") -> Path:
    """`path` as a Path if it is a readable regular file; otherwise a ConfigError saying what it is instead."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{what} {path} is a folder; expected a file")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{what} {path} is not a regular file ({_kind(mode)}); reading it could block forever: "
                          "give a regular file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"cannot read {what} {path}: permission denied")
    return path


def read_text(path: PathLike, what: str = "input") -> str:
    """The UTF-8 text of a regular file; a binary or mis-encoded file is a ConfigError naming the byte offset."""
    path = check_input(path, what)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{what} {path} is not UTF-8 text (undecodable byte at offset {error.start}); is it a "
                          "binary file?") from None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def same_path(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file: the same resolved path, or (through hard links) the same inode."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: PathLike, inputs: Iterable[PathLike] = (), what: str = "output") -> Path:
    """`path` as a Path if it can be written without destroying anything the command reads.

    Refuses an output that is one of `inputs` (or lies inside an input folder), whose folder is missing or is
    not a folder, or that is itself a folder.
    """
    target = Path(path)
    _check_not_input(target, inputs, what)
    _check_parent(target, what)
    if target.is_dir():
        raise ConfigError(f"cannot write {what} {target}: it is a folder; give a file path")
    return target


def _check_not_input(target: Path, inputs: Iterable[PathLike], what: str) -> None:
    """Refuse a `target` that is one of `inputs` or lies inside an input folder."""
    for source in inputs:
        source = Path(source)
        resolved_target, resolved_source = target.resolve(), source.resolve()
        if same_path(target, source):
            raise ConfigError(f"{what} {target} is also an input of this command: writing it would destroy the "
                              "input; choose another output path")
        if source.is_dir() and resolved_source in resolved_target.parents:
            raise ConfigError(f"{what} {target} lies inside the input folder {source}: a rerun would read it back "
                              "as input; write it elsewhere")


def _check_parent(target: Path, what: str) -> None:
    """Refuse a `target` whose folder is missing, is not a folder, or is not writable."""
    parent = target.parent
    if not parent.exists():
        blocker = next((p for p in [parent, *parent.parents] if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise ConfigError(f"cannot write {what} {target}: {blocker} is a file, not a folder")
        raise ConfigError(f"cannot write {what} {target}: the folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise ConfigError(f"cannot write {what} {target}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot write {what} {target}: the folder {parent} is not writable")


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(path: PathLike, inputs: Iterable[PathLike] = (), what: str = "output",
                  binary: bool = False) -> Iterator[IO]:
    """Write `path` through a temporary sibling renamed into place when the block completes without error.

    On any exception (KeyboardInterrupt included) the temporary file is removed and `path` keeps its previous
    content; a kill -9 leaves at most a hidden `.NAME.*.partial` file beside it.
    """
    target = check_output(path, inputs, what)
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        os.chmod(temporary, _umask_mode())
        with os.fdopen(descriptor, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_text_atomic(path: PathLike, text: str, inputs: Iterable[PathLike] = (), what: str = "output") -> Path:
    """`atomic_output` for a whole text at once."""
    with atomic_output(path, inputs, what) as stream:
        stream.write(text)
    return Path(path)


def check_output_folder(path: PathLike, inputs: Iterable[PathLike] = (), what: str = "output folder") -> Path:
    """`path` as a Path if a folder can be written there by `atomic_directory` without destroying an input: refuses
    a file of that name, a missing or unwritable parent, and a folder that is, or holds, one of `inputs`."""
    target, inputs = Path(path), tuple(inputs)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"cannot write {what} {target}: a file of that name exists")
    _check_not_input(target, inputs, what)
    _check_parent(target, what)
    for source in inputs:
        if same_path(target, source) or Path(source).resolve().is_relative_to(target.resolve()):
            raise ConfigError(f"{what} {target} holds an input of this command; choose another output folder")
    return target


@contextlib.contextmanager
def atomic_directory(path: PathLike, inputs: Iterable[PathLike] = (), what: str = "output folder") -> Iterator[Path]:
    """Fill a temporary sibling folder, then swap it in for `path` (whose previous content is removed only then)."""
    target = check_output_folder(path, inputs, what)
    temporary = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
    try:
        yield temporary
        previous = None
        if target.exists():
            previous = target.with_name(f".{target.name}.{os.getpid()}.old")
            os.replace(target, previous)
        os.replace(temporary, target)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
