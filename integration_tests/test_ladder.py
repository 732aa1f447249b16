"""`composer-core experiment ladder --quick` end to end on the embedded model: every arm trains through
`composer-core train`, A3's pairs come from `traces ingest` + `traces replay` with local teachers, ladder.json and
ladder.png are written, and a second run on the folder resumes instead of training again."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

from composer_core.experiment.settings import ARMS
from composer_core.replay.pairs import read_pairs_jsonl


def ladder(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "composer_core.cli", "experiment", "ladder", *args],
                          capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def quick_ladder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    folder = tmp_path_factory.mktemp("ladder") / "quick"
    return folder, ladder("--quick", "--output-dir", str(folder))


def test_quick_ladder_runs_every_arm_through_the_real_commands(
        quick_ladder: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    folder, result = quick_ladder
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((folder / "ladder.json").read_text())
    assert list(report["arms"]) == list(ARMS) and (folder / "ladder.png").stat().st_size > 10_000
    runs = {run["arm"]: run for run in report["runs"]}
    assert all(run["status"] in ("finished", "collapsed") for run in runs.values()), report["runs"]
    assert len({run["eval_reward_before"] for run in runs.values()}) == 1  # one eval set, one starting model
    assert all(len(run["curves"]["reward"]) == 4 for run in runs.values())
    for arm, run in runs.items():  # each arm trained exactly its channels
        assert bool(run["curves"]["composer/distill/loss"]) == (arm in ("A2", "A4"))
        assert bool(run["curves"]["composer/preference/loss"]) == (arm in ("A3", "A4"))
    pairs = report["pairs"]
    written = read_pairs_jsonl(pairs["pairs"])
    assert pairs["pair_count"] == len(written) == pairs["replay"]["pairs"] > 0
    assert {teacher for pair in written for teacher in pair.chosen_teachers} <= {"sample-1", "sample-2", "sample-3"}
    assert (folder / "pairs" / "traces.jsonl").is_file() and 0 <= pairs["chosen_correct"] <= 1
    assert "| A4 GRPO + self-distillation + trace-replay DPO | 1 |" in result.stderr


def test_a_second_run_resumes_and_trains_only_what_is_missing(
        quick_ladder: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    folder, first = quick_ladder
    assert first.returncode == 0, first.stderr[-3000:]
    before = json.loads((folder / "ladder.json").read_text())
    (folder / "results" / "A3-seed0.json").unlink()  # as if the ladder had stopped during A3
    shutil.rmtree(folder / "runs" / "A3-seed0")
    pairs_written = (folder / "pairs" / "pairs.jsonl").stat().st_mtime_ns
    again = ladder("--quick", "--output-dir", str(folder))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "A3 pairs:" in again.stderr and (folder / "pairs" / "pairs.jsonl").stat().st_mtime_ns == pairs_written
    after = json.loads((folder / "ladder.json").read_text())
    kept = [run for run in before["runs"] if run["arm"] != "A3"]
    assert [run for run in after["runs"] if run["arm"] != "A3"] == kept  # not trained again
    assert (folder / "runs" / "A3-seed0" / "summary.json").is_file()
    refused = ladder("--quick", "--steps", "5", "--output-dir", str(folder))
    assert refused.returncode == 2 and "base differ" in refused.stderr
