"""The sandbox's settings: which backend runs untrusted code, under which limits, and how many runs at once.

A `sandbox:` section of the experiment config, or the `sandbox` keyword of the unit-test reward functions. Every
field has a default that works on a Linux machine with util-linux `unshare` (the `local` backend).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from composer_core.errors import ConfigError
from composer_core.strict_model import StrictModel

Backend = Literal["local", "docker", "sandbox_fusion"]
SANDBOX_OWN = ("dev", "proc", "sandbox")  # top-level folders the local sandbox builds itself


def default_concurrency() -> int:
    """min(usable cores, 8): more sandboxes than cores only make each run slower and timeouts likelier."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 8))


class Limits(StrictModel):
    """What one run may use; past a limit it is stopped and the result says which one (`stopped`)."""

    timeout_s: float = Field(10.0, gt=0, le=3600, description="wall-clock seconds before the run is killed")
    memory_mb: int = Field(1024, ge=16, description="address space per process (local: RLIMIT_AS), or the "
                           "container's memory (docker), in MiB")
    max_processes: int = Field(64, ge=1, description="processes and threads the program may have at once")
    max_output_bytes: int = Field(1 << 20, ge=1024, description="bytes kept of stdout and of stderr each; "
                                  "past it the run is killed (stopped: output_limit)")
    work_dir_mb: int = Field(64, ge=1, description="size of the writable work dir (a tmpfs), MiB")
    max_file_bytes: int = Field(32 << 20, ge=0, description="largest file the program may write (RLIMIT_FSIZE)")
    max_open_files: int = Field(256, ge=16, description="open file descriptors per process (RLIMIT_NOFILE)")


class SandboxConfig(Limits):
    """The backend, its own settings, and the limits every run gets unless a request gives its own."""

    backend: Backend = Field("local", description="local: Linux namespaces via `unshare`, no daemon; docker: a "
                             "container per run; sandbox_fusion: a SandboxFusion server's /run_code")
    max_concurrency: int = Field(default_factory=default_concurrency, ge=1, le=1024,
                                 description="runs at once in this process (default: min(cores, 8))")
    queue_timeout_s: float = Field(600.0, gt=0, description="longest wait for a free run slot before giving up")
    python: str | None = Field(None, description="interpreter that runs Python code: local default the one "
                               "running composer-core (its installation, not its virtualenv); docker default "
                               "`python3` of the image")
    readonly_paths: tuple[str, ...] = Field((), description="local: host paths visible read-only besides the "
                                            "system's /usr, /bin, /lib* and the Python installation")
    docker_image: str = Field("python:3.11-slim", description="image of the docker backend (pulled beforehand)")
    docker_binary: str = Field("docker", description="the docker CLI")
    sandbox_fusion_url: str | None = Field(None, description="base URL of a SandboxFusion server, e.g. "
                                           "http://127.0.0.1:8080 (from `composer-core sandbox serve`)")
    http_margin_s: float = Field(15.0, gt=0, description="sandbox_fusion: seconds allowed on top of the run's "
                                 "timeout for the HTTP round trip")

    @model_validator(mode="after")
    def _backend_settings(self) -> SandboxConfig:
        if self.backend == "sandbox_fusion" and not self.sandbox_fusion_url:
            raise ValueError("backend sandbox_fusion needs sandbox_fusion_url (e.g. http://127.0.0.1:8080)")
        for path in self.readonly_paths:
            parts = PurePosixPath(path).parts
            if not PurePosixPath(path).is_absolute() or len(parts) < 2 or ".." in parts or parts[1] in SANDBOX_OWN:
                raise ValueError(f"readonly_paths: {path!r} must be an absolute host path other than / and outside "
                                 f"{', '.join('/' + name for name in SANDBOX_OWN)} (the sandbox makes its own)")
        return self

    @property
    def limits(self) -> Limits:
        """The default limits of a run."""
        return Limits(**{name: getattr(self, name) for name in Limits.model_fields})


def sandbox_config(data: Mapping[str, Any], where: str = "sandbox") -> SandboxConfig:
    """`data` validated as a SandboxConfig; a ConfigError with one `where.field: problem` per mistake."""
    try:
        return SandboxConfig.model_validate(dict(data))
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(part) for part in (where, *problem['loc']))}: "
                             f"{problem['msg'].removeprefix('Value error, ')}" for problem in error.errors())
        raise ConfigError(f"invalid sandbox settings: {problems}") from None
