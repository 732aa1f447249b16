"""A deterministic OpenAI-compatible chat-completions server for the replay tests (stdlib only).

Run as `python openai_server.py`: it listens on a free loopback port and prints that port on its first line.

POST /v1/chat/completions answers with a `bash` tool call whose command depends on a hash of the last
message, so every model agrees on it, except that each model deviates on the messages where a hash of
(model, message) falls in its deviation share: different models (teachers) agree on some steps and disagree
on others. Usage tokens come back.

Fault injection, per model: POST /control {"model": m, "fail_429": n, "fail_500": n, "fail_400": n,
"malformed": n, "retry_after": "0.2", "sleep_s": s, "sleep_n": n, "trickle_n": n, "usage": {...},
"usage_n": n} makes the next n requests of m fail with that status (429s with that Retry-After), answer 200
without choices or usage, sleep s seconds first, send headers and then one body byte every 0.05 s without
ever finishing (trickle), or answer with that `usage` object instead of the true one.
GET /stats returns the counts of requests by model and status, the most requests of each model in flight at
once, and the (model, prompt hash) of every request; POST /reset clears it all.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEVIATION_SHARE = 3  # a model deviates on one message in DEVIATION_SHARE


def digest(*parts: object) -> int:
    return int(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12], 16)


class State:
    """Faults to inject and what was asked, shared by the handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.faults: dict[str, dict[str, Any]] = {}
        self.by_model: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()
        self.requests: list[list[str]] = []

    def take_fault(self, model: str) -> tuple[str, Any] | None:
        """The next fault of a model (consuming it), or None."""
        with self.lock:
            faults = self.faults.get(model, {})
            for kind in ("fail_429", "fail_500", "fail_400", "malformed"):
                if faults.get(kind, 0) > 0:
                    faults[kind] -= 1
                    return kind, faults.get("retry_after")
            if faults.get("sleep_n", 0) > 0:
                faults["sleep_n"] -= 1
                return "sleep", faults["sleep_s"]
            if faults.get("trickle_n", 0) > 0:
                faults["trickle_n"] -= 1
                return "trickle", None
        return None

    def take_usage(self, model: str) -> dict[str, Any] | None:
        """The usage to report instead of the true one for the next answer of a model (consuming it), or None."""
        with self.lock:
            faults = self.faults.get(model, {})
            if faults.get("usage_n", 0) > 0:
                faults["usage_n"] -= 1
                return faults["usage"]
        return None


STATE = State()


def answer(model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    last = messages[-1] if messages else {}
    seed = digest(last.get("role"), last.get("content"), last.get("tool_call_id"))
    command = f"echo step-{seed % 1000}"
    if digest(model, seed) % DEVIATION_SHARE == 0:
        command = f"echo {model}-thinks-otherwise-{seed % 1000}"
    call_id = f"call_{digest(model, seed, 'id') % 10**8}"
    return {"role": "assistant", "content": None,
            "tool_calls": [{"id": call_id, "type": "function",
                            "function": {"name": "bash", "arguments": json.dumps({"command": command})}}]}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:
        if self.path == "/stats":
            with STATE.lock:
                stats = {"total": sum(STATE.by_model.values()), "by_model": dict(STATE.by_model),
                         "by_status": dict(STATE.by_status), "max_in_flight": dict(STATE.max_in_flight),
                         "requests": list(STATE.requests)}
            self.reply(200, stats)
        else:
            self.reply(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
        if self.path == "/reset":
            with STATE.lock:
                STATE.reset()
            self.reply(200, {"ok": True})
        elif self.path == "/control":
            with STATE.lock:
                STATE.faults[body.pop("model")] = body
            self.reply(200, {"ok": True})
        elif self.path == "/v1/chat/completions":
            self.complete(body)
        else:
            self.reply(404, {"error": {"message": f"no route {self.path}"}})

    def complete(self, body: dict[str, Any]) -> None:
        model = body["model"]
        with STATE.lock:
            STATE.by_model[model] += 1
            STATE.requests.append([model, hashlib.sha256(json.dumps(body["messages"]).encode()).hexdigest()])
            STATE.in_flight[model] += 1
            STATE.max_in_flight[model] = max(STATE.max_in_flight[model], STATE.in_flight[model])
        try:
            self.answer_or_fail(model, body["messages"])
        finally:
            with STATE.lock:
                STATE.in_flight[model] -= 1

    def answer_or_fail(self, model: str, messages: list[dict[str, Any]]) -> None:
        fault = STATE.take_fault(model)
        if fault is not None and fault[0] == "malformed":
            self.reply(200, {"id": "chatcmpl-test", "choices": []})
            return
        if fault is not None and fault[0] == "trickle":
            self.trickle()
            return
        if fault is not None and fault[0] != "sleep":
            kind, retry_after = fault
            status = int(kind.removeprefix("fail_"))
            headers = {"Retry-After": str(retry_after)} if status == 429 and retry_after is not None else {}
            self.reply(status, {"error": {"message": f"injected {status} for {model}"}}, headers)
            return
        if fault is not None:
            time.sleep(fault[1])
        message = answer(model, messages)
        prompt_tokens = len(json.dumps(messages)) // 4
        completion_tokens = len(json.dumps(message)) // 4
        usage = STATE.take_usage(model) or {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                            "total_tokens": prompt_tokens + completion_tokens}
        self.reply(200, {"id": "chatcmpl-test", "object": "chat.completion", "model": model,
                         "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage})

    def trickle(self) -> None:
        """A 200 whose body never completes: one byte every 0.05 s (at most an hour) until the client leaves."""
        with STATE.lock:
            STATE.by_status["200"] += 1
        try:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(10**6))
            self.end_headers()
            for _ in range(72_000):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            pass

    def reply(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        with STATE.lock:
            STATE.by_status[str(status)] += 1
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 drops concurrent connects (1 s SYN retransmits)


def main() -> None:
    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
