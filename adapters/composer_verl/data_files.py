"""`data.train` / `data.eval` as VeRL's `data.train_files` / `data.val_files`.

VeRL 0.9's RLHFDataset picks its reader by the file's suffix (`.parquet`, `.json`, `.jsonl`, case-sensitive) and
reads rows in its own layout: the prompt as a list of chat messages (it applies the chat template itself), and
`data_source`, `reward_model.ground_truth` and `extra_info`, which its reward manager hands to the reward function.
A saved `datasets` folder, a CSV file or a hub data set name has no VeRL reader and is refused with the conversion
to run. A local Parquet or JSONL file is checked for that layout here, so a mismatch fails before a cluster is booked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from composer_core.errors import ConfigError
from composer_verl.reward_function import local_or_given

VERL_SUFFIXES = (".parquet", ".json", ".jsonl")
VERL_LAYOUT = ("its row layout: the prompt column as a list of chat messages ({role, content}), data_source, "
               "reward_model.ground_truth and extra_info (see docs/backends/verl.md)")


def conversion(source: str, split: str) -> str:
    """The `datasets` call that writes `source` as a Parquet file, once its rows have VeRL's layout."""
    path = Path(source).expanduser()
    if path.is_dir():
        reader = f"datasets.load_from_disk({source!r})"
        reader += "" if (path / "dataset_info.json").is_file() else f"[{split!r}]"
    elif path.exists() or path.suffix:
        kind = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(path.suffix.lower(), "csv")
        reader = f"datasets.load_dataset({kind!r}, data_files={source!r}, split='train')"
    else:
        reader = f"datasets.load_dataset({source!r}, split={split!r})"
    return f"{reader}.map(<to VeRL's layout>).to_parquet('{path.stem or 'rows'}.parquet')"


def verl_data_file(source: str, *, setting: str, split: str, prompt_key: str) -> str:
    """The path VeRL reads for `source` (absolute when it is on this machine), after checking that VeRL has a reader
    for it and, for a local file, that its rows have VeRL's layout."""
    path = Path(source).expanduser()
    if path.is_dir() or not source.endswith(VERL_SUFFIXES):
        what = "a folder" if path.is_dir() else "a file VeRL has no reader for" if path.exists() else \
            "not a file VeRL reads (a hub name or a missing file)"
        raise ConfigError(f"{setting}={source} is {what}: VeRL 0.9 reads .parquet, .json or .jsonl files (by that "
                          f"suffix) in {VERL_LAYOUT}; convert it, e.g. {conversion(source, split)}, and set {setting} "
                          "to the new file")
    if path.is_file():
        check_layout(path, setting=setting, prompt_key=prompt_key)
    return local_or_given(source)


def check_layout(path: Path, *, setting: str, prompt_key: str) -> None:
    """Refuse a local Parquet or JSONL file whose columns VeRL cannot read (a JSON array is not read here)."""
    if path.suffix == ".parquet":
        problem = parquet_problem(path, prompt_key)
    elif path.suffix == ".jsonl":
        problem = row_problem(first_jsonl_row(path, setting), prompt_key)
    else:
        return
    if problem:
        raise ConfigError(f"{setting}={path}: {problem}; VeRL reads {VERL_LAYOUT}")


def parquet_problem(path: Path, prompt_key: str) -> str | None:
    """What in the Parquet file's schema VeRL cannot read, or None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        return f"not a readable Parquet file ({reason})"
    names = set(schema.names)
    if prompt_key not in names:
        return f"no prompt column {prompt_key!r} (data.prompt_column; its columns: {', '.join(schema.names)})"
    kind = schema.field(prompt_key).type
    listed = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    if not (listed and pa.types.is_struct(kind.value_type)
            and {"role", "content"} <= {field.name for field in kind.value_type}):
        return f"the prompt column {prompt_key!r} holds {kind}, not a list of chat messages"
    if "data_source" not in names:
        return "no data_source column"
    reward_model = schema.field("reward_model").type if "reward_model" in names else None
    if reward_model is None or not pa.types.is_struct(reward_model) or \
            "ground_truth" not in {field.name for field in reward_model}:
        return "no reward_model column with a ground_truth field"
    return None


def first_jsonl_row(path: Path, setting: str) -> Any:
    """The first row of a JSON lines file (None when it has none)."""
    try:
        with path.open(encoding="utf-8") as lines:
            first = next((line for line in lines if line.strip()), None)
        return None if first is None else json.loads(first)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{setting}={path}: its first row is not readable JSON ({error})") from None


def row_problem(row: Any, prompt_key: str) -> str | None:
    """What in one row VeRL cannot read, or None."""
    if not isinstance(row, dict):
        return "its first row is not a JSON object" if row is not None else "it has no rows"
    if prompt_key not in row:
        return f"no prompt column {prompt_key!r} (data.prompt_column; its columns: {', '.join(row)})"
    prompt = row[prompt_key]
    if not (isinstance(prompt, list) and all(isinstance(message, dict) and {"role", "content"} <= set(message)
                                             for message in prompt)):
        return f"the prompt column {prompt_key!r} holds {type(prompt).__name__}, not a list of chat messages"
    if "data_source" not in row:
        return "no data_source column"
    if not (isinstance(row.get("reward_model"), dict) and "ground_truth" in row["reward_model"]):
        return "no reward_model column with a ground_truth field"
    return None
