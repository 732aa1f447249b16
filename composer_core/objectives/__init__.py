"""Channel 1, policy optimisation: surrogates, aggregation, advantage estimators, KL estimators."""

from composer_core.objectives.advantages import (
    AdvantageEstimator,
    AdvantageInputs,
    informative_groups,
    make_inputs,
    overlong_penalty,
)
from composer_core.objectives.aggregation import AGGREGATION_MODES, Normaliser, aggregate
from composer_core.objectives.base import Objective, ObjectiveParams, PolicyBatch, TokenLoss
from composer_core.objectives.kl import kl_estimate, kl_penalised_rewards

__all__ = [
    "AGGREGATION_MODES",
    "AdvantageEstimator",
    "AdvantageInputs",
    "Normaliser",
    "Objective",
    "ObjectiveParams",
    "PolicyBatch",
    "TokenLoss",
    "aggregate",
    "informative_groups",
    "kl_estimate",
    "kl_penalised_rewards",
    "make_inputs",
    "overlong_penalty",
]
