"""Exception types. Every error names what was wrong and what to do about it."""


class ComposerError(Exception):
    """Base class of every error composer-core raises on purpose."""


class ConfigError(ComposerError, ValueError):
    """A configuration value is invalid or names something that is not registered."""


class BatchError(ComposerError, ValueError):
    """A tensor handed to a loss has the wrong shape, dtype or values."""


class PluginError(ComposerError):
    """A plugin failed to load, declared an unknown hook, or registered a duplicate name."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup asked for a name nobody registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])
