"""The SandboxFusion `/run_code` API: its JSON both ways, and the `sandbox_fusion` backend (a client of it).

Request (what VeRL's `verl.utils.reward_score.sandbox_fusion` sends): `code`, `language`, `stdin`, `run_timeout`,
`compile_timeout`, `memory_limit_MB`, `files` (name -> base64 content), `fetch_files`. Response: `status`
("Success" when the run finished with exit code 0, "Failed" otherwise, "SandboxError" when the sandbox itself
failed), `message`, `compile_result` (None: no compiled languages here), `run_result` with `status` ("Finished",
"TimeLimitExceeded", "Error"), `execution_time`, `return_code`, `stdout`, `stderr`, and `files`. composer-core's
server adds `composer_stopped` and `composer_cpu_s` to `run_result`, which its client reads back and others ignore.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import httpx

from composer_core.errors import ComposerError, ConfigError
from composer_core.sandbox.protocol import MAIN_FILES, SandboxRequest, SandboxResult
from composer_core.sandbox.settings import Limits, SandboxConfig

RUN_STATUS = {None: "Finished", "timeout": "TimeLimitExceeded", "memory": "Finished", "processes": "Finished",
              "output_limit": "Error", "sandbox_error": "Error"}


class SandboxFusionError(ComposerError):
    """A SandboxFusion server could not be reached, or answered something other than a /run_code result."""


def request_json(request: SandboxRequest, limits: Limits) -> dict[str, Any]:
    """The /run_code body of a code request (SandboxFusion runs code in a language, not commands)."""
    if request.code is None:
        raise ConfigError("the sandbox_fusion backend runs code in a language, not a command; give code=..., or use "
                          "the local or docker backend for commands")
    return {"code": request.code, "language": request.language, "stdin": request.stdin_bytes().decode(),
            "run_timeout": limits.timeout_s, "compile_timeout": limits.timeout_s,
            "memory_limit_MB": limits.memory_mb, "fetch_files": [],
            "files": {name: base64.b64encode(content).decode() for name, content in request.all_files().items()
                      if name != MAIN_FILES[request.language]}}


def request_from_json(body: Any, ceiling: Limits) -> SandboxRequest:
    """A SandboxRequest from a /run_code body; the server's limits are the ceiling of what a request may ask.
    A malformed body is a ConfigError naming the field."""
    if not isinstance(body, Mapping):
        raise ConfigError("the body must be a JSON object with at least `code`")
    code, language, stdin = body.get("code"), body.get("language", "python"), body.get("stdin")
    if not isinstance(code, str):
        raise ConfigError("`code` must be a string (the program to run)")
    if language not in MAIN_FILES:
        raise ConfigError(f"language {language!r} is not supported by this server; supported: {', '.join(MAIN_FILES)}")
    if stdin is not None and not isinstance(stdin, str):
        raise ConfigError("`stdin` must be a string or null")
    if body.get("fetch_files"):
        raise ConfigError("`fetch_files` is not supported by this server (the work dir is gone after the run); "
                          "print what you need instead")
    files = body.get("files") or {}
    if not isinstance(files, Mapping):
        raise ConfigError("`files` must be an object of file name -> base64 content")
    try:
        decoded = {name: base64.b64decode(content or "", validate=True) for name, content in files.items()}
    except (binascii.Error, TypeError, ValueError):
        raise ConfigError("`files` values must be base64 text") from None
    limits = ceiling.model_copy(update={"timeout_s": _bounded(body, "run_timeout", ceiling.timeout_s),
                                        "memory_mb": int(_bounded(body, "memory_limit_MB", ceiling.memory_mb))})
    return SandboxRequest(code=code, language=language, stdin=stdin or "", files=decoded, limits=limits)


def _bounded(body: Mapping[str, Any], field: str, ceiling: float) -> float:
    """A numeric field capped at the server's ceiling; absent, null or <= 0 (SandboxFusion's -1): the ceiling."""
    value = body.get(field)
    if value is None:
        return ceiling
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"`{field}` must be a number")
    return ceiling if value <= 0 else min(float(value), ceiling)


def response_json(result: SandboxResult) -> dict[str, Any]:
    """The /run_code answer for a run."""
    run = {"status": RUN_STATUS[result.stopped], "execution_time": result.wall_s, "return_code": result.exit_code,
           "stdout": result.stdout, "stderr": result.stderr, "composer_stopped": result.stopped,
           "composer_cpu_s": result.cpu_s}
    return {"status": "Success" if result.ok else "Failed", "message": result.message or "", "compile_result": None,
            "run_result": run, "executor_pod_name": None, "files": {}}


def sandbox_error_json(message: str) -> dict[str, Any]:
    return {"status": "SandboxError", "message": message, "compile_result": None, "run_result": None,
            "executor_pod_name": None, "files": {}}


def result_from_json(answer: Any, url: str) -> SandboxResult:
    """A SandboxResult from a /run_code answer (any SandboxFusion server's, or ours)."""
    if not isinstance(answer, Mapping) or "status" not in answer:
        raise SandboxFusionError(f"{url} did not answer a /run_code result: {str(answer)[:200]}")
    run = answer.get("run_result")
    if answer["status"] == "SandboxError" or not isinstance(run, Mapping):
        return SandboxResult(None, "", "", 0.0, stopped="sandbox_error",
                             message=f"SandboxFusion: {answer.get('message') or answer['status']}")
    stopped = run.get("composer_stopped", "timeout" if run.get("status") == "TimeLimitExceeded" else None)
    if stopped is None and run.get("status") == "Error":
        stopped = "sandbox_error"
    return SandboxResult(run.get("return_code"), run.get("stdout") or "", run.get("stderr") or "",
                         float(run.get("execution_time") or 0.0), run.get("composer_cpu_s"), stopped,
                         message=answer.get("message") or None)


class SandboxFusionBackend:
    """Sends each request to a SandboxFusion server's /run_code; every call is bounded by the run's timeout plus
    `http_margin_s`."""

    name = "sandbox_fusion"

    def __init__(self, config: SandboxConfig) -> None:
        base = (config.sandbox_fusion_url or "").rstrip("/")
        self.url = base if base.endswith("/run_code") else f"{base}/run_code"
        self.margin_s = config.http_margin_s
        self.client = httpx.Client(trust_env=False)

    def run(self, request: SandboxRequest, limits: Limits) -> SandboxResult:
        body = request_json(request, limits)
        timeout = httpx.Timeout(limits.timeout_s + self.margin_s, connect=min(self.margin_s, 10.0))
        try:
            response = self.client.post(self.url, json=body, timeout=timeout)
        except httpx.ConnectError as error:
            raise SandboxFusionError(f"cannot reach the SandboxFusion server at {self.url} ({error}); start one "
                                     "(`composer-core sandbox serve --port N`) or fix sandbox.sandbox_fusion_url"
                                     ) from None
        except httpx.TimeoutException:
            raise SandboxFusionError(f"the SandboxFusion server at {self.url} did not answer within "
                                     f"{limits.timeout_s + self.margin_s} s") from None
        except httpx.HTTPError as error:
            raise SandboxFusionError(f"request to the SandboxFusion server at {self.url} failed: {error}") from None
        if response.status_code != 200:
            raise SandboxFusionError(f"the SandboxFusion server at {self.url} answered HTTP {response.status_code}: "
                                     f"{response.text[:300]}")
        try:
            answer = response.json()
        except ValueError:
            raise SandboxFusionError(f"the SandboxFusion server at {self.url} answered non-JSON: "
                                     f"{response.text[:200]}") from None
        return result_from_json(answer, self.url)
