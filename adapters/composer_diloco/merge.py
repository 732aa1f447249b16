"""The DiLoCo run's own outputs, merged from its replicas' folders once they have ended.

OUTPUT/metrics.jsonl holds every replica's rows with a `replica` field; OUTPUT/metrics.png draws one curve per replica
(composer_diloco.plots); OUTPUT/summary.json has the eval rewards and steps (as the other backends' summaries), each
replica's summary and exits, and `faults`: deaths (signal or exit code), restarts, replicas stopped as stragglers,
failed syncs and heals, the quorum size of every outer step, outer steps applied twice or by nobody or after which
the replicas' weights differ (`diverged`, from the per-step checksums), and whether the final weights are finite and
identical on every replica (their checksums, from each replica's diloco.json).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from composer_core.config import ComposerConfig
from composer_core.files import write_text_atomic
from composer_diloco.plots import plot_replicas

METRICS, SUMMARY, OUTER = "metrics.jsonl", "summary.json", "diloco.json"


def read_json(path: Path) -> dict[str, Any] | None:
    """A replica's JSON output, or None if it never wrote it (a replica that died before the end)."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def healed(folder: Path, since: datetime) -> bool:
    """Whether the replica's process started at `since` (its attempt in diloco.json, which started then or later)
    has healed from a peer."""
    record = read_json(folder / OUTER) or {}
    attempts = [attempt["attempt"] for attempt in record.get("attempts", [])
                if datetime.fromisoformat(attempt["started_at"]) >= since.replace(microsecond=0)]
    return bool(attempts) and any(heal.get("attempt") == attempts[-1] for heal in record.get("heals", []))


def training(folder: Path) -> bool:
    """Whether the replica's latest attempt in diloco.json still trains: it has not yet recorded the weights it ends
    with (its `end_step`, written when training stops and it leaves the quorum, before its final evaluation and
    save). A replica without a readable record counts as training."""
    attempts = (read_json(folder / OUTER) or {}).get("attempts") or []
    return not attempts or attempts[-1].get("end_step") is None


def metric_rows(folder: Path, replica_id: int) -> list[dict[str, Any]]:
    """A replica's complete metrics rows, each with its replica id (a line cut short by a kill is skipped)."""
    path = folder / METRICS
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            rows.append({**json.loads(line), "replica": replica_id})
        except ValueError:
            continue
    return rows


def diverged(records: dict[int, dict[str, Any] | None]) -> dict[str, dict[str, str]]:
    """The outer steps after which the replicas that applied them recorded different weights (their checksums, by
    replica): a quorum's replicas must all hold the same outer model. Entries without a checksum are skipped."""
    checksums: dict[int, dict[str, str]] = {}
    for replica_id, record in records.items():
        for entry in (record or {}).get("outer_steps", []):
            if entry.get("checksum"):
                checksums.setdefault(entry["step"], {})[str(replica_id)] = entry["checksum"]
    return {str(step): checksums[step] for step in sorted(checksums) if len(set(checksums[step].values())) > 1}


def outer_steps(records: dict[int, dict[str, Any] | None]) -> dict[str, Any]:
    """Per outer step, the quorum size the replicas saw; steps some replica applied twice; steps below the last one
    that no replica applied; steps whose replicas ended with different weights."""
    sizes: dict[int, set[int]] = {}
    twice: dict[int, list[int]] = {}
    for replica_id, record in records.items():
        applied = [entry["step"] for entry in (record or {}).get("outer_steps", [])]
        for entry in (record or {}).get("outer_steps", []):
            sizes.setdefault(entry["step"], set()).add(entry["quorum_size"])
        repeated = sorted(step for step, count in Counter(applied).items() if count > 1)
        if repeated:
            twice[replica_id] = repeated
    last = max(sizes, default=0)
    return {"count": last, "quorum_sizes": {str(step): sorted(sizes[step]) for step in sorted(sizes)},
            "applied_twice": twice, "applied_by_nobody": [step for step in range(1, last + 1) if step not in sizes],
            "diverged": diverged(records),
            "per_replica": {str(replica_id): [entry["step"] for entry in (record or {}).get("outer_steps", [])]
                            for replica_id, record in records.items()}}


