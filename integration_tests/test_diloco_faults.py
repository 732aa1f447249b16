"""The DiLoCo launcher for real: `composer-core train --backend diloco --replicas 2` starts a torchft Lighthouse and two
replica processes on loopback (CPU, gloo, the embedded model, a few steps), and faults are injected from outside as an
operator would meet them: a replica killed with SIGKILL, a replica frozen with SIGSTOP in the middle of the run.

What must hold: replicas.json names every process as soon as they start; a dead replica is restarted, heals from the
live one and rejoins; a frozen one is dropped from the quorum instead of being waited for; no outer step is applied
twice or lost; the run ends with finite weights identical on every replica; summary.json reports what happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
pytest.importorskip("torchft")

from composer_core.config import DEFAULT_JOB
from composer_diloco.lighthouse import LighthouseSettings, start_lighthouse, stop_process
from composer_diloco.merge import outer_steps as merged_steps
from composer_diloco.merge import weights

TINY = {"data": {"train_size": 64, "eval_size": 2},
        "run": {"prompts_per_step": 2, "num_generations": 2, "max_completion_length": 4, "logging_steps": 1}}
RUN_TIMEOUT_S = 480  # a bound on a run that hangs; a loaded 2-core machine has needed over 240 s
# long enough (about 0.2 s an inner step here) that the live replica still trains when the restarted or thawed one,
# which needs about 10 s to start, comes back: a replica can only heal from a peer that is still running
RESTART_STEPS = 160


def job(tmp_path: Path, max_steps: int, **diloco: Any) -> Path:
    path = tmp_path / "job.json"
    settings = {"sync_every": 2, "timeout_s": 10, "quorum_timeout_s": 30, "max_restarts": 2, **diloco}
    path.write_text(json.dumps({**DEFAULT_JOB, **TINY, "run": {**TINY["run"], "max_steps": max_steps},
                                "guard": {"enabled": False},  # a reward dip on 2 eval prompts must not end a replica
                                "diloco": settings}))
    return path


def launch(tmp_path: Path, config: Path) -> tuple[subprocess.Popen[str], Path]:
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "composer_core.cli", "train", "--backend", "diloco",
                                "--replicas", "2", "--config", str(config), "--output-dir", str(run)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, run


@pytest.fixture
def launched() -> Iterator[list[subprocess.Popen[str]]]:
    """Launchers started by a test; any still running at its end is interrupted (it stops its children) or killed."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, launcher: subprocess.Popen[str]) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout_s` or if the launcher exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if launcher.poll() is not None:
            pytest.fail(f"the launcher exited ({launcher.returncode}) while waiting for {what}: "
                        f"{launcher.stderr.read()[-3000:] if launcher.stderr else ''}")
        time.sleep(0.2)
    pytest.fail(f"waited {timeout_s} s for {what}")


def read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def replicas_file(run: Path) -> dict[str, Any] | None:
    """replicas.json once it names the Lighthouse and a pid for each of the two replicas."""
    data = read(run / "replicas.json")
    if data and data["lighthouse"] and all(replica["pid"] for replica in data["replicas"]):
        return data
    return None


def outer_steps(run: Path, replica_id: int) -> list[int]:
    record = read(run / f"replica-{replica_id}" / "diloco.json") or {}
    return [entry["step"] for entry in record.get("outer_steps", [])]


