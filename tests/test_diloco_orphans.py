"""The local launcher's orphan rule: a restarted replica that has not healed is stopped once no peer trains any more,
a peer still running its final evaluation and save included (it has left the quorum: nobody could heal from it, and
the restarted replica would otherwise commit outer steps of its own). Real processes stand in for the replicas;
their diloco.json records say where each one is."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

pytest.importorskip("torchft")

from composer_core.config import DEFAULT_JOB, ComposerConfig
from composer_diloco.launcher import Launcher
from composer_diloco.merge import training


def write_record(folder: Path, *, end_step: int | None, healed_attempt: int | None = None) -> None:
    """A diloco.json whose latest attempt (2, started now) ended training at `end_step` (None: still training)."""
    folder.mkdir(parents=True, exist_ok=True)
    started = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat(timespec="seconds")
    attempts = [{"attempt": 1, "started_at": "2026-01-01T00:00:00+00:00", "end_step": None},
                {"attempt": 2, "started_at": started, "end_step": end_step}]
    heals = [{"from_replica": 0, "outer_step": 3, "attempt": healed_attempt}] if healed_attempt else []
    (folder / "diloco.json").write_text(json.dumps({"attempts": attempts, "heals": heals}))


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    """A two-replica launcher whose replicas are live `sleep` processes; replica 1 was restarted once."""
    launcher = Launcher(ComposerConfig.from_mapping(DEFAULT_JOB, source="test"), tmp_path / "run", 2)
    (tmp_path / "run" / "logs").mkdir(parents=True)
    for replica in launcher.replicas:
        replica.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        replica.state, replica.started_at = "running", datetime.now(timezone.utc)
    launcher.replicas[1].restarts = 1
    yield launcher
    for replica in launcher.replicas:
        replica.process.kill()
        replica.process.wait()


@pytest.mark.parametrize(("peer_end_step", "healed", "orphaned"), [
    (12, False, True),  # the peer stopped training (it evaluates and saves): nobody to heal from
    (None, False, False),  # the peer still trains: the restarted one may heal from it
    (12, True, False),  # healed before the peer stopped: it trains on with the weights they share
])
def test_a_restarted_replica_is_stopped_once_no_peer_trains(launcher: Launcher, peer_end_step: int | None,
                                                            healed: bool, orphaned: bool) -> None:
    peer, restarted = launcher.replicas
    write_record(peer.folder, end_step=peer_end_step)
    write_record(restarted.folder, end_step=None, healed_attempt=2 if healed else None)
    launcher.check_orphans()
    assert (restarted.state == "orphaned") == orphaned
    assert (restarted.process.poll() is not None) == orphaned
    assert peer.state == "running" and peer.process.poll() is None
    events = [event for event in launcher.events if event["event"] == "orphaned"]
    assert len(events) == int(orphaned)


def test_a_replica_without_a_readable_record_counts_as_training(tmp_path: Path) -> None:
    assert training(tmp_path)
    (tmp_path / "diloco.json").write_text("{cut short")
    assert training(tmp_path)
    write_record(tmp_path, end_step=None)
    assert training(tmp_path)
    write_record(tmp_path, end_step=4)
    assert not training(tmp_path)
