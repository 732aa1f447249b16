"""`composer-core traces ingest | stats | targets | replay` end to end on the real traces, as subprocesses,
with replay talking to a real OpenAI-compatible server process on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from shared_data import TRACES

pytestmark = pytest.mark.skipif(not TRACES.is_dir(), reason=f"the shared trace samples are not at {TRACES}")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "composer_core.cli", "traces", *args], capture_output=True,
                          text=True, check=False, timeout=300)


def ok(*args: str) -> str:
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("traces") / "traces.jsonl"
    summary = json.loads(ok("ingest", str(TRACES), "--out", str(out), "--json"))
    return out, summary


def test_ingest_accounts_for_every_record(ingested: tuple[Path, dict]) -> None:
    out, summary = ingested
    lines = out.read_text().splitlines()
    assert summary["traces"] == len(lines) > 1000  # aider alone has 1,133 sessions
    assert {json.loads(line)["format"] for line in lines} >= {"claude_code", "codex", "swe_agent", "mini_swe_agent",
                                                             "openhands", "aider", "gemini_cli"}
    assert summary["records_read"] == (summary["records_used"] + summary["records_skipped"]
                                       + summary["records_rejected"])
    rejects = [json.loads(line) for line in Path(summary["rejects"]).read_text().splitlines()]
    assert len(rejects) == summary["records_rejected"]
    assert any(reject["file"].endswith("MANIFEST.md") for reject in rejects)  # not a trace: kept aside, named


def test_stats_and_targets(ingested: tuple[Path, dict], tmp_path: Path) -> None:
    traces, _ = ingested
    stats = json.loads(ok("stats", str(traces)))
    assert stats["error_turns"] > 0 and stats["tool_calls"] > 0
    targets_file = tmp_path / "targets.jsonl"
    summary = json.loads(ok("targets", str(traces), "--out", str(targets_file), "--hint-level", "3", "--json"))
    targets = [json.loads(line) for line in targets_file.read_text().splitlines()]
    assert summary["targets"] + summary["no_context_turns"] == summary["error_turns"] == stats["error_turns"]
    assert summary["targets"] == len(targets)
    assert summary["thinking_only_targets"] == stats["error_turns_with_thinking_only_target"]
    for target in targets:
        assert target["teacher_context"][:-1] == target["student_context"]
        assert target["teacher_context"][-1]["content"].startswith("Hint: ")
        assert target["target"]["role"] == "assistant" and target["hint"]["level"] == 3
    stripped = tmp_path / "stripped.jsonl"
    result = cli("targets", str(traces), "--out", str(stripped), "--strip-thinking", "--json")
    assert json.loads(result.stdout)["empty_targets"] == summary["thinking_only_targets"]
    if summary["thinking_only_targets"]:
        assert "nothing left to train on" in result.stderr


def test_replay_writes_pairs_and_a_dataset_and_never_pays_twice(ingested: tuple[Path, dict], server: str,
                                                                tmp_path: Path) -> None:
    traces, _ = ingested
    swe = tmp_path / "swe.jsonl"
    swe.write_text("".join(line + "\n" for line in traces.read_text().splitlines()
                           if json.loads(line)["format"] in ("swe_agent", "mini_swe_agent")))
    teachers = tmp_path / "teachers.yaml"
    teachers.write_text("".join(f"- {{name: {name}, base_url: '{server}/v1', model: {name}, max_retries: 1, "
                                f"input_usd_per_mtok: 1.0, output_usd_per_mtok: 2.0}}\n"
                                for name in ("teacher-a", "teacher-b", "teacher-c")))
    pairs = tmp_path / "pairs.jsonl"
    args = ("replay", str(swe), "--teachers", str(teachers), "--out", str(pairs), "--dataset",
            str(tmp_path / "dataset"), "--max-steps-per-trace", "3", "--json")
    first = json.loads(ok(*args))
    assert first["calls"] == 3 * first["steps_replayed"] > 0 and first["cache_hits"] == 0
    assert first["pairs"] == len(pairs.read_text().splitlines()) > 0
    assert first["cost_usd"] > 0
    assert (tmp_path / "dataset" / "dataset_info.json").exists()
    again = json.loads(ok(*args))
    assert again["calls"] == 0 and again["cache_hits"] == first["calls"]


def test_bad_teachers_file_is_named(ingested: tuple[Path, dict], tmp_path: Path) -> None:
    traces, _ = ingested
    teachers = tmp_path / "teachers.yaml"
    teachers.write_text("- {name: a, kind: openai, model: m}\n")
    result = cli("replay", str(traces), "--teachers", str(teachers), "--out", str(tmp_path / "p.jsonl"))
    assert result.returncode == 2
    assert "teachers.yaml" in result.stderr and "base_url" in result.stderr and "Traceback" not in result.stderr
