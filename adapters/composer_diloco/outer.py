"""DiLoCo as a composer_core.outer_loop.OuterLoop, entirely on torchft 0.2.0: `torchft.Manager` (quorum through the
Lighthouse, gloo process group, healing, commit votes) and `torchft.local_sgd.DiLoCo` (pseudo-gradients, outer SGD,
Streaming DiLoCo fragments, restoring the round's start weights when a sync fails). Nothing here averages or heals.

What travels when a replica heals from a live peer (its Manager state dict, next to torchft's own outer-optimizer
and start-of-round weights): the policy's trainable weights, the inner optimizer's state, the backend's shared state
(the self-distillation teacher) and the peer's position in the schedule. torchft's `init_sync` heals every replica
from one at the first sync, so replicas whose initial weights differ (LoRA's random init, a per-replica seed) start
the same outer model; the price is that only that replica's first round counts.

Teacher and reference across a sync. An EMA teacher is a function of the local trajectory: left alone, each replica
would distill toward a different teacher and a healed replica would carry its donor's. So after every sync (applied
or discarded) the backend sets an EMA teacher to the policy (`InnerLoop.after_outer_step`), which is then the same
outer model on every replica: within a round the teacher is an EMA started at the round's outer model. A frozen or
trust-region teacher holds the initial weights, the same everywhere, and is only copied on a heal; the KL reference
(the initial weights) never changes. With fragments > 1 the teacher is reset at every fragment's sync, when part of
the policy still holds local steps.

A replica that stops for a training-health reason leaves the quorum rather than poison the average: a guard stop
ends training (`end(completed=False)`: hooks removed, Manager shut down, heartbeats stop, torchft shrinks the quorum);
weights that are not finite when a sync is due raise `NonFiniteWeights` before the all-reduce starts.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

import torch
from torch import nn
from torch.distributed import TCPStore
from torch.utils.hooks import RemovableHandle
from torchft import Manager, ProcessGroupGloo
from torchft.local_sgd import DiLoCo

from composer_core.diloco_settings import DilocoConfig
from composer_core.errors import ConfigError
from composer_core.outer_loop import InnerLoop
from composer_diloco.record import ReplicaRecord, weights_checksum


class NonFiniteWeights(RuntimeError):
    """This replica's weights are not finite at a sync: it leaves before sending a pseudo-gradient."""


class ObservedManager(Manager):
    """torchft's Manager, remembering each commit vote (one per sync) for the replica's record."""

    last_vote: dict[str, Any] | None = None

    def should_commit(self, timeout: timedelta | None = None) -> bool:
        step = self.current_step()
        committed = super().should_commit(timeout)
        error = self.errored()
        self.last_vote = {"committed": committed, "step": step + 1, "quorum_size": self.num_participants(),
                          "error": None if error is None else repr(error.original_exception)}
        return committed


