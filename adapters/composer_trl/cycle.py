"""A seeded cycle over N items, reshuffled every epoch, whose position is saved with a checkpoint.

The extra batches mixed into every GRPO step (preference pairs, off-policy targets) draw from it: a batch that
crosses an epoch boundary takes the rest from the next epoch, so every batch is full, and a resumed run draws
exactly the items it would have drawn.
"""

from __future__ import annotations

from typing import Any

import torch

from composer_core.errors import ConfigError


class SeededCycle:
    """Indices 0..size-1 in a fresh permutation per epoch (the plain order when `shuffle` is False)."""

    def __init__(self, size: int, *, seed: int = 0, shuffle: bool = True) -> None:
        self.size = size
        self.shuffle = shuffle
        self.epoch = 0
        self._generator = torch.Generator().manual_seed(seed)
        self._order = self._epoch_order()
        self._cursor = 0

    def take(self, count: int) -> list[int]:
        """The next `count` indices of the cycle."""
        picked: list[int] = []
        while len(picked) < count:
            if self._cursor == len(self._order):
                self.epoch += 1
                self._order = self._epoch_order()
                self._cursor = 0
            take = min(count - len(picked), len(self._order) - self._cursor)
            picked.extend(self._order[self._cursor:self._cursor + take])
            self._cursor += take
        return picked

    def state_dict(self) -> dict[str, Any]:
        """Where the cycle stands (epoch, order, cursor, generator)."""
        return {"epoch": self.epoch, "order": list(self._order), "cursor": self._cursor, "size": self.size,
                "generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any], what: str, source: str) -> None:
        """Restore a saved position; `what` names the items and `source` where they came from, for the error when
        the checkpoint was saved over a different number of them."""
        if state["size"] != self.size:
            raise ConfigError(f"the checkpoint's {what} were {state['size']}, this run's are {self.size}: resume "
                              f"with the same {source}")
        self.epoch, self._order, self._cursor = state["epoch"], list(state["order"]), state["cursor"]
        self._generator.set_state(state["generator"])

    def _epoch_order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        return torch.randperm(self.size, generator=self._generator).tolist()
