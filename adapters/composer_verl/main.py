"""`python -m composer_verl.main ...`: VeRL's own launcher (`verl.trainer.main_ppo`, same config and overrides),
ending with GUARD_EXIT_CODE when the training guard stopped the run.

The composer trainer runs inside VeRL's TaskRunner, a Ray actor, so a guard stop reaches the launching process as
Ray's error wrapping `GuardStopped`. VeRL's launcher reports any error with exit status 1; this one tells the stop
apart, prints one line instead of a traceback, and exits with the guard's code.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig
from verl.trainer import main_ppo

from composer_core.guard import GUARD_EXIT_CODE
from composer_verl.guard_hook import GuardStopped


def guard_stop(error: BaseException) -> GuardStopped | None:
    """The guard's stop inside `error`: raised here, or carried by Ray's RayTaskError from the TaskRunner."""
    cause = getattr(error, "cause", error)
    return cause if isinstance(cause, GuardStopped) else None


def run(config: DictConfig) -> None:
    """VeRL's main_ppo on `config`; a guard stop exits with GUARD_EXIT_CODE, any other error propagates."""
    try:
        main_ppo.main.__wrapped__(config)  # VeRL's main without its hydra wrapper, which turns errors into 1
    except Exception as error:
        stop = guard_stop(error)
        if stop is None:
            raise
        print(f"composer-core: {stop}", file=sys.stderr, flush=True)
        sys.exit(GUARD_EXIT_CODE)


@hydra.main(config_path="pkg://verl.trainer.config", config_name="ppo_trainer", version_base=None)
def main(config: DictConfig) -> None:
    run(config)


if __name__ == "__main__":
    main()