def finish(launcher: subprocess.Popen[str], run: Path) -> dict[str, Any]:
    _, stderr = launcher.communicate(timeout=RUN_TIMEOUT_S)
    assert launcher.returncode == 0, stderr[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["weights"]["finite"] and summary["weights"]["agree"], summary["weights"]
    assert not summary["outer_steps"]["applied_twice"] and not summary["outer_steps"]["applied_by_nobody"]
    assert (run / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    merged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {row["replica"] for row in merged} == {0, 1}
    return summary


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_replicas_train_to_identical_weights_without_faults(tmp_path: Path, launched: list) -> None:
    config = job(tmp_path, max_steps=6, min_replicas=2)  # every outer step needs both: a fixed schedule
    launcher, run = launch(tmp_path, config)
    launched.append(launcher)
    started = wait_for("replicas.json", lambda: replicas_file(run), 30, launcher)
    pids = [replica["pid"] for replica in started["replicas"]] + [started["lighthouse"]["pid"]]
    assert len(set(pids)) == 3 and all(alive(pid) for pid in pids)
    assert started["lighthouse"]["address"].startswith("http://127.0.0.1:")
    assert not outer_steps(run, 0)  # written as the processes start, before any training
    summary = finish(launcher, run)
    faults = summary["faults"]
    assert not faults["deaths"] and not faults["restarts"] and not faults["stragglers_stopped"]
    assert not any(faults["failed_syncs"].values())
    assert summary["outer_steps"]["per_replica"] == {"0": [1, 2, 3], "1": [1, 2, 3]}
    assert summary["outer_steps"]["quorum_sizes"] == {"1": [2], "2": [2], "3": [2]}
    assert summary["finished_replicas"] == 2 and summary["eval_reward_after"] is not None
    assert not any(alive(pid) for pid in pids)  # the Lighthouse too
    final = json.loads((run / "replicas.json").read_text())
    assert [replica["state"] for replica in final["replicas"]] == ["finished", "finished"]
    assert not final["lighthouse"]["running"]


def test_a_replica_killed_mid_run_is_restarted_heals_and_rejoins(tmp_path: Path, launched: list) -> None:
    config = job(tmp_path, max_steps=RESTART_STEPS)
    launcher, run = launch(tmp_path, config)
    launched.append(launcher)
    started = wait_for("replicas.json", lambda: replicas_file(run), 30, launcher)
    victim = started["replicas"][1]["pid"]
    wait_for("the first outer step on both replicas", lambda: outer_steps(run, 0) and outer_steps(run, 1), 90,
             launcher)
    before = outer_steps(run, 0)[-1]
    os.kill(victim, signal.SIGKILL)
    restarted = wait_for("the restart in replicas.json", lambda: (replicas_file(run) or {}).get("replicas", [{}, {}])[1]
                         .get("pid") not in (None, victim) and replicas_file(run), 30, launcher)
    assert restarted["replicas"][1]["restarts"] == 1 and restarted["replicas"][1]["exits"][0]["signal"] == "SIGKILL"
    summary = finish(launcher, run)
    survivor, rejoined = summary["outer_steps"]["per_replica"]["0"], summary["outer_steps"]["per_replica"]["1"]
    last = summary["outer_steps"]["count"]
    assert survivor == list(range(1, last + 1)), survivor  # the other one kept training: none twice, none lost
    assert any(size == [1] for step, size in summary["outer_steps"]["quorum_sizes"].items() if int(step) > before)
    heals = [heal for heal in summary["faults"]["heals"]["1"] if heal["attempt"] == 2]
    assert heals and heals[0]["from_replica"] == 0, summary["faults"]["heals"]
    after_heal = [step for step in rejoined if step > heals[0]["outer_step"]]
    assert after_heal and after_heal == list(range(after_heal[0], last + 1))  # rejoined and stayed to the end
    assert [death["signal"] for death in summary["faults"]["deaths"]] == ["SIGKILL"]
    assert [restart["replica_id"] for restart in summary["faults"]["restarts"]] == [1]
    assert summary["per_replica"]["1"]["restarts"] == 1


class LogWatch:
    """New lines of a growing log file, read from where the last call stopped."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, path.stat().st_size if path.exists() else 0

    def new_lines(self) -> list[str]:
        with self.path.open("rb") as stream:
            stream.seek(self.offset)
            data = stream.read()
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        return complete.decode(errors="replace").splitlines()


def freeze_in_a_sync(run: Path, pid: int, timeout_s: float) -> None:
    """SIGSTOP replica `pid` the moment the Lighthouse logs its next quorum request: it is then inside a sync (the
    quorum, the all-reduce of pseudo-gradients, the commit vote), which takes the others tens of milliseconds."""
    watch = LogWatch(run / "logs" / "lighthouse.log")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any("Received quorum request for replica replica_1:" in line for line in watch.new_lines()):
            os.kill(pid, signal.SIGSTOP)
            return
        time.sleep(0.005)
    pytest.fail(f"replica 1 asked for no quorum within {timeout_s} s")


def test_a_replica_frozen_in_a_sync_is_timed_out_not_waited_for(tmp_path: Path, launched: list) -> None:
    """torchft 0.2.0 on CPU: the other replica's all-reduce gives up after diloco.timeout_s, the sync is discarded
    everywhere (its round's start weights restored), and the Lighthouse drops the frozen replica once its heartbeats
    stop (5 s): the next outer steps are applied by a quorum of one. Thawed, the frozen replica's own sync fails, it
    heals from the live one and rejoins."""
    timeout_s = 10
    config = job(tmp_path, max_steps=RESTART_STEPS, timeout_s=timeout_s)
    launcher, run = launch(tmp_path, config)
    launched.append(launcher)
    started = wait_for("replicas.json", lambda: replicas_file(run), 30, launcher)
    frozen = started["replicas"][1]["pid"]
    wait_for("the first outer step on both replicas", lambda: outer_steps(run, 0) and outer_steps(run, 1), 90,
             launcher)
    freeze_in_a_sync(run, frozen, 30)
    began = time.monotonic()
    try:
        stopped_at = max(outer_steps(run, 1))
        wait_for("two outer steps of replica 0 without the frozen one",
                 lambda: [step for step in outer_steps(run, 0) if step > stopped_at + 1][:2], 3 * timeout_s + 15,
                 launcher)
        waited = time.monotonic() - began
    finally:
        os.kill(frozen, signal.SIGCONT)
    summary = finish(launcher, run)
    failed = summary["faults"]["failed_syncs"]["0"]
    assert failed and failed[0]["quorum_size"] == 2, failed  # the sync it hung in: discarded, not waited for
    later = {int(step): sizes for step, sizes in summary["outer_steps"]["quorum_sizes"].items()
             if int(step) > stopped_at}
    assert [1] in later.values(), later  # then applied without it
    assert waited < 3 * timeout_s + 15  # bounded by diloco.timeout_s and the heartbeat timeout
    assert summary["outer_steps"]["per_replica"]["0"] == list(range(1, summary["outer_steps"]["count"] + 1))
    thawed = [heal for heal in summary["faults"]["heals"]["1"] if heal["outer_step"] > stopped_at]
    assert thawed and thawed[0]["from_replica"] == 0, summary["faults"]["heals"]
    assert not summary["faults"]["deaths"] and not summary["faults"]["restarts"]



def test_one_command_per_replica_joins_a_lighthouse_started_by_hand(tmp_path: Path) -> None:
    """The multi-cluster way, on one machine: `torchft_lighthouse`, then `composer-core train --backend diloco
    --lighthouse URL --replica-id N` once per replica, each training in its own process."""
    lighthouse = start_lighthouse(LighthouseSettings(min_replicas=2, join_timeout_ms=30_000), tmp_path / "lh.log")
    config = job(tmp_path, max_steps=4, min_replicas=2)
    try:
        processes = [subprocess.Popen([sys.executable, "-m", "composer_core.cli", "train", "--backend", "diloco",
                                       "--config", str(config), "--lighthouse", lighthouse.address, "--replica-id",
                                       str(index), "--output-dir", str(tmp_path / f"replica-{index}")],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for index in (0, 1)]
        outputs = [process.communicate(timeout=RUN_TIMEOUT_S) for process in processes]
    finally:
        stop_process(lighthouse.process, timeout_s=10)
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
        assert stdout.strip().splitlines()[-1].startswith("eval reward: ")
    records = [json.loads((tmp_path / f"replica-{index}" / "diloco.json").read_text()) for index in (0, 1)]
    assert [[entry["step"] for entry in record["outer_steps"]] for record in records] == [[1, 2], [1, 2]]
    assert records[0]["final_checksum"] == records[1]["final_checksum"] and records[0]["final_finite"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "composer_core.cli", "train", *args], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize(("args", "message"), [
    (["--replicas", "2"], "--replicas is only for --backend diloco"),
    (["--backend", "trl", "--lighthouse", "http://coordinator:29510", "--replica-id", "0"],
     "--lighthouse and --replica-id are only for --backend diloco"),
    (["--backend", "diloco", "--lighthouse", "http://coordinator:29510"], "--lighthouse and --replica-id go together"),
    (["--backend", "diloco", "--replicas", "2", "--lighthouse", "http://coordinator:29510", "--replica-id", "1"],
     "give one of them"),
    (["--backend", "diloco"], "needs --replicas N"),
    (["--backend", "diloco", "--lighthouse", "coordinator:29510", "--replica-id", "0"], "as http://HOST:PORT"),
    (["--backend", "diloco", "--replicas", "0"], "--replicas: expected an integer of at least 1"),
    (["--backend", "diloco", "--lighthouse", "http://coordinator:29510", "--replica-id", "-1"],
     "--replica-id: expected an integer of at least 0"),
])
def test_the_replica_options_are_refused_where_they_mean_nothing(tmp_path: Path, args: list[str], message: str
                                                                 ) -> None:
    result = cli(*args, "--output-dir", str(tmp_path / "run"))
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_the_printed_commands_start_a_lighthouse_and_one_replica_per_cluster(tmp_path: Path) -> None:
    config = job(tmp_path, max_steps=8, min_replicas=2, quorum_timeout_s=600)
    result = cli("--backend", "diloco", "--config", str(config), "--print-backend-config")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "torchft_lighthouse --bind '[::]:29510' --min_replicas 2 --join_timeout_ms 300000" in result.stdout
    replicas = [line for line in lines if line.startswith("composer-core train --backend diloco")]
    assert [line.split("--replica-id ")[1].split()[0] for line in replicas] == ["0", "1"]
    assert all("--lighthouse http://LIGHTHOUSE_HOST:29510" in line for line in replicas)


def test_the_summary_catches_a_step_applied_twice_or_lost_and_weights_that_differ() -> None:
    def applied(*steps: int) -> dict[str, Any]:
        return {"outer_steps": [{"step": step, "quorum_size": 2} for step in steps],
                "final_checksum": "a" if steps[-1] == 4 else "b", "final_finite": True}

    steps = merged_steps({0: applied(1, 2, 2, 4), 1: applied(1, 4)})
    assert steps["applied_twice"] == {0: [2]} and steps["applied_by_nobody"] == [3] and steps["count"] == 4
    assert merged_steps({0: applied(1, 2), 1: None})["applied_by_nobody"] == []
    assert weights({0: applied(1, 4), 1: applied(1, 3)}, [0, 1])["agree"] is False
    assert weights({0: applied(1, 4), 1: applied(1, 4)}, [0, 1]) == {"checksums": {"0": "a", "1": "a"}, "agree": True,
                                                                     "finite": True}
    assert weights({0: applied(1, 4), 1: None}, [0, 1])["agree"] is False  # a finished replica without a record
