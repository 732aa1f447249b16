"""A user's data: every supported form loads into `prompt` + reward columns; every bad input is one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from composer_core.data_sources import load_prompt_rows
from composer_core.errors import ConfigError

datasets = pytest.importorskip("datasets")

CHAT_ROWS = [{"question": [{"role": "user", "content": f"What is {a} + 1?"}], "answer": a + 1, "level": "easy"}
             for a in range(3)]
TEXT_ROWS = [{"question": f"What is {a} + 1?", "answer": a + 1, "level": "easy"} for a in range(3)]


def load(source: Path | str, **settings: object) -> datasets.Dataset:
    options = {"split": "train", "prompt_column": "question", "reward_columns": None, "setting": "data.train",
               **settings}
    return load_prompt_rows(str(source), **options)  # type: ignore[arg-type]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_jsonl_chat_prompts_are_renamed_to_prompt_and_keep_every_column(tmp_path: Path) -> None:
    rows = load(write_jsonl(tmp_path / "rows.jsonl", CHAT_ROWS))
    assert rows.column_names == ["prompt", "answer", "level"]
    assert rows[2]["prompt"] == CHAT_ROWS[2]["question"] and rows["answer"] == [1, 2, 3]


def test_jsonl_rows_missing_a_key_get_a_missing_value(tmp_path: Path) -> None:
    rows = load(write_jsonl(tmp_path / "rows.jsonl", [TEXT_ROWS[0], {"question": "Hi?", "answer": 5}]))
    assert rows["level"] == ["easy", None]


@pytest.mark.parametrize("suffix", [".json", ".parquet", ".csv"])
def test_json_parquet_and_csv_files_load_the_same_rows(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rows{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(TEXT_ROWS))
    elif suffix == ".parquet":
        datasets.Dataset.from_list(TEXT_ROWS).to_parquet(str(path))
    else:
        path.write_text("question,answer,level\n" + "".join(f"{row['question']},{row['answer']},{row['level']}\n"
                                                             for row in TEXT_ROWS))
    rows = load(path)
    assert rows["prompt"] == [row["question"] for row in TEXT_ROWS]
    assert rows["answer"] == [row["answer"] for row in TEXT_ROWS]


def test_a_saved_dataset_and_a_split_of_a_saved_dataset_dict(tmp_path: Path) -> None:
    datasets.Dataset.from_list(CHAT_ROWS).save_to_disk(str(tmp_path / "plain"))
    assert len(load(tmp_path / "plain")) == 3
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(CHAT_ROWS),
                                   "validation": datasets.Dataset.from_list(CHAT_ROWS[:1])})
    splits.save_to_disk(str(tmp_path / "splits"))
    assert len(load(tmp_path / "splits", split="validation", setting="data.eval")) == 1
    with pytest.raises(ConfigError, match=r"no split 'test' \(data.eval_split\); its splits: train, validation"):
        load(tmp_path / "splits", split="test", setting="data.eval")


def test_a_hub_name_offline_says_it_needs_network_or_a_local_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError) as error:
        load("some-org/some-data-set")
    message = str(error.value)
    assert "data.train some-org/some-data-set" in message and "network" in message and "file" in message


def test_reward_columns_must_exist(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", CHAT_ROWS)
    assert load(path, reward_columns=["answer"]).column_names == ["prompt", "answer", "level"]
    with pytest.raises(ConfigError, match=r"names 'solution', which data.train .*rows.jsonl does not have; its "
                                          r"columns: question, answer, level"):
        load(path, reward_columns=["solution"])


BAD_FILES = {
    "empty": ("rows.jsonl", "\n\n", r"has no rows"),
    "no prompt column": ("rows.jsonl", '{"text": "hi", "answer": 1}\n',
                         r"has no column 'question' \(data.prompt_column\); its columns: text, answer"),
    "numbers as prompts": ("rows.jsonl", '{"question": 3}\n', r"prompt column 'question' .* holds int64; each row's "
                                                              r"prompt must be a string or a list of chat messages"),
    "a missing prompt": ("rows.jsonl", '{"question": "a"}\n{"question": null}\n',
                         r"is empty in 1 rows \(the first is row 1\)"),
    "mixed prompt types": ("rows.jsonl", '{"question": "a"}\n{"question": [{"role": "user", "content": "b"}]}\n',
                           r"'question' holds list and str"),
    "invalid JSON": ("rows.jsonl", '{"question": "a"}\n{"question": \n', r"rows.jsonl line 2 is not valid JSON"),
    "a row that is not an object": ("rows.jsonl", '{"question": "a"}\n[1]\n', r"line 2 is a list; every row must"),
    "a JSON object": ("rows.json", '{"question": "a"}', r"holds a JSON dict; a JSON data file is an array"),
    "a clashing column": ("rows.jsonl", '{"question": "a", "completions": 1}\n',
                          r"column 'completions' .* clashes with an argument reward functions are given"),
    "two prompt columns": ("rows.jsonl", '{"question": "a", "prompt": "b"}\n',
                           r"has both a 'prompt' column and the prompt column 'question'"),
    "not Parquet": ("rows.parquet", "not parquet", r"is not a readable Parquet file"),
    "unknown type": ("rows.txt", "hello", r"unknown file type '.txt'; give a JSONL, JSON, Parquet or CSV file"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_data_is_one_clear_error_naming_the_file(tmp_path: Path, case: str) -> None:
    name, text, message = BAD_FILES[case]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load(path)
    assert f"data.train {path}" in str(error.value)


@pytest.mark.parametrize(("source", "message"), [
    ("missing.jsonl", r"data.train .*missing.jsonl does not exist"),
    ("./missing", r"does not exist"),
    ("not a name!", r"neither an existing file or folder nor a hub data set name"),
])
def test_missing_sources_are_not_looked_up_on_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str,
                                                      message: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        load(source)


def test_a_folder_that_is_not_a_saved_dataset(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "rows.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"is a folder but not one written by `datasets` \(save_to_disk\)"):
        load(tmp_path / "folder")
