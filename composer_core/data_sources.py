"""A user's prompts and reward columns, from what they have: a file, a saved `datasets` folder or a hub name.

`data.train` and `data.eval` take the same forms on every backend:

- a JSONL, JSON (an array of row objects), Parquet or CSV file, chosen by its suffix;
- a folder written by `datasets`' `save_to_disk` (a Dataset, or a DatasetDict whose split is `train_split` /
  `eval_split`);
- otherwise a hub data set name (`org/name`) loaded with `datasets.load_dataset`, which needs network access
  (or the hub cache with HF_HUB_OFFLINE=1).

Relative paths are relative to the current directory, as every other path of the config. The prompt column
(a string or a list of chat messages per row) is renamed to `prompt`; every other column reaches the reward
functions as a keyword argument (TRL's convention), or only `data.reward_columns` when given. Every problem is
a ConfigError naming the setting, the source and what to do. `datasets` is imported only when data is loaded,
so the core imports without it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from composer_core.errors import ConfigError
from composer_core.files import check_input, read_text

if TYPE_CHECKING:
    from datasets import Dataset

FILE_FORMATS = {".jsonl": "JSON lines", ".json": "JSON", ".parquet": "Parquet", ".csv": "CSV"}
FORMS = "a JSONL, JSON, Parquet or CSV file, a saved `datasets` folder (save_to_disk) or a hub data set name"
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# the keyword arguments TRL gives every reward function besides the data's columns: a column of that name clashes
REWARD_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric",
                    "environments")


def load_prompt_rows(source: str, *, split: str, prompt_column: str, reward_columns: Sequence[str] | None,
                     setting: str) -> Dataset:
    """The rows of `source` with a checked `prompt` column and the reward columns (see the module docstring);
    `setting` (for example "data.train") names the source in errors."""
    dataset = load_rows(source, split=split, setting=setting)
    return check_prompt_rows(dataset, prompt_column=prompt_column, reward_columns=reward_columns,
                             where=f"{setting} {source}")


def load_rows(source: str, *, split: str, setting: str) -> Dataset:
    """Every row of a file, a saved `datasets` folder or a hub data set, as a `datasets.Dataset`."""
    try:
        import datasets  # noqa: F401  (only to say what is missing)
    except ImportError:
        raise ConfigError(f"{setting} needs the `datasets` package: pip install 'composer-core[trl]' (or "
                          "datasets)") from None
    path = Path(source).expanduser()
    where = f"{setting} {source}"
    if path.is_dir():
        return _saved_folder(path, split, where, setting)
    if path.exists() or path.suffix.lower() in FILE_FORMATS or source.startswith((".", "/", "~")):
        return _data_file(path, where)
    if not HUB_NAME.fullmatch(source):
        raise ConfigError(f"{where} is neither an existing file or folder nor a hub data set name; give {FORMS}")
    return _hub(source, split, where, setting)


def check_prompt_rows(dataset: Dataset, *, prompt_column: str, reward_columns: Sequence[str] | None,
                      where: str) -> Dataset:
    """`dataset` with its prompt column checked and renamed to `prompt`, and the reward columns checked."""
    columns = list(dataset.column_names)
    if len(dataset) == 0:
        raise ConfigError(f"{where} has no rows; give a data set with at least one prompt")
    if prompt_column not in columns:
        raise ConfigError(f"{where} has no column {prompt_column!r} (data.prompt_column); its columns: "
                          f"{', '.join(columns)}; set data.prompt_column to the one that holds the prompts")
    _check_prompt_type(dataset, prompt_column, where)
    if prompt_column != "prompt" and "prompt" in columns:
        raise ConfigError(f"{where} has both a 'prompt' column and the prompt column {prompt_column!r} "
                          "(data.prompt_column): rename or drop the 'prompt' column")
    passed = [column for column in columns if column != prompt_column] if reward_columns is None \
        else list(reward_columns)
    for column in passed:
        if column == prompt_column:
            raise ConfigError(f"data.reward_columns names the prompt column {column!r} of {where}: reward functions "
                              "receive the prompts as `prompts`; remove it")
        if column not in columns:
            raise ConfigError(f"data.reward_columns names {column!r}, which {where} does not have; its columns: "
                              f"{', '.join(columns)}")
        if column in REWARD_ARGUMENTS or column in ("completion", "prompt"):
            raise ConfigError(f"column {column!r} of {where} clashes with an argument reward functions are given "
                              f"({', '.join(REWARD_ARGUMENTS)}) or that is never passed (prompt, completion): rename "
                              "it, or leave it out of data.reward_columns")
    return dataset if prompt_column == "prompt" else dataset.rename_column(prompt_column, "prompt")


def _check_prompt_type(dataset: Dataset, column: str, where: str) -> None:
    """A string per row, or a list of chat messages with string `role` and `content` per row; no missing value."""
    import pyarrow as pa

    kind = dataset.data.schema.field(column).type
    text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    chat = (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_struct(kind.value_type) \
        and all(name in {field.name for field in kind.value_type} for name in ("role", "content"))
    if not (text or chat):
        raise ConfigError(f"the prompt column {column!r} of {where} holds {kind}; each row's prompt must be a string "
                          "or a list of chat messages ({'role': ..., 'content': ...})")
    missing = dataset.data.column(column).null_count
    if missing:
        first = dataset.data.column(column).to_pylist().index(None)
        raise ConfigError(f"the prompt column {column!r} of {where} is empty in {missing} rows (the first is row "
                          f"{first}); every row needs a prompt")


def _data_file(path: Path, where: str) -> Dataset:
    suffix = path.suffix.lower()
    check_input(path, where)  # a missing or unreadable file says so before its type is judged
    if suffix not in FILE_FORMATS:
        raise ConfigError(f"{where}: unknown file type {path.suffix!r}; give {FORMS} "
                          f"({', '.join(FILE_FORMATS)})")
    if suffix in (".jsonl", ".json"):
        return _rows_dataset(_json_rows(path, where, lines=suffix == ".jsonl"), where)
    return _table_dataset(path, suffix, where)


def _json_rows(path: Path, where: str, *, lines: bool) -> list[dict[str, Any]]:
    """Row objects of a JSONL file (one per non-blank line) or a JSON file (an array of objects)."""
    text = read_text(path, where)
    if lines:
        numbered = [(f"line {number}", _json_value(line, f"{where} line {number}"))
                    for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    else:
        document = _json_value(text, where)
        if not isinstance(document, list):
            raise ConfigError(f"{where} holds a JSON {type(document).__name__}; a JSON data file is an array of row "
                              "objects (or use JSONL: one object per line)")
        numbered = [(f"row {index}", row) for index, row in enumerate(document)]
    for label, row in numbered:
        if not isinstance(row, dict):
            raise ConfigError(f"{where} {label} is a {type(row).__name__}; every row must be an object of columns")
    return [row for _, row in numbered]


def _json_value(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{where} is not valid JSON: {error}") from None


def _rows_dataset(rows: list[dict[str, Any]], where: str) -> Dataset:
    """Rows with the union of their keys as columns (a key a row lacks is a missing value, as `datasets` reads
    JSON); values whose types differ between rows are an error naming the column."""
    from datasets import Dataset

    columns = list(dict.fromkeys(key for row in rows for key in row))
    try:
        return Dataset.from_list([{column: row.get(column) for column in columns} for row in rows])
    except (TypeError, ValueError) as error:  # pyarrow's ArrowTypeError / ArrowInvalid
        raise ConfigError(f"{where}: a column holds values of different types in different rows ({error}); give "
                          f"each column one type: {_mixed_columns(rows, columns)}") from None


def _mixed_columns(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The columns whose non-missing values have more than one Python type, with those types."""
    mixed = []
    for column in columns:
        kinds = sorted({type(row[column]).__name__ for row in rows if row.get(column) is not None})
        if len(kinds) > 1:
            mixed.append(f"{column!r} holds {' and '.join(kinds)}")
    return "; ".join(mixed) or "see the message above"