def weights(records: dict[int, dict[str, Any] | None], finished: list[int]) -> dict[str, Any]:
    """The final weights' checksums of the replicas that finished, whether they agree and whether all are finite."""
    ended = [records[replica_id] or {} for replica_id in finished]
    checksums = {str(replica_id): record.get("final_checksum") for replica_id, record in zip(finished, ended,
                                                                                           strict=True)}
    return {"checksums": checksums,
            "agree": bool(checksums) and len(set(checksums.values())) == 1 and None not in checksums.values(),
            "finite": bool(ended) and all(record.get("final_finite") for record in ended)}


def faults(replicas: list[dict[str, Any]], events: list[dict[str, Any]],
           records: dict[int, dict[str, Any] | None]) -> dict[str, Any]:
    """What went wrong during the run, and what the launcher and torchft did about it."""
    def of(kind: str) -> list[dict[str, Any]]:
        return [event for event in events if event["event"] == kind]

    return {"deaths": of("death"), "restarts": of("restart"), "gave_up": of("gave_up"),
            "stragglers_stopped": of("timed_out"), "orphaned": of("orphaned"),
            "lighthouse_died": of("lighthouse_died"),
            "left_quorum": [replica["replica_id"] for replica in replicas if replica["state"] == "left_quorum"],
            "failed_syncs": {str(replica_id): (record or {}).get("failed_syncs", [])
                             for replica_id, record in records.items()},
            "heals": {str(replica_id): (record or {}).get("heals", []) for replica_id, record in records.items()}}


def merge_metrics(out: Path, replicas: list[dict[str, Any]]) -> Path:
    rows = [row for replica in replicas for row in metric_rows(Path(replica["output_dir"]), replica["replica_id"])]
    rows.sort(key=lambda row: (row.get("step", 0), row["replica"]))
    return write_text_atomic(out / METRICS, "".join(json.dumps(row) + "\n" for row in rows), what="merged metrics")


def first_value(summaries: dict[int, dict[str, Any] | None], key: str) -> Any:
    """`key` of the lowest-numbered replica whose summary has it (identical final weights: identical eval)."""
    return next((summary[key] for summary in summaries.values() if summary and summary.get(key) is not None), None)


def merge_run(out: Path, replicas: list[dict[str, Any]], *, config: ComposerConfig, events: list[dict[str, Any]],
              signal_name: str | None) -> dict[str, Any]:
    """Merge the replicas' metrics, draw them, and write OUTPUT/summary.json; the summary."""
    summaries = {replica["replica_id"]: read_json(Path(replica["output_dir"]) / SUMMARY) for replica in replicas}
    records = {replica["replica_id"]: read_json(Path(replica["output_dir"]) / OUTER) for replica in replicas}
    metrics = merge_metrics(out, replicas)
    steps = outer_steps(records)
    finished = [replica for replica in replicas if replica["state"] == "finished"]
    summary = {"backend": "diloco", "replicas": len(replicas), "finished_replicas": len(finished),
               "eval_reward_before": first_value(summaries, "eval_reward_before"),
               "eval_reward_after": first_value(summaries, "eval_reward_after"),
               "steps": max((summary.get("steps") or 0 for summary in summaries.values() if summary), default=0),
               "max_steps": config.run.max_steps, "interrupted": signal_name is not None, "signal": signal_name,
               "failed": not finished and signal_name is None, "guard": None,
               "outer_steps": steps, "weights": weights(records, [replica["replica_id"] for replica in finished]),
               "faults": faults(replicas, events, records),
               "per_replica": {str(replica["replica_id"]): {"state": replica["state"], "restarts": replica["restarts"],
                                                            "exits": replica["exits"],
                                                            "summary": summaries[replica["replica_id"]]}
                               for replica in replicas},
               "metrics": str(metrics),
               "plot": str(plot_replicas(metrics, steps["quorum_sizes"], out / "metrics.png")),
               "replicas_file": str(out / "replicas.json")}
    write_text_atomic(out / SUMMARY, json.dumps(summary, indent=2) + "\n", what="run summary")
    return summary
