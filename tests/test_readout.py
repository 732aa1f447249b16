"""Readout: named device scalars read into Python floats together, each value exactly as `.item()` gives it."""

from __future__ import annotations

import torch

from composer_core.readout import Readout


def test_values_read_as_item_reads_them():
    readout = Readout()
    values = {"mean": torch.tensor(0.1, dtype=torch.float32), "wide": torch.tensor(1 / 3, dtype=torch.float64),
              "flag": torch.tensor(True), "count": torch.tensor(7)}
    readout.add(**values)
    assert readout.read() == {name: float(value.item()) for name, value in values.items()}


def test_counts_beyond_float32_stay_exact_next_to_float32_values():
    readout = Readout()
    readout.add(tokens=torch.tensor(2**24 + 1), mean=torch.tensor(0.25, dtype=torch.float32))
    assert readout.read() == {"tokens": float(2**24 + 1), "mean": 0.25}


def test_integers_alone_stay_integers_until_read():
    readout = Readout()
    readout.add(big=torch.tensor(2**53 - 1), small=torch.tensor(3, dtype=torch.int32))
    assert readout.read() == {"big": float(2**53 - 1), "small": 3.0}


def test_one_transfer_for_every_value(monkeypatch):
    transfers = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: transfers.append(self.shape) or original(self))
    readout = Readout()
    readout.add(a=torch.tensor(1.0), b=torch.tensor(2), c=torch.tensor(3.0, dtype=torch.float64))
    assert readout.read() == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert transfers == [torch.Size([3])]


def test_nothing_added_reads_nothing():
    assert Readout().read() == {}
