"""diloco.json: what one replica's outer loop did, kept across its restarts and rewritten after every event.

Fields: replica_id; diloco (the settings); status (running, completed, left_quorum, interrupted, failed); attempts
(one per process: resume, start_step, end_step, status, reason); outer_steps (committed outer steps: step = the
outer step number torchft's Manager counts, quorum_size, inner_step, fragment, attempt, and checksum: sha256 of the
fragment's outer weights the step produced, equal on every replica of its quorum, so replicas can be compared step
by step even in a run that was interrupted); failed_syncs (the same without the checksum, for syncs every replica
discarded, with the error); heals (from_replica, outer_step, inner_step, donor_position, init_sync, attempt);
final_checksum (sha256 of the final outer weights, only for a completed run; equal on every replica that finished
together) and final_finite.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from composer_core.diloco_settings import DilocoConfig
from composer_core.files import write_text_atomic

RECORD_FILE = "diloco.json"
EVENTS = ("outer_steps", "failed_syncs", "heals")


def weights_checksum(parameters: list[torch.Tensor]) -> tuple[str, bool]:
    """sha256 of the parameters' bytes in order, and whether every value is finite."""
    digest = hashlib.sha256()
    finite = True
    for parameter in parameters:
        values = parameter.detach().cpu().contiguous().reshape(-1)
        finite = finite and bool(torch.isfinite(values).all())
        digest.update(values.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest(), finite


class ReplicaRecord:
    """The replica's diloco.json; `resume` continues the previous attempts' record, else it starts a new one."""

    def __init__(self, folder: Path, replica_id: int, settings: DilocoConfig, *, resume: bool) -> None:
        self.path = folder / RECORD_FILE
        previous = self._read() if resume else None
        self.data: dict[str, Any] = previous or {"replica_id": replica_id, "attempts": [],
                                                 **{event: [] for event in EVENTS}}
        self.data.update(diloco=settings.model_dump(mode="json"), status="running", final_checksum=None,
                         final_finite=None)
        self.attempt = len(self.data["attempts"]) + 1
        self.data["attempts"].append({"attempt": self.attempt, "resume": resume, "started_at": _now(),
                                      "start_step": None, "end_step": None, "status": "running", "reason": None})

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # never written, or cut short by a kill: the new attempt starts the record again

    @property
    def current(self) -> dict[str, Any]:
        return self.data["attempts"][-1]

    def started(self, step: int) -> None:
        self.current["start_step"] = step
        self.write()

    def event(self, kind: str, entry: dict[str, Any]) -> None:
        self.data[kind].append({**entry, "attempt": self.attempt})
        self.write()

    def weights(self, parameters: list[torch.Tensor], *, completed: bool, step: int) -> None:
        """The weights the replica ends with: checksummed for a completed run (the outer model)."""
        checksum, finite = weights_checksum(parameters)
        self.data.update(final_checksum=checksum if completed else None, final_finite=finite)
        self.current["end_step"] = step
        self.write()

    def finish(self, status: str, reason: str | None = None) -> None:
        self.data["status"] = status
        self.current.update(status=status, reason=reason, ended_at=_now())
        self.write()

    def write(self) -> None:
        write_text_atomic(self.path, json.dumps(self.data, indent=2) + "\n", what="DiLoCo replica record")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