def split_fragments(parameters: list[nn.Parameter], count: int) -> list[nn.ParameterList]:
    """`count` contiguous groups of about equal size (Streaming DiLoCo's fragments), sharing the parameters."""
    total = sum(parameter.numel() for parameter in parameters)
    groups: list[list[nn.Parameter]] = [[] for _ in range(count)]
    seen = 0
    for parameter in parameters:
        groups[min(count - 1, seen * count // max(total, 1))].append(parameter)
        seen += parameter.numel()
    if not all(groups):
        raise ConfigError(f"diloco.fragments={count} but the policy has {len(parameters)} trainable parameter "
                          "tensors, too few to split; lower diloco.fragments")
    return [nn.ParameterList(group) for group in groups]


class TorchftDiloco:
    """One replica's outer loop. `lighthouse`: the Lighthouse URL; `host`: the name other replicas reach this one
    by (its store and Manager); `max_steps`: the schedule, for a replica that healed from a peer further on."""

    def __init__(self, settings: DilocoConfig, *, replica_id: int, lighthouse: str, host: str, max_steps: int,
                 record: ReplicaRecord) -> None:
        self.settings, self.replica_id, self.lighthouse, self.host = settings, replica_id, lighthouse, host
        self.max_steps, self.record = max_steps, record
        self.period = settings.sync_every // settings.fragments
        self.inner: InnerLoop | None = None
        self.manager: ObservedManager | None = None
        self.diloco: DiLoCo | None = None
        self.fragments: list[nn.ParameterList] = []
        self.store: TCPStore | None = None
        self.hooks: list[RemovableHandle] = []
        self.steps = 0  # inner steps applied, as the backend counts them
        self.offset = 0  # schedule position minus steps: nonzero after healing from a peer further on

    @property
    def started(self) -> bool:
        return self.inner is not None

    # ---- the OuterLoop protocol ----------------------------------------------------------------------------------

    def begin(self, inner: InnerLoop) -> None:
        self.inner, self.steps = inner, inner.step
        settings = self.settings
        self.fragments = split_fragments(self.trainable(), settings.fragments)
        self.manager = self._manager()
        outer = [torch.optim.SGD(fragment.parameters(), lr=settings.outer_lr, momentum=settings.outer_momentum,
                                 nesterov=settings.nesterov) for fragment in self.fragments]
        self.diloco = DiLoCo(self.manager, list(self.fragments), inner.optimizer, outer, sync_every=settings.sync_every,
                             fragment_sync_delay=settings.fragment_sync_delay)
        self.hooks.append(inner.optimizer.register_step_post_hook(self._before_sync))  # runs before DiLoCo's hooks
        self.diloco.__enter__()
        self.hooks.append(inner.optimizer.register_step_post_hook(self._after_sync))  # and this one after them
        self._join_round(inner.step)
        self.record.started(inner.step)
        print(f"diloco: replica {self.replica_id} joined {self.lighthouse} at step {inner.step}: "
              f"H={settings.sync_every}, {settings.fragments} fragment(s), outer SGD lr {settings.outer_lr} momentum "
              f"{settings.outer_momentum}{' nesterov' if settings.nesterov else ''}", file=sys.stderr)

    def after_step(self, step: int) -> bool:
        return step + self.offset >= self.max_steps

    def end(self, completed: bool) -> None:
        if self.diloco is None:
            return
        self._unhook()
        if completed:  # the outer model: inner steps after a fragment's last sync are not part of it
            self.diloco._restore_parameters()  # torchft 0.2.0 has no public name for this
        self.diloco = None
        self.record.weights(self.trainable(), completed=completed, step=self.steps)
        self.close()

    def close(self) -> None:
        """Leave the quorum: no more hooks, the Manager (and its heartbeats) shut down. Safe to call twice."""
        self._unhook()
        if self.manager is not None:
            self.manager.shutdown(wait=False)
            self.manager = None

    # ---- torchft ----------------------------------------------------------------------------------------------------

    def _manager(self) -> ObservedManager:
        settings = self.settings
        timeout = timedelta(seconds=settings.timeout_s)
        self.store = TCPStore(host_name=self.host, port=0, is_master=True, wait_for_workers=False)
        return ObservedManager(pg=ProcessGroupGloo(timeout=timeout), load_state_dict=self._load_state_dict,
                               state_dict=self._state_dict, min_replica_size=settings.min_replicas,
                               use_async_quorum=False, timeout=timeout,
                               quorum_timeout=timedelta(seconds=settings.quorum_timeout_s), connect_timeout=timeout,
                               rank=0, world_size=1, store_addr=self.host, store_port=self.store.port,
                               lighthouse_addr=self.lighthouse, replica_id=f"replica_{self.replica_id}",
                               hostname=self.host, init_sync=True)

    def _join_round(self, step: int) -> None:
        """A replica resumed at `step` syncs when the others do (rounds start at multiples of the fragment period):
        torchft counts inner steps from its construction (0.2.0 has no public setter for the count). Past the
        round's all-reduce point it waits for the next round."""
        assert self.diloco is not None
        phase = step % self.period
        prepare = self.period - self.settings.fragment_sync_delay
        self.diloco._local_step = phase if phase < prepare else phase - self.period

    def _before_sync(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.steps += 1
        assert self.diloco is not None
        due = self.diloco._local_step + 1 == self.period - self.settings.fragment_sync_delay
        if due and not all(bool(torch.isfinite(parameter).all()) for parameter in self.trainable()):
            raise NonFiniteWeights(f"replica {self.replica_id}: the policy's weights are not finite at step "
                                   f"{self.steps}, when its pseudo-gradient was due; it leaves the quorum so that "
                                   "the others' average stays finite")

    def _after_sync(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        assert self.manager is not None and self.inner is not None
        vote, self.manager.last_vote = self.manager.last_vote, None
        if vote is None:
            return  # no sync this step
        self.inner.after_outer_step()
        fragment = (vote["step"] - 1) % self.settings.fragments
        entry = {"step": vote["step"], "quorum_size": vote["quorum_size"], "inner_step": self.steps,
                 "fragment": fragment}
        if vote["committed"]:
            checksum = {"checksum": self.outer_checksum(fragment)} if self.settings.step_checksums else {}
            self.record.event("outer_steps", {**entry, **checksum})
        else:
            self.record.event("failed_syncs", {**entry, "error": vote["error"]})
            print(f"diloco: the sync at step {self.steps} was discarded by the replicas ({vote['error']}); the round's "
                  "start weights are restored", file=sys.stderr)

    # ---- what a healing peer receives ---------------------------------------------------------------------------

    def _state_dict(self) -> dict[str, Any]:
        assert self.inner is not None
        return {"replica_id": self.replica_id, "position": self.steps + self.offset,
                "policy": dict(self.named_trainable()), "optimizer": self.inner.optimizer.state_dict(),
                "shared": {name: holder.state_dict() for name, holder in self.inner.state.items()}}

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.inner is not None and self.manager is not None
        with torch.no_grad():
            for name, parameter in self.named_trainable():
                parameter.copy_(state["policy"][name])
        self.inner.optimizer.load_state_dict(state["optimizer"])
        for name, holder in self.inner.state.items():
            holder.load_state_dict(state["shared"][name])
        self.offset = state["position"] - self.steps
        outer_step = self.manager.current_step()
        self.record.event("heals", {"from_replica": state["replica_id"], "outer_step": outer_step,
                                    "inner_step": self.steps, "donor_position": state["position"],
                                    "init_sync": outer_step == 0})
        print(f"diloco: healed from replica {state['replica_id']} at outer step {outer_step} (its inner step "
              f"{state['position']}, ours {self.steps})", file=sys.stderr)

    # ---- helpers ---------------------------------------------------------------------------------------------------

    def named_trainable(self) -> list[tuple[str, nn.Parameter]]:
        assert self.inner is not None
        return [(name, parameter) for name, parameter in self.inner.model.named_parameters() if parameter.requires_grad]

    def trainable(self) -> list[nn.Parameter]:
        return [parameter for _, parameter in self.named_trainable()]

    def outer_checksum(self, fragment: int) -> str:
        """sha256 of `fragment`'s weights right after an outer step updated it: torchft has just set them to the new
        outer model (fragment_update_alpha 0), the same on every replica of the step's quorum."""
        return weights_checksum(list(self.fragments[fragment].parameters()))[0]

    def _unhook(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
        if self.diloco is not None:
            self.diloco.__exit__(None, None, None)
