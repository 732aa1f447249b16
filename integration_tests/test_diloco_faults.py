"""The DiLoCo launcher for real: `composer-core train --backend diloco --replicas 2` starts a torchft Lighthouse and two
replica processes on loopback (CPU, gloo, the embedded model, a few steps), and faults are injected from outside as an
operator would meet them: a replica killed with SIGKILL, a replica frozen with SIGSTOP in the middle of the run.

What must hold: replicas.json names every process as soon as they start; a dead replica is restarted, heals from the
live one and rejoins; a frozen one is dropped from the quorum instead of being waited for; no outer step is applied
twice or lost; the replicas of every outer step hold the same weights after it (diloco.json's per-step checksums);
a run ends with finite weights, identical on every replica when it ends on its own; summary.json reports what
happened.

The fault tests never race the replicas. A replica can only heal from a peer that is still training, so their run
has no end of its own (UNBOUNDED_STEPS): the test waits for each event it needs in the replicas' records and the
Lighthouse's log, then stops the run as an operator would (SIGTERM to the launcher) once the faulted replica has
healed and applied outer steps with the other. Where an order of events matters, the test holds a replica with
SIGSTOP where holding it cannot change what the protocol does: a restarting replica while it is still starting up;
two replicas taking turns (never both running) from the moment one asks for a quorum until it is issued, neither
held longer than half the Lighthouse's heartbeat timeout at a stretch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
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
RUN_TIMEOUT_S = 480  # a bound on a run that hangs, not on its speed: a loaded 2-core machine has needed over 240 s
EVENT_TIMEOUT_S = 180  # the same for one awaited event (a restarted replica imports torch and TRL, then heals)
UNBOUNDED_STEPS = 100_000  # the fault tests' runs never reach it: the test stops them (about 0.2 s an inner step)
HEARTBEAT_TIMEOUT_S = LighthouseSettings(min_replicas=1).heartbeat_timeout_ms / 1000
HOLD_S = HEARTBEAT_TIMEOUT_S / 2  # the longest a replica is held at a stretch: the Lighthouse must never drop it
BREATH_S = 0.5  # how long a held replica then runs: a few of its Manager's heartbeats (one every 0.1 s)
REJOINED_STEPS = 2  # outer steps a healed replica applies with the other before the test stops the run
QUORUM_REQUEST = re.compile(r"Received quorum request for replica (replica_\d+)")
QUORUM_MEMBER = re.compile(r'replica_id: "(replica_\d+)')


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


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, launcher: subprocess.Popen[str], *,
             poll_s: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout_s` or if the launcher exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if launcher.poll() is not None:
            pytest.fail(f"the launcher exited ({launcher.returncode}) while waiting for {what}: "
                        f"{launcher.stderr.read()[-3000:] if launcher.stderr else ''}")
        time.sleep(poll_s)
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


def record(run: Path, replica_id: int) -> dict[str, Any]:
    """The replica's diloco.json as it stands ({} before it is written)."""
    return read(run / f"replica-{replica_id}" / "diloco.json") or {}


def outer_steps(run: Path, replica_id: int) -> list[int]:
    return [entry["step"] for entry in record(run, replica_id).get("outer_steps", [])]


def checksums(run: Path, replica_id: int) -> dict[int, str]:
    """The weights checksum the replica recorded after each outer step it applied."""
    return {entry["step"]: entry["checksum"] for entry in record(run, replica_id).get("outer_steps", [])}


def applied_alone(run: Path, replica_id: int, after: int) -> list[int]:
    """Outer steps after `after` that the replica applied in a quorum of one."""
    return [entry["step"] for entry in record(run, replica_id).get("outer_steps", [])
            if entry["step"] > after and entry["quorum_size"] == 1]


def rejoined(run: Path, replica_id: int, after: int) -> dict[str, Any] | None:
    """The replica's first heal at an outer step above `after`, once it has applied REJOINED_STEPS outer steps with
    a peer since."""
    data = record(run, replica_id)
    heal = next((heal for heal in data.get("heals", []) if heal["outer_step"] > after), None)
    if heal is None:
        return None
    together = [entry for entry in data["outer_steps"] if entry["step"] > heal["outer_step"] and
                entry["quorum_size"] > 1]
    return heal if len(together) >= REJOINED_STEPS else None


