"""The DiLoCo replica for real: the TRL backend's outer-loop hook on its true optimizer step, and two replica processes
syncing through torchft on loopback (an in-process Lighthouse, gloo) to identical final weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("trl")

from composer_core.config import DEFAULT_JOB, ComposerConfig
from composer_core.diloco_settings import DilocoConfig
from composer_core.outer_loop import InnerLoop
from composer_core.plugins import registries

ADAPTERS = Path(__file__).resolve().parents[1] / "adapters"
TINY = {"data": {"train_size": 16, "eval_size": 2},
        "run": {"prompts_per_step": 2, "num_generations": 2, "max_completion_length": 6}}


class RecordingLoop:
    """An OuterLoop that watches the optimizer through the hooks it registers, as torchft's DiLoCo does."""

    def __init__(self, stop_at: int) -> None:
        self.stop_at = stop_at
        self.calls: list[tuple[str, Any]] = []
        self.changed: list[bool] = []
        self.teacher_was_policy: list[bool] = []
        self.before: list[torch.Tensor] = []

    def begin(self, inner: InnerLoop) -> None:
        self.inner = inner
        self.calls.append(("begin", inner.step))
        self.optimizes_the_policy = {id(p) for group in inner.optimizer.param_groups for p in group["params"]} == \
            {id(p) for p in self.trainable()}
        inner.optimizer.register_step_pre_hook(self.pre)
        inner.optimizer.register_step_post_hook(self.post)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [parameter for parameter in self.inner.model.parameters() if parameter.requires_grad]

    def teacher_is_policy(self) -> bool:
        weights = self.inner.state["teacher"].state_dict()["weights"]
        return all(torch.equal(weights[name], parameter) for name, parameter in self.inner.model.named_parameters())

    def pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.before = [parameter.detach().clone() for parameter in self.trainable()]

    def post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.changed.append(any(not torch.equal(old, new) for old, new in zip(self.before, self.trainable(),
                                                                               strict=True)))
        self.teacher_was_policy.append(self.teacher_is_policy())
        self.inner.after_outer_step()  # what DiLoCo's replica does after every sync
        self.teacher_was_policy.append(self.teacher_is_policy())

    def after_step(self, step: int) -> bool:
        self.calls.append(("after_step", step))
        return step >= self.stop_at

    def end(self, completed: bool) -> None:
        self.calls.append(("end", completed))


def test_the_trl_backend_hands_the_outer_loop_its_real_optimizer_step(tmp_path: Path) -> None:
    """Through the backend registry, as the replica calls it: the hooks fire on every update of the policy's weights,
    the EMA teacher is set to the policy on request, and a stop request ends training as a completed schedule."""
    config = ComposerConfig.from_mapping({**DEFAULT_JOB, **TINY}, overrides=["run.max_steps=3"])
    loop = RecordingLoop(stop_at=2)
    summary = registries().backends.get("trl").train(config, output_dir=str(tmp_path / "run"), outer_loop=loop)
    assert summary["steps"] == 2
    assert loop.calls == [("begin", 0), ("after_step", 1), ("after_step", 2), ("end", True)]
    assert loop.optimizes_the_policy and loop.changed == [True, True]
    assert loop.teacher_was_policy == [False, True, False, True]  # an EMA teacher lags until it is reset


def test_hooks_go_on_the_optimizer_under_accelerates_wrapper() -> None:
    from accelerate import Accelerator

    from composer_trl.outer_loop import torch_optimizer

    weight = torch.nn.Parameter(torch.ones(3))
    sgd = torch.optim.SGD([weight], lr=0.5)
    wrapped = Accelerator(cpu=True).prepare(sgd)
    assert wrapped is not sgd and torch_optimizer(wrapped) is sgd
    fired: list[int] = []
    torch_optimizer(wrapped).register_step_post_hook(lambda *_: fired.append(1))
    weight.grad = torch.ones(3)
    wrapped.step()
    assert fired == [1] and torch.equal(weight.detach(), torch.full((3,), 0.5))
    with pytest.raises(TypeError, match="needs a torch optimizer"):
        torch_optimizer(object())


def replica(config: Path, folder: Path, replica_id: int, lighthouse: str) -> subprocess.Popen[str]:
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ADAPTERS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "composer_diloco.replica", "--config", str(config), "--output-dir",
                             str(folder), "--replica-id", str(replica_id), "--lighthouse", lighthouse, "--host",
                             "localhost"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)


