"""The `diloco:` section of the experiment config: the DiLoCo outer loop that the `diloco` backend runs on torchft.

Each replica trains `sync_every` inner steps (the inner backend's optimizer, AdamW on TRL), then the replicas
average their pseudo-gradients (start-of-round weights minus current weights) and apply them with an outer
Nesterov SGD (DiLoCo, arXiv 2311.08105: lr 0.7, momentum 0.9). With `fragments` > 1 the model is split and one
fragment syncs every `sync_every / fragments` steps (Streaming DiLoCo, arXiv 2501.18512). The rules checked here
are torchft 0.2.0's own (`torchft.local_sgd.DiLoCo`), so a bad value fails as the config loads, not at a replica's
first sync.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from composer_core.strict_model import StrictModel


class DilocoConfig(StrictModel):
    """Outer-loop settings; ignored by every backend but `diloco`."""

    sync_every: int = Field(8, ge=1, description="H: inner optimizer steps between outer steps (one round); the "
                            "DiLoCo paper uses 500 pre-training steps, an RL step is far longer")
    outer_lr: float = Field(0.7, gt=0.0, description="outer SGD learning rate on the averaged pseudo-gradient "
                            "(DiLoCo paper and torchft: 0.7)")
    outer_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="outer SGD momentum (DiLoCo paper: 0.9)")
    nesterov: bool = Field(True, description="Nesterov momentum in the outer SGD (DiLoCo paper: on); needs "
                           "outer_momentum > 0")
    fragments: int = Field(1, ge=1, description="Streaming DiLoCo: the trainable parameters are split into this many "
                           "fragments, one synced every sync_every / fragments steps; 1: plain DiLoCo")
    fragment_sync_delay: int = Field(0, ge=0, description="Streaming DiLoCo's tau: inner steps a fragment's "
                                     "all-reduce may overlap before the replica waits for it")
    min_replicas: int = Field(1, ge=1, description="fewest replicas an outer step may be applied with; a sync with "
                              "fewer is discarded (every replica keeps its start-of-round weights)")
    quorum_timeout_s: float = Field(1800.0, gt=0.0, description="how long a replica waits at a sync for the quorum "
                                    "(the other replicas reaching the same round); torchft advises about an hour "
                                    "for DiLoCo")
    timeout_s: float = Field(60.0, gt=0.0, description="bound on each collective, commit vote and checkpoint "
                             "transfer: a replica that hangs in a sync is timed out and the sync discarded")
    max_restarts: int = Field(3, ge=0, description="the local launcher restarts a dead replica this many times "
                              "(it resumes from its checkpoint and heals from a live peer)")
    step_checksums: bool = Field(True, description="record in diloco.json a sha256 of the weights each outer step "
                                 "produced (one pass over the synced fragment, copied to the CPU), so that replicas "
                                 "are compared at every step; off for models where that pass is too slow")

    @model_validator(mode="after")
    def _torchft_rules(self) -> DilocoConfig:
        if self.nesterov and self.outer_momentum == 0:
            raise ValueError("diloco.nesterov needs diloco.outer_momentum > 0 (torch's SGD refuses Nesterov without "
                             "momentum): set outer_momentum (0.9 in DiLoCo) or nesterov: false")
        if self.sync_every % self.fragments:
            raise ValueError(f"diloco.sync_every ({self.sync_every}) must be a multiple of diloco.fragments "
                             f"({self.fragments}): each fragment syncs every sync_every / fragments steps")
        period = self.sync_every // self.fragments
        if self.fragment_sync_delay >= period:
            raise ValueError(f"diloco.fragment_sync_delay ({self.fragment_sync_delay}) must be less than "
                             f"sync_every / fragments ({period}): a fragment must finish syncing before its next "
                             "round starts")
        return self
