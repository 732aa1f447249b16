"""docs/train_your_own_model.md runs as written: its files, its command, the run folder it describes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "train_your_own_model.md"
FILE_BLOCK = re.compile(r"```\w+ file=(\S+)\n(.*?)```", re.DOTALL)


def page_files() -> dict[str, str]:
    return {name: body for name, body in FILE_BLOCK.findall(PAGE.read_text())}


def test_the_page_names_its_three_files() -> None:
    assert sorted(page_files()) == ["job.yaml", "my_rewards.py", "rows.jsonl"]


def test_the_page_s_job_trains_and_leaves_the_folder_it_describes(tmp_path: Path) -> None:
    for name, body in page_files().items():
        (tmp_path / name).write_text(body)
    result = subprocess.run([sys.executable, "-m", "composer_core.cli", "train", "--config", "job.yaml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "first"
    described = re.findall(r"^\| `([^`]+?)/?` \|", PAGE.read_text(), re.MULTILINE)
    assert described and all((run / name).exists() for name in described), described
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["eval_prompts"] == 4
    assert re.search(r"step 2/3  eval reward \d\.\d{3}", result.stderr)
    assert re.search(r"step 3/3  loss \S+  reward \S+  distill \S+  coverage", result.stderr)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/reward" in row for row in rows) and any(row.get("rewards/exact_answer/mean") is not None
                                                             for row in rows)
