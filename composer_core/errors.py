"""Exception types. Every error names what was wrong and what to do about it."""


class ComposerError(Exception):
    """Base class of every error composer-core raises on purpose."""


class ConfigError(ComposerError, ValueError):
    """A configuration value is invalid or names something that is not registered."""


class BatchError(ComposerError, ValueError):
    """A tensor handed to a loss has the wrong shape, dtype or values."""


class NonFiniteError(BatchError):
    """A loss input or the loss itself is NaN or infinite: the step must not be applied (the training guard
    skips it and reports it; without a guard it stops the run)."""


class PluginError(ComposerError):
    """A plugin failed to load, declared an unknown hook, or registered a duplicate name."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup asked for a name nobody registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class TeacherError(ComposerError):
    """A replay teacher failed: a non-retryable status, retries exhausted, or a malformed reply. The message
    names the teacher, the status and an excerpt of the body; `attempts` counts the requests it took and
    `cost_usd` what they were charged (a malformed reply may still have been paid for)."""

    def __init__(self, message: str, *, teacher: str, status: int | None = None, attempts: int = 1,
                 cost_usd: float = 0.0) -> None:
        super().__init__(message)
        self.teacher = teacher
        self.status = status
        self.attempts = attempts
        self.cost_usd = cost_usd


class SpendCapReached(ComposerError):
    """A paid teacher call was refused because it could take the replay over its spend cap. A replay that
    stops on it sets `report` to its partial report (completed calls are cached: a rerun resumes)."""

    report: object | None = None
