"""Running untrusted code (model-written programs and their tests) behind one interface, several backends.

`Sandbox(config).run(SandboxRequest(code=...))` -> `SandboxResult`; backends: `local` (Linux namespaces through
`unshare`, the default), `docker`, `sandbox_fusion` (a SandboxFusion server's /run_code). `server` serves the
SandboxFusion API on top of the local backend, for VeRL. See docs/sandbox.md for the threat model.

This package's __init__ imports only the settings and the request/result types: composer_core.config imports
`SandboxConfig` from here, and the backends load when a Sandbox is made.
"""

from composer_core.sandbox.protocol import SandboxRequest, SandboxResult, StopReason
from composer_core.sandbox.settings import Limits, SandboxConfig, sandbox_config

__all__ = ["Limits", "SandboxConfig", "SandboxRequest", "SandboxResult", "StopReason", "sandbox_config"]