def ended(launcher: subprocess.Popen[str], run: Path, returncode: int) -> dict[str, Any]:
    """summary.json once the launcher has exited with `returncode`, with what every run must show checked: no
    outer step applied twice or lost, the same weights on every replica of every outer step, merged metrics."""
    _, stderr = launcher.communicate(timeout=RUN_TIMEOUT_S)
    assert launcher.returncode == returncode, stderr[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    steps = summary["outer_steps"]
    assert not steps["applied_twice"] and not steps["applied_by_nobody"] and not steps["diverged"], steps
    assert (run / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    merged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {row["replica"] for row in merged} == {0, 1}
    return summary


def finish(launcher: subprocess.Popen[str], run: Path) -> dict[str, Any]:
    """The summary of a run that ended on its own: finite weights, identical on every replica."""
    summary = ended(launcher, run, 0)
    assert summary["weights"]["finite"] and summary["weights"]["agree"], summary["weights"]
    return summary


def stop(launcher: subprocess.Popen[str], run: Path) -> dict[str, Any]:
    """SIGTERM to the launcher, as an operator ends a run: every replica saves a checkpoint and reports finite
    weights."""
    launcher.send_signal(signal.SIGTERM)
    summary = ended(launcher, run, 128 + signal.SIGTERM)
    assert summary["interrupted"] and summary["signal"] == "SIGTERM"
    assert all(record(run, replica_id)["final_finite"] for replica_id in (0, 1))
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
    # the last outer step's checksum is that of the final (outer) model
    assert checksums(run, 0)[3] == checksums(run, 1)[3] == summary["weights"]["checksums"]["0"]
    assert not any(alive(pid) for pid in pids)  # the Lighthouse too
    final = json.loads((run / "replicas.json").read_text())
    assert [replica["state"] for replica in final["replicas"]] == ["finished", "finished"]
    assert not final["lighthouse"]["running"]


def restarted(run: Path, replica_id: int, dead: int) -> dict[str, Any] | None:
    """The replica's entry in replicas.json once it names a process other than `dead`."""
    data = replicas_file(run)
    replica = data["replicas"][replica_id] if data else {}
    return replica if replica.get("pid") not in (None, dead) else None


def test_a_replica_killed_mid_run_is_restarted_heals_and_rejoins(tmp_path: Path, launched: list) -> None:
    """The restarted replica is held (SIGSTOP) while it starts up, until the live one has applied an outer step
    alone: a slow restart, as on a real cluster, and not one that comes back before the Lighthouse noticed."""
    launcher, run = launch(tmp_path, job(tmp_path, max_steps=UNBOUNDED_STEPS))
    launched.append(launcher)
    victim = wait_for("replicas.json", lambda: replicas_file(run), 30, launcher)["replicas"][1]["pid"]
    wait_for("the first outer step on both replicas", lambda: outer_steps(run, 0) and outer_steps(run, 1),
             EVENT_TIMEOUT_S, launcher)
    before = outer_steps(run, 0)[-1]
    os.kill(victim, signal.SIGKILL)
    replacement = wait_for("the restart in replicas.json", lambda: restarted(run, 1, victim), 30, launcher)
    os.kill(replacement["pid"], signal.SIGSTOP)
    try:
        wait_for("an outer step of replica 0 alone", lambda: applied_alone(run, 0, before),
                 EVENT_TIMEOUT_S, launcher)
    finally:
        os.kill(replacement["pid"], signal.SIGCONT)
    assert replacement["restarts"] == 1 and replacement["exits"][0]["signal"] == "SIGKILL"
    heal = wait_for("the restarted replica healing and applying outer steps with the other",
                    lambda: rejoined(run, 1, before), EVENT_TIMEOUT_S, launcher)
    summary = stop(launcher, run)
    survivor, rejoining = summary["outer_steps"]["per_replica"]["0"], summary["outer_steps"]["per_replica"]["1"]
    assert survivor == list(range(1, len(survivor) + 1)), survivor  # it kept training: none twice, none lost
    assert heal["from_replica"] == 0 and heal["attempt"] == 2, heal
    after_heal = [step for step in rejoining if step > heal["outer_step"]]
    assert after_heal == list(range(heal["outer_step"] + 1, after_heal[-1] + 1)), rejoining  # rejoined, stayed
    ours, theirs = checksums(run, 0), checksums(run, 1)
    assert [theirs[step] for step in after_heal] == [ours[step] for step in after_heal]  # the same weights
    assert [death["signal"] for death in summary["faults"]["deaths"]] == ["SIGKILL"]
    assert [restart["replica_id"] for restart in summary["faults"]["restarts"]] == [1]
    assert summary["per_replica"]["1"]["restarts"] == 1


class QuorumLog:
    """Follows the Lighthouse's log from its start: the replicas that asked for a quorum since the last one was
    issued, how many quorums it issued, and the members of the last one."""

    def __init__(self, log: Path) -> None:
        self.log, self.offset = log, 0
        self.pending: set[str] = set()
        self.issued = 0
        self.members: set[str] = set()

    def update(self) -> QuorumLog:
        with self.log.open("rb") as stream:
            stream.seek(self.offset)
            data = stream.read()
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if "Quorum! " in line:
                self.pending.clear()
                self.issued += 1
                self.members = set(QUORUM_MEMBER.findall(line))
            elif request := QUORUM_REQUEST.search(line):
                self.pending.add(request.group(1))
        return self

    def issued_after(self, count: int) -> bool:
        """Whether more than `count` quorums have been issued."""
        return self.update().issued > count

    def first_asking(self) -> str | None:
        """The one replica waiting for a quorum that no other has asked for yet, if there is one."""
        pending = self.update().pending
        return next(iter(pending)) if len(pending) == 1 else None


def wait_briefly(check: Callable[[], bool], timeout_s: float) -> bool:
    """Poll `check` every few milliseconds for up to `timeout_s`; whether it came true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.005)
    return False


def take_turns_until_the_quorum(quorums: QuorumLog, issued: int, waiting: int, working: int,
                                launcher: subprocess.Popen[str]) -> None:
    """With `waiting` held (SIGSTOP) in its wait for a quorum that needs `working`, let `working` run on to its own
    quorum request, and `waiting` run BREATH_S after every HOLD_S so that its heartbeats go on: the two never run at
    the same time. Returns with both held once the quorum is issued (more than `issued` in all)."""
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while time.monotonic() < deadline and launcher.poll() is None:
        wait_briefly(partial(quorums.issued_after, issued), HOLD_S)
        os.kill(working, signal.SIGSTOP)
        if quorums.issued_after(issued):
            return
        os.kill(waiting, signal.SIGCONT)
        time.sleep(BREATH_S)
        os.kill(waiting, signal.SIGSTOP)
        if quorums.issued_after(issued):
            return
        os.kill(working, signal.SIGCONT)
    for pid in (waiting, working):
        os.kill(pid, signal.SIGCONT)
    pytest.fail(f"no quorum was issued within {EVENT_TIMEOUT_S} s of a replica asking for one")


def freeze_in_a_sync(run: Path, live: int, frozen: int, launcher: subprocess.Popen[str], rounds: int = 5) -> None:
    """SIGSTOP replica 1 (`frozen`) inside a sync that replica 0 (`live`) then tries to complete with it.

    From the moment one of them asks for a quorum (which cannot form without the other) until the Lighthouse issues
    it, the two take turns (take_turns_until_the_quorum): whichever ran into the quorum first cannot start the sync's
    all-reduce before the test acts. Then replica 1 is frozen and replica 0 let go, into an all-reduce that replica 1
    never joins. A round in which both ask at the same moment (the quorum may reach the first before it is held) is
    let go and the next one tried."""
    quorums = QuorumLog(run / "logs" / "lighthouse.log")
    pids = {"replica_0": live, "replica_1": frozen}
    for _ in range(rounds):
        first = wait_for("a replica asking for a quorum first", quorums.first_asking, EVENT_TIMEOUT_S, launcher,
                         poll_s=0.005)
        issued = quorums.issued
        os.kill(pids[first], signal.SIGSTOP)
        if quorums.issued_after(issued):
            os.kill(pids[first], signal.SIGCONT)
            continue
        other = next(pid for name, pid in pids.items() if name != first)
        take_turns_until_the_quorum(quorums, issued, pids[first], other, launcher)
        os.kill(live, signal.SIGCONT)  # replica 1 stays held: frozen in the sync
        if quorums.members != set(pids):
            os.kill(frozen, signal.SIGCONT)
            pytest.fail(f"the Lighthouse issued a quorum without one of them: {sorted(quorums.members)}")
        return
    pytest.fail(f"in {rounds} rounds both replicas asked for their quorum at the same moment")


def test_a_replica_frozen_in_a_sync_is_timed_out_not_waited_for(tmp_path: Path, launched: list) -> None:
    """torchft 0.2.0 on CPU: the other replica's all-reduce gives up after diloco.timeout_s, the sync is discarded
    everywhere (its round's start weights restored), and the Lighthouse drops the frozen replica once its heartbeats
    stop (5 s): the next outer steps are applied by a quorum of one. Thawed, the frozen replica's own sync fails, it
    heals from the live one and rejoins."""
    timeout_s = 10
    launcher, run = launch(tmp_path, job(tmp_path, max_steps=UNBOUNDED_STEPS, timeout_s=timeout_s))
    launched.append(launcher)
    started = wait_for("replicas.json", lambda: replicas_file(run), 30, launcher)
    live, frozen = (replica["pid"] for replica in started["replicas"])
    wait_for("the first outer step on both replicas", lambda: outer_steps(run, 0) and outer_steps(run, 1),
             EVENT_TIMEOUT_S, launcher)
    freeze_in_a_sync(run, live, frozen, launcher)
    try:
        stopped_at = outer_steps(run, 1)[-1]
        bound = 3 * timeout_s + 15  # diloco.timeout_s for the hung all-reduce, the heartbeat timeout, two rounds
        wait_for("two outer steps of replica 0 without the frozen one",
                 lambda: applied_alone(run, 0, stopped_at)[1:], bound, launcher)  # not waited for: dropped in time
    finally:
        os.kill(frozen, signal.SIGCONT)
    heal = wait_for("the thawed replica healing and applying outer steps with the other",
                    lambda: rejoined(run, 1, stopped_at), EVENT_TIMEOUT_S, launcher)
    summary = stop(launcher, run)
    failed = summary["faults"]["failed_syncs"]["0"]
    assert failed and failed[0]["quorum_size"] == 2 and failed[0]["step"] == stopped_at + 1, failed  # timed out
    survivor = summary["outer_steps"]["per_replica"]["0"]
    assert survivor == list(range(1, len(survivor) + 1)), survivor
    assert heal["from_replica"] == 0, heal
    thawed = [step for step in summary["outer_steps"]["per_replica"]["1"] if step > stopped_at]
    assert thawed == list(range(heal["outer_step"] + 1, thawed[-1] + 1)), thawed  # nothing of its own after the thaw
    ours, theirs = checksums(run, 0), checksums(run, 1)
    assert [theirs[step] for step in thawed] == [ours[step] for step in thawed]
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
    def applied(*steps: int, checksum: str = "c") -> dict[str, Any]:
        return {"outer_steps": [{"step": step, "quorum_size": 2, "checksum": f"{checksum}{step}"} for step in steps],
                "final_checksum": "a" if steps[-1] == 4 else "b", "final_finite": True}

    steps = merged_steps({0: applied(1, 2, 2, 4), 1: applied(1, 4)})
    assert steps["applied_twice"] == {0: [2]} and steps["applied_by_nobody"] == [3] and steps["count"] == 4
    assert steps["diverged"] == {}
    assert merged_steps({0: applied(1, 2, 3), 1: applied(2, 3, checksum="d")})["diverged"] == {
        "2": {"0": "c2", "1": "d2"}, "3": {"0": "c3", "1": "d3"}}
    assert merged_steps({0: applied(1), 1: {"outer_steps": [{"step": 1, "quorum_size": 2}]}})["diverged"] == {}
    assert merged_steps({0: applied(1, 2), 1: None})["applied_by_nobody"] == []
    assert weights({0: applied(1, 4), 1: applied(1, 3)}, [0, 1])["agree"] is False
    assert weights({0: applied(1, 4), 1: applied(1, 4)}, [0, 1]) == {"checksums": {"0": "a", "1": "a"}, "agree": True,
                                                                     "finite": True}
    assert weights({0: applied(1, 4), 1: None}, [0, 1])["agree"] is False  # a finished replica without a record
