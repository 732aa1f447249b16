"""diloco.json's checksum of every outer step: the outer weights the step produced (torchft's own copy of the outer
model), of the fragment it synced only, so that replicas can be compared step by step. One replica in this process,
a quorum of one through an in-process Lighthouse."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from composer_core.diloco_settings import DilocoConfig
from composer_core.outer_loop import InnerLoop

pytest.importorskip("torchft")

from torchft.coordination import LighthouseServer

from composer_diloco.outer import TorchftDiloco
from composer_diloco.record import ReplicaRecord, weights_checksum


@pytest.fixture
def lighthouse() -> Iterator[str]:
    server = LighthouseServer(bind="[::]:0", min_replicas=1)
    yield server.address()
    server.shutdown()


def replica(tmp_path: Path, lighthouse: str, *, fragments: int, max_steps: int, step_checksums: bool = True
            ) -> tuple[TorchftDiloco, InnerLoop]:
    """A started outer loop of one replica around a two-layer model and its AdamW."""
    torch.manual_seed(0)
    settings = DilocoConfig(sync_every=2, fragments=fragments, min_replicas=1, timeout_s=10, quorum_timeout_s=10,
                            step_checksums=step_checksums)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    inner = InnerLoop(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.01))
    loop = TorchftDiloco(settings, replica_id=0, lighthouse=lighthouse, host="localhost", max_steps=max_steps,
                         record=ReplicaRecord(tmp_path, 0, settings, resume=False))
    loop.begin(inner)
    return loop, inner


def inner_step(inner: InnerLoop) -> None:
    inner.model(torch.randn(8, 4)).pow(2).mean().backward()
    inner.optimizer.step()
    inner.optimizer.zero_grad()


def recorded(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "diloco.json").read_text())


def test_each_outer_step_records_its_fragments_outer_weights(tmp_path: Path, lighthouse: str) -> None:
    loop, inner = replica(tmp_path, lighthouse, fragments=2, max_steps=4)
    outer_models = []
    try:
        for step in range(4):
            inner_step(inner)
            assert loop.diloco is not None
            synced = loop.diloco._fragments[step % 2]  # torchft 0.2.0 keeps the outer model as original_parameters
            outer_models.append(weights_checksum(list(synced.original_parameters.values()))[0])
    finally:
        loop.close()
    entries = recorded(tmp_path)["outer_steps"]
    assert [(entry["step"], entry["fragment"]) for entry in entries] == [(1, 0), (2, 1), (3, 0), (4, 1)]
    assert [entry["checksum"] for entry in entries] == outer_models
    assert len(set(outer_models)) == 4
    everything = weights_checksum(loop.trainable())[0]
    assert everything not in outer_models  # a fragment's weights, not the whole model's


def test_the_last_outer_steps_checksum_is_the_final_outer_models(tmp_path: Path, lighthouse: str) -> None:
    """Inner steps after the last sync are not part of the final model: it is the last outer step's weights."""
    loop, inner = replica(tmp_path, lighthouse, fragments=1, max_steps=5)
    try:
        for _ in range(5):
            inner_step(inner)
        local = weights_checksum(loop.trainable())[0]
        loop.end(completed=True)
    finally:
        loop.close()
    record = recorded(tmp_path)
    checksums = [entry["checksum"] for entry in record["outer_steps"]]
    assert len(checksums) == 2 and checksums[0] != checksums[1]
    assert record["final_checksum"] == checksums[-1] != local


def test_step_checksums_can_be_turned_off(tmp_path: Path, lighthouse: str) -> None:
    loop, inner = replica(tmp_path, lighthouse, fragments=1, max_steps=2, step_checksums=False)
    try:
        for _ in range(2):
            inner_step(inner)
    finally:
        loop.close()
    entries = recorded(tmp_path)["outer_steps"]
    assert [entry["step"] for entry in entries] == [1] and "checksum" not in entries[0]
