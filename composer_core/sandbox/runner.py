"""`Sandbox`: the configured backend behind a bounded number of run slots, so that a batch of 256 completions
never starts 256 sandboxes at once (every caller in the process shares the slots of one config)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from composer_core.errors import ComposerError
from composer_core.sandbox.protocol import Backend, SandboxRequest, SandboxResult
from composer_core.sandbox.settings import SandboxConfig, sandbox_config


class SandboxBusy(ComposerError):
    """No run slot came free within queue_timeout_s."""


def make_backend(config: SandboxConfig) -> Backend:
    """The backend `config.backend` names (each checks on creation that it can run here)."""
    if config.backend == "local":
        from composer_core.sandbox.local import LocalBackend

        return LocalBackend(config)
    if config.backend == "docker":
        from composer_core.sandbox.docker import DockerBackend

        return DockerBackend(config)
    from composer_core.sandbox.fusion import SandboxFusionBackend

    return SandboxFusionBackend(config)


class Sandbox:
    """Runs requests on one backend, at most `config.max_concurrency` at a time."""

    def __init__(self, config: SandboxConfig | None = None, backend: Backend | None = None) -> None:
        self.config = config or SandboxConfig()
        self.backend = backend or make_backend(self.config)
        self._slots = threading.BoundedSemaphore(self.config.max_concurrency)

    def run(self, request: SandboxRequest) -> SandboxResult:
        """One run, once a slot is free (waiting at most queue_timeout_s)."""
        if not self._slots.acquire(timeout=self.config.queue_timeout_s):
            raise SandboxBusy(f"no sandbox run slot came free within {self.config.queue_timeout_s} s "
                              f"({self.config.max_concurrency} runs at once); raise sandbox.queue_timeout_s or "
                              "sandbox.max_concurrency")
        try:
            return self.backend.run(request, request.limits or self.config.limits)
        finally:
            self._slots.release()

    def run_many(self, requests: Sequence[SandboxRequest]) -> list[SandboxResult]:
        """Every request, in order, at most max_concurrency at a time."""
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(len(requests), self.config.max_concurrency),
                                thread_name_prefix="sandbox") as pool:
            return list(pool.map(self.run, requests))


@functools.cache
def _shared(config: SandboxConfig) -> Sandbox:
    return Sandbox(config)


def sandbox_for(settings: SandboxConfig | Mapping[str, Any] | None = None, **overrides: Any) -> Sandbox:
    """The process-wide Sandbox of these settings (a dict, a SandboxConfig or None for the defaults, with keyword
    overrides): every reward call with the same settings shares its run slots and its backend."""
    data = dict(settings.model_dump() if isinstance(settings, SandboxConfig) else settings or {})
    data.update({key: value for key, value in overrides.items() if value is not None})
    return _shared(sandbox_config(data))
