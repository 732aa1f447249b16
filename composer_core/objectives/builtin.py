"""The built-in objectives, registered through the same hook as any plugin's."""

from __future__ import annotations

from composer_core.objectives.base import Objective
from composer_core.objectives.surrogates import (
    CISPOParams,
    ClipParams,
    NoParams,
    SAPOParams,
    SequenceClipParams,
    cispo,
    gspo,
    ppo_clip,
    reinforce,
    sapo,
)
from composer_core.plugins import Register, hookimpl

BUILTIN_OBJECTIVES = (
    Objective("grpo", ppo_clip, ClipParams, "seq-mean-token-mean", "grpo",
              "PPO clip; per-sequence token mean, then mean over sequences; group-normalised advantages",
              normaliser="local"),
    Objective("dr_grpo", ppo_clip, ClipParams, "seq-mean-token-sum-norm", "dr_grpo",
              "PPO clip; token sum over a constant length (B * max_length); advantages without std division"),
    Objective("bnpo", ppo_clip, ClipParams, "token-mean", "grpo",
              "PPO clip; token mean over the local batch", normaliser="local"),
    Objective("dapo", ppo_clip, ClipParams, "token-mean", "grpo",
              "PPO clip-higher (0.2 / 0.28); token mean over the global batch",
              defaults={"clip_ratio_high": 0.28}),
    Objective("gspo", gspo, SequenceClipParams, "seq-mean-token-mean", "grpo",
              "sequence-level ratio exp(mean log r) with tight clip bounds (3e-4 / 4e-4)"),
    Objective("cispo", cispo, CISPOParams, "token-mean", "grpo",
              "REINFORCE with a clipped, stopped importance weight (cap 5.0); global token mean"),
    Objective("sapo", sapo, SAPOParams, "seq-mean-token-mean", "grpo",
              "soft sigmoid gate on the ratio instead of a hard clip", normaliser="local"),
    Objective("ppo", ppo_clip, ClipParams, "token-mean", "grpo",
              "PPO clip with dual clip c = 3 for negative advantages (verl's vanilla)",
              defaults={"dual_clip_c": 3.0}),
    Objective("reinforce", reinforce, NoParams, "token-mean", "grpo",
              "plain REINFORCE, -A log pi (no ratio, no clip)"),
)


@hookimpl
def register_objectives(register: Register) -> None:
    for objective in BUILTIN_OBJECTIVES:
        register(objective)