def _table_dataset(path: Path, suffix: str, where: str) -> Dataset:
    """A Parquet or CSV file read with pyarrow, in memory (no `datasets` cache files are written)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pa_parquet
    from datasets import Dataset

    try:
        table = pa_parquet.read_table(path) if suffix == ".parquet" else pa_csv.read_csv(path)
    except (pa.ArrowException, OSError) as error:
        raise ConfigError(f"{where} is not a readable {FILE_FORMATS[suffix]} file: {error}") from None
    return Dataset(table)


def _saved_folder(path: Path, split: str, where: str, setting: str) -> Dataset:
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise ConfigError(f"{where} is a folder but not one written by `datasets` (save_to_disk): {error}; give "
                          f"{FORMS}") from None
    if isinstance(loaded, DatasetDict):
        return _split(loaded, split, where, setting)
    return loaded


def _split(splits: Any, split: str, where: str, setting: str) -> Dataset:
    if split not in splits:
        raise ConfigError(f"{where} has no split {split!r} ({_split_setting(setting)}); its splits: "
                          f"{', '.join(splits)}")
    return splits[split]


def _split_setting(setting: str) -> str:
    return "data.eval_split" if setting.endswith("eval") else "data.train_split"


def _hub(name: str, split: str, where: str, setting: str) -> Dataset:
    from datasets import load_dataset

    try:
        return load_dataset(name, split=split)
    except ConnectionError as error:
        raise ConfigError(f"{where} is not a file or folder here, so it was looked up as a hub data set, which "
                          f"needs network access to the Hugging Face hub ({error}); download it where there is "
                          "network and give the file or saved folder instead (or use HF_HUB_OFFLINE=1 with a "
                          "cached copy)") from None
    except (FileNotFoundError, ValueError, OSError) as error:
        raise ConfigError(f"{where} is not a file or folder here and could not be loaded as a hub data set (split "
                          f"{split!r}, {_split_setting(setting)}): {error}; give {FORMS}") from None
