"""The `verl.plugins` entry point: `import verl` (driver and every Ray worker) loads this module.

It registers every composer objective (built-in and plugin) as the VeRL policy-loss mode `composer_<name>`,
every composer advantage estimator as `composer_<name>`, and the `composer` V1 trainer. VeRL swallows plugin
import errors at DEBUG level (a broken plugin would surface later as "Unsupported loss mode"), so failures
here are logged as warnings naming the cause. `COMPOSER_VERL_PLUGIN=off` switches the plugin off.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from composer_verl.advantages import AdvantageFn
    from composer_verl.policy_loss import PolicyLossFn

logger = logging.getLogger("composer_verl")

SWITCH = "COMPOSER_VERL_PLUGIN"
OFF_VALUES = {"0", "off", "false", "no", "none"}


def enabled() -> bool:
    return os.environ.get(SWITCH, "on").strip().lower() not in OFF_VALUES


@functools.cache
def _policy_loss_fn(name: str) -> PolicyLossFn:
    """One function per objective, so that loading twice registers the same object again."""
    from composer_verl.policy_loss import make_policy_loss_fn

    return make_policy_loss_fn(name)


@functools.cache
def _advantage_fn(name: str) -> AdvantageFn:
    """VeRL's estimator registry refuses a second, different function under one name."""
    from composer_verl.advantages import make_advantage_fn

    return make_advantage_fn(name)


def register_losses_and_estimators() -> tuple[list[str], list[str]]:
    """Put every composer objective and estimator into VeRL's registries; returns the names registered."""
    from verl.trainer.ppo import core_algos

    from composer_core import registries
    from composer_verl.advantages import estimator_name
    from composer_verl.policy_loss import loss_mode_name

    objectives = registries().objectives.names()
    for name in objectives:
        core_algos.register_policy_loss(loss_mode_name(name))(_policy_loss_fn(name))
    estimators = registries().advantage_estimators.names()
    for name in estimators:
        core_algos.register_adv_est(estimator_name(name))(_advantage_fn(name))
    return [loss_mode_name(n) for n in objectives], [estimator_name(n) for n in estimators]


def register_trainer() -> str | None:
    """Register the composer V1 trainer; it needs VeRL's V1 stack (TransferQueue and friends)."""
    try:
        from composer_verl.trainer import TRAINER_NAME
    except ImportError as error:
        logger.warning("composer-core: the `composer` VeRL trainer is not registered because VeRL's V1 trainer "
                       "stack does not import (%s); install composer-core[verl], which brings its dependencies. "
                       "The composer_* loss modes and estimators are registered.", error)
        return None
    return TRAINER_NAME


def unread_group_overrides(argv: list[str]) -> list[str]:
    """`composer.*` overrides on a command line that does not select the composer trainer, which reads them."""
    group = [arg for arg in argv if arg.lstrip("+~").startswith("composer.")]
    if not group or "trainer.v1.trainer_mode=composer" in argv:
        return []
    return group


def load() -> None:
    """Register everything, logging (never raising) what went wrong: VeRL would hide the error."""
    if not enabled():
        logger.info("composer-core VeRL plugin switched off by %s", SWITCH)
        return
    try:
        register_losses_and_estimators()
    except Exception as error:
        logger.warning("composer-core: registering the composer_* loss modes and advantage estimators in VeRL "
                       "failed, so `loss_mode=composer_...` will be reported as unsupported: %s: %s",
                       type(error).__name__, error)
        return
    register_trainer()
    unread = unread_group_overrides(sys.argv[1:])
    if unread:
        logger.warning("composer-core: %s would be ignored: the composer config group is read by the composer "
                       "trainer only; add trainer.use_v1=true trainer.v1.trainer_mode=composer", unread[0])


load()
