"""A SandboxFusion-compatible server (`POST /run_code`) on top of a local (or docker) sandbox, standard library only.

`composer-core sandbox serve --port N` starts it on loopback; VeRL's `reward.sandbox_fusion.url` (or its
`verl.utils.reward_score.sandbox_fusion.compute_score`) then scores against it. Bounded everywhere: request bodies
(max_request_bytes), reading a body (REQUEST_READ_TIMEOUT_S), runs at once (the sandbox's max_concurrency),
requests waiting for a run (max_pending, then 503 at once), and each run (the server's limits are the ceiling of
what a request may ask). Bad requests get a JSON error naming the problem.
"""

from __future__ import annotations

import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from composer_core.errors import ComposerError, ConfigError
from composer_core.sandbox.fusion import request_from_json, response_json, sandbox_error_json
from composer_core.sandbox.runner import Sandbox
from composer_core.sandbox.settings import SandboxConfig

MAX_REQUEST_BYTES = 16 << 20
REQUEST_READ_TIMEOUT_S = 30.0
RUN_PATHS = ("/run_code", "/run_code/")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class SandboxServer(ThreadingHTTPServer):
    """Serves /run_code with one Sandbox; at most `max_pending` requests are admitted at once."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], sandbox: Sandbox, max_pending: int | None = None,
                 max_request_bytes: int = MAX_REQUEST_BYTES) -> None:
        if sandbox.config.backend == "sandbox_fusion":
            raise ConfigError("the server runs code itself: choose the local or docker backend, not sandbox_fusion")
        self.sandbox = sandbox
        self.max_request_bytes = max_request_bytes
        self.admitted = threading.BoundedSemaphore(max_pending or 4 * sandbox.config.max_concurrency + 16)
        super().__init__(address, RunCodeHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class RunCodeHandler(BaseHTTPRequestHandler):
    """POST /run_code runs code; GET / and /health say the server is up."""

    server: SandboxServer
    timeout = REQUEST_READ_TIMEOUT_S  # socket timeout: a client that stops sending is dropped
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path in ("/", "/health", "/v1/ping"):
            self.send_json(HTTPStatus.OK, {"status": "ok", "backend": self.server.sandbox.backend.name})
        else:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no {self.path}; POST /run_code runs code"})

    def do_POST(self) -> None:
        if self.path not in RUN_PATHS:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no {self.path}; POST /run_code runs code"})
            return
        if not self.server.admitted.acquire(blocking=False):
            self.send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many requests waiting; retry later"})
            return
        try:
            self.run_code()
        finally:
            self.server.admitted.release()

    def run_code(self) -> None:
        body = self.read_body()
        if body is None:
            return
        try:
            request = request_from_json(body, self.server.sandbox.config.limits)
        except ConfigError as error:
            self.send_json(HTTPStatus.BAD_REQUEST, {**sandbox_error_json(str(error)), "error": str(error)})
            return
        try:
            result = self.server.sandbox.run(request)
        except ComposerError as error:
            self.send_json(HTTPStatus.OK, sandbox_error_json(str(error)))
            return
        self.send_json(HTTPStatus.OK, response_json(result))

    def read_body(self) -> Any:
        """The JSON body, or None after answering the error (missing or oversized length, bad JSON)."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.send_json(HTTPStatus.LENGTH_REQUIRED, {"error": "send a Content-Length header"})
            return None
        if int(length) > self.server.max_request_bytes:
            self.close_connection = True
            self.send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           {"error": f"body of {length} bytes is over the limit of {self.server.max_request_bytes}"})
            return None
        try:
            return json.loads(self.rfile.read(int(length)))
        except (ValueError, UnicodeDecodeError) as error:
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": f"the body is not JSON: {error}"})
            return None

    def send_json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, message_format: str, *args: Any) -> None:
        sys.stderr.write(f"composer-core sandbox serve: {self.address_string()} {message_format % args}\n")


def make_server(config: SandboxConfig, host: str = "127.0.0.1", port: int = 0) -> SandboxServer:
    """A server bound to host:port (0: a free port), not yet serving."""
    return SandboxServer((host, port), Sandbox(config))


def serve(config: SandboxConfig, host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve until interrupted; the first stdout line is the URL (the port, when 0 was asked, is the real one)."""
    server = make_server(config, host, port)
    if host not in LOOPBACK:
        print(f"composer-core sandbox serve: listening on {host}, not loopback: anyone who can reach this port can "
              "run code in the sandbox", file=sys.stderr)
    print(server.url, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