def test_two_replicas_apply_the_same_outer_steps_and_end_identical(tmp_path: Path) -> None:
    coordination = pytest.importorskip("torchft.coordination")
    config = tmp_path / "job.json"
    config.write_text(json.dumps({**DEFAULT_JOB, **TINY, "run": {**TINY["run"], "max_steps": 4},
                                  "diloco": {"sync_every": 2, "min_replicas": 2, "timeout_s": 30,
                                             "quorum_timeout_s": 60}}))
    lighthouse = coordination.LighthouseServer(bind="[::]:0", min_replicas=2, join_timeout_ms=30_000)
    try:
        processes = [replica(config, tmp_path / f"replica-{index}", index, lighthouse.address()) for index in (0, 1)]
        logs = [process.communicate(timeout=180)[0] for process in processes]
    finally:
        lighthouse.shutdown()
    for process, log in zip(processes, logs, strict=True):
        assert process.returncode == 0, log[-4000:]
    records = [json.loads((tmp_path / f"replica-{index}" / "diloco.json").read_text()) for index in (0, 1)]
    for record in records:
        assert record["status"] == "completed" and record["failed_syncs"] == []
        assert [(entry["step"], entry["quorum_size"], entry["inner_step"]) for entry in record["outer_steps"]] == \
            [(1, 2, 2), (2, 2, 4)]
        assert record["final_finite"] is True
    assert records[0]["final_checksum"] == records[1]["final_checksum"] is not None
    # torchft's init_sync: at the first sync one replica heals from the other, so both start the same outer model
    heals = [(record["replica_id"], heal["from_replica"], heal["init_sync"]) for record in records
             for heal in record["heals"]]
    assert heals in ([(0, 1, True)], [(1, 0, True)])
    finals = [(tmp_path / f"replica-{index}" / "final" / "model.safetensors").read_bytes() for index in (0, 1)]
    assert finals[0] == finals[1]
    seeds = [json.loads((tmp_path / f"replica-{index}" / "config.json").read_text())["run"]["seed"] for index in (0, 1)]
    assert seeds == [0, 1]  # each replica samples its own data
    assert all(json.loads((tmp_path / f"replica-{index}" / "summary.json").read_text())["steps"] == 4
               for index in (0, 1))


def test_streaming_fragments_sync_in_turn_and_non_finite_weights_leave_before_the_all_reduce(tmp_path: Path) -> None:
    """One replica in this process (a quorum of one): with two fragments one of them syncs every step, in turn; weights
    that are not finite when a sync is due stop the replica before it sends a pseudo-gradient."""
    coordination = pytest.importorskip("torchft.coordination")
    from composer_diloco.outer import NonFiniteWeights, TorchftDiloco
    from composer_diloco.record import ReplicaRecord

    settings = DilocoConfig(sync_every=2, fragments=2, min_replicas=1, timeout_s=10, quorum_timeout_s=10)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    inner = torch.optim.AdamW(model.parameters(), lr=0.01)
    lighthouse = coordination.LighthouseServer(bind="[::]:0", min_replicas=1)
    record = ReplicaRecord(tmp_path, 0, settings, resume=False)
    loop = TorchftDiloco(settings, replica_id=0, lighthouse=lighthouse.address(), host="localhost", max_steps=4,
                         record=record)
    try:
        loop.begin(InnerLoop(model=model, optimizer=inner))
        for _ in range(4):
            model(torch.randn(8, 4)).pow(2).mean().backward()
            inner.step()
            inner.zero_grad()
        steps = json.loads((tmp_path / "diloco.json").read_text())["outer_steps"]
        assert [(entry["step"], entry["fragment"], entry["quorum_size"]) for entry in steps] == \
            [(1, 0, 1), (2, 1, 1), (3, 0, 1), (4, 1, 1)]
        with torch.no_grad():
            model[1].weight[0, 0] = float("nan")
        model(torch.randn(8, 4)).pow(2).mean().backward()
        with pytest.raises(NonFiniteWeights, match="not finite at step 5"):
            inner.step()
        assert loop.manager is not None and loop.manager.current_step() == 4  # nothing was sent or applied
    finally:
        loop.close()
        lighthouse.shutdown()
