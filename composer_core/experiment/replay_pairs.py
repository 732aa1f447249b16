"""A3's preference pairs, made by the real channel-3 pipeline (composer-core's own research channel, not part of
Cursor's Composer recipe): agent traces -> `composer-core traces ingest` -> `composer-core traces replay` with local
teachers -> pairs.jsonl.

The traces are the base model's own greedy answers to the first training prompts (an agent run of the policy
before training, one step per prompt). The teachers are the base model sampled with one seed each: no model
stronger at the task is available offline, so the majority of N samples (self-consistency) picks the chosen
answer. Whether the chosen answer is right is checked afterwards against the task's answer and reported
(`chosen_correct`, `rejected_correct`); it never decides a pair.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from composer_core.errors import ComposerError
from composer_core.experiment.settings import LadderSettings
from composer_core.files import write_text_atomic
from composer_core.replay.local_teacher import LocalHFTeacher
from composer_core.replay.pairs import read_pairs_jsonl
from composer_core.tasks import arithmetic

REPORT = "pairs_report.json"


def build_pairs(folder: Path, train_file: Path, model_folder: Path, settings: LadderSettings) -> dict[str, Any]:
    """pairs/pairs.jsonl and its report (kept: a resumed ladder does not replay again); returns the report."""
    out = folder / "pairs"
    report_path = out / REPORT
    if report_path.is_file():
        return json.loads(report_path.read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = [json.loads(line) for line in train_file.read_text(encoding="utf-8").splitlines()][
        :settings.replay_prompts]
    agent_traces = write_agent_traces(out / "agent_traces.jsonl", rows, model_folder, settings)
    traces = out / "traces.jsonl"
    cli("traces", "ingest", str(agent_traces), "--out", str(traces), "--format", "openai_messages")
    teachers = write_teachers(out / "teachers.yaml", model_folder, settings)
    pairs = out / "pairs.jsonl"
    replay = json.loads(cli("traces", "replay", str(traces), "--teachers", str(teachers), "--out", str(pairs),
                            "--min-answers", "2", "--json").splitlines()[-1])
    report = {"prompts": len(rows), "teachers": settings.teachers, "temperature": settings.teacher_temperature,
              "replay": replay, **pair_quality(pairs, rows), "wall_s": time.perf_counter() - started,
              "pairs": str(pairs)}
    write_text_atomic(report_path, json.dumps(report, indent=2), what="pairs report")
    return report


def write_agent_traces(path: Path, rows: list[dict[str, Any]], model_folder: Path, settings: LadderSettings
                       ) -> Path:
    """One OpenAI-messages session per prompt: the prompt and the base model's greedy answer."""
    author = LocalHFTeacher("base-policy", model_folder, max_new_tokens=settings.teacher_max_new_tokens)
    sessions = []
    for index, row in enumerate(tqdm(rows, desc="A3 pairs: the base model's answers", unit="prompt")):
        reply = asyncio.run(author.complete(row["prompt"]))
        sessions.append({"id": f"arithmetic-{index}",
                         "messages": [*row["prompt"], {"role": "assistant", "content": reply.content}]})
    write_text_atomic(path, "".join(json.dumps(session) + "\n" for session in sessions), what="agent traces")
    return path


def write_teachers(path: Path, model_folder: Path, settings: LadderSettings) -> Path:
    """The replay teachers: the base model sampled, one seed each (JSON is YAML)."""
    teachers = [{"name": f"sample-{seed}", "kind": "local_hf", "path": str(model_folder), "seed": seed,
                 "temperature": settings.teacher_temperature, "max_new_tokens": settings.teacher_max_new_tokens}
                for seed in range(1, settings.teachers + 1)]
    write_text_atomic(path, json.dumps(teachers, indent=2), what="teachers file")
    return path


def pair_quality(pairs_path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How many pairs there are and how often their chosen and rejected answers are right (reported only)."""
    answers = {f"arithmetic-{index}": int(row["answer"]) for index, row in enumerate(rows)}
    try:
        pairs = read_pairs_jsonl(pairs_path)
    except ComposerError as error:
        raise ComposerError(f"the replay gave A3 no preference pairs ({error}): the teachers always agreed; "
                            "raise --teacher-temperature or replay more prompts") from None
    right = {side: sum(arithmetic.score(answers[pair.trace_id], getattr(pair, side)["content"]).reward
                       for pair in pairs) for side in ("chosen", "rejected")}
    return {"pair_count": len(pairs), "chosen_correct": right["chosen"] / len(pairs),
            "rejected_correct": right["rejected"] / len(pairs)}


def cli(*args: str) -> str:
    """Run `composer-core ARGS` as a user would, its progress and summary on our stderr; returns its stdout."""
    result = subprocess.run([sys.executable, "-m", "composer_core.cli", *args], stdout=subprocess.PIPE, text=True,
                            check=False)
    if result.returncode != 0:
        raise ComposerError(f"composer-core {args[0]} {args[1]} failed (exit {result.returncode}); its error is "
                            "printed above")
    return result.stdout
