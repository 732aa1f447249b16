"""Teachers for trace replay: channel 3 (trace-replay DPO) data.

Channel 3 is composer-core's own research channel, NOT part of Cursor's Composer recipe. A teacher is given
the prefix of an agent trace as OpenAI-style chat messages and answers with its next action; `replay` turns
the answers of N teachers into preference pairs.

Two teachers ship: `OpenAICompatibleTeacher` (any chat-completions endpoint, with retries, a shared
concurrency limit and a shared spend cap) and `LocalHFTeacher` (a local Hugging Face causal LM, cost 0).
Neither needs its backend at import time: httpx and transformers are imported when first used.
"""

from __future__ import annotations

import abc
import asyncio
import json
import math
import os
import random
import threading
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from pydantic import Field

from composer_core.errors import ConfigError, SpendCapReached, TeacherError
from composer_core.traces.contracts import Contract, ToolCall
from composer_core.traces.formats import parse_arguments
from composer_core.traces.openai_messages import text_of

if TYPE_CHECKING:
    import httpx

BODY_EXCERPT_CHARS = 500
CHARS_PER_TOKEN = 3  # deliberately low, so that the pre-call cost estimate errs on the expensive side
DEFAULT_OUTPUT_TOKENS = 1024  # output assumed for the estimate when params set no max_tokens
RETRYABLE_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))


class TeacherReply(Contract):
    """One teacher's answer to one prefix and what it took: tokens, cost, latency (end to end, retries and
    backoff included) and attempts (requests sent: 1 + retries)."""

    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    attempts: int = 1

    def to_chat(self) -> dict[str, Any]:
        """The answer as an OpenAI-style assistant message (tool-call arguments as JSON text, as on the wire)."""
        chat: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            chat["tool_calls"] = tool_calls_to_chat(self.tool_calls)
        return chat


def tool_calls_to_chat(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Tool calls in the chat-completions wire shape: `arguments` is a JSON string, as the API requires."""
    return [{"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments if isinstance(call.arguments, str)
                          else json.dumps(call.arguments, ensure_ascii=False)}}
            for call in calls]


class Teacher(abc.ABC):
    """Answers a trace prefix with the next assistant message. `name` must be unique within a replay."""

    name: str

    @abc.abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """What determines this teacher's answers (name, model, params): the replay cache keys on it."""

    @abc.abstractmethod
    async def complete(self, messages: list[dict[str, Any]]) -> TeacherReply:
        """The next assistant message after `messages`; raises TeacherError when no answer can be had."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook: most teachers hold no connections
        """Release connections; the teacher stays usable (resources are made again on the next call)."""


class Budget:
    """A spend cap shared by the paid teachers of a replay.

    Before a request is sent its worst-case cost is reserved, and the request is refused with SpendCapReached
    when spent + in flight + that estimate would pass the cap; when the request ends the reservation is
    replaced by what it actually cost (nothing for a request that got no answer). `spent_usd` counts every
    paid request. Thread-safe, so teachers on different event loops or threads can share one.
    """

    def __init__(self, cap_usd: float | None = None) -> None:
        if cap_usd is not None and cap_usd < 0:
            raise ConfigError(f"the spend cap must be >= 0 USD, got {cap_usd}")
        self.cap_usd = cap_usd
        self.spent_usd = 0.0
        self.paid_calls = 0
        self._in_flight_usd = 0.0
        self._lock = threading.Lock()

    def reserve(self, teacher: str, estimate_usd: float) -> None:
        with self._lock:
            total = self.spent_usd + self._in_flight_usd + estimate_usd
            if self.cap_usd is not None and total > self.cap_usd:
                raise SpendCapReached(
                    f"teacher {teacher!r}: refused a call estimated at up to {estimate_usd:.6f} USD: it could take "
                    f"spend to {total:.6f} USD, past the cap of {self.cap_usd:.6f} USD (spent {self.spent_usd:.6f} "
                    f"USD on {self.paid_calls} paid calls). Raise the cap and rerun: cached calls are not paid again")
            self._in_flight_usd += estimate_usd

    def settle(self, estimate_usd: float, actual_usd: float | None) -> None:
        with self._lock:
            self._in_flight_usd -= estimate_usd
            if actual_usd is not None:
                self.spent_usd += actual_usd
                self.paid_calls += 1


class OpenAICompatibleTeacher(Teacher):
    """A model behind any OpenAI-compatible `POST {base_url}/chat/completions` endpoint.

    At most `max_concurrency` requests of this teacher are in flight at once. 408, 429, 5xx, timeouts and
    connection errors are retried up to `max_retries` times with exponential backoff and jitter, waiting
    what a Retry-After header asks for when there is one; other statuses fail at once. Cost is priced from
    the reply's usage tokens (USD per million input / output tokens) and charged to the shared `budget`.
    """

    def __init__(self, name: str, *, base_url: str, model: str, api_key_env: str | None = None,
                 params: dict[str, Any] | None = None, input_usd_per_mtok: float = 0.0,
                 output_usd_per_mtok: float = 0.0, budget: Budget | None = None, max_concurrency: int = 8,
                 max_retries: int = 4, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 timeout_s: float = 120.0) -> None:
        if max_concurrency < 1 or max_retries < 0:
            raise ConfigError(f"teacher {name!r}: max_concurrency must be >= 1 and max_retries >= 0")
        self.name = name
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.params = dict(params or {})
        self.input_usd_per_mtok = input_usd_per_mtok
        self.output_usd_per_mtok = output_usd_per_mtok
        self.budget = budget
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {_api_key(name, api_key_env)}"} if api_key_env else {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "params": self.params}

    def estimate_usd(self, messages: list[dict[str, Any]]) -> float:
        """Worst-case cost of one request: prompt tokens guessed from its length, output at max_tokens."""
        prompt = math.ceil(len(json.dumps(messages, ensure_ascii=False)) / CHARS_PER_TOKEN)
        output = self.params.get("max_completion_tokens") or self.params.get("max_tokens") or DEFAULT_OUTPUT_TOKENS
        return self._price(prompt, int(output))

    async def complete(self, messages: list[dict[str, Any]]) -> TeacherReply:
        body = {**self.params, "model": self.model, "messages": messages}
        estimate = self.estimate_usd(messages)
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            if self.budget is not None:
                self.budget.reserve(self.name, estimate)
            paid: float | None = None
            try:
                response, failure = await self._send(body)
                if response is not None and response.status_code == 200:
                    paid = estimate  # charged in full unless the reply's usage says otherwise
                    reply = self._reply(response, attempt, time.perf_counter() - started, estimate)
                    paid = reply.cost_usd
                    return reply
            finally:
                if self.budget is not None:
                    self.budget.settle(estimate, paid)
            status = None if response is None else response.status_code
            if status is not None and status not in RETRYABLE_STATUS:
                raise TeacherError(f"{self._who()}: {failure} (not retried)", teacher=self.name, status=status,
                                   attempts=attempt)
            if attempt > self.max_retries:
                raise TeacherError(f"{self._who()}: gave up after {attempt} attempts; last: {failure}",
                                   teacher=self.name, status=status, attempts=attempt)
            await asyncio.sleep(self._delay(attempt, response))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        self._loop = self._client = self._semaphore = None

    async def _send(self, body: dict[str, Any]) -> tuple[httpx.Response | None, str]:
        """One request under the concurrency limit: the response (None when none came) and a description."""
        import httpx  # imported here: composer_core itself must import without the replay extras installed

        client, semaphore = self._session()
        async with semaphore:
            try:
                response = await client.post(self.url, json=body)
            except httpx.TimeoutException as error:
                return None, f"timed out after {self.timeout_s:g} s ({type(error).__name__})"
            except httpx.TransportError as error:
                return None, f"connection failed ({type(error).__name__}: {error})"
        return response, f"HTTP {response.status_code}: {_excerpt(response.text)}"

    def _session(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        """The client and semaphore of the running event loop (both are bound to the loop that uses them)."""
        import httpx

        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._client is None or self._semaphore is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s, headers=self._headers)
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._loop = loop
        return self._client, self._semaphore

    def _reply(self, response: httpx.Response, attempts: int, latency_s: float, estimate: float) -> TeacherReply:
        """Parse a 200 reply; without usage tokens its cost is taken to be the pre-call estimate."""
        try:
            payload = response.json()
            message = payload["choices"][0]["message"]
            calls = [ToolCall(id=call.get("id"), name=call["function"]["name"],
                              arguments=parse_arguments(call["function"].get("arguments")))
                     for call in message.get("tool_calls") or []]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise TeacherError(f"{self._who()}: malformed reply ({type(error).__name__}: {error}): "
                               f"{_excerpt(response.text)}", teacher=self.name, status=200, attempts=attempts,
                               cost_usd=estimate) from error
        usage = payload.get("usage") or {}
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        cost = self._price(prompt, completion) if usage else estimate
        return TeacherReply(content=text_of(message.get("content")), tool_calls=calls, prompt_tokens=prompt,
                            completion_tokens=completion, cost_usd=cost, latency_s=latency_s, attempts=attempts)

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds before the next attempt: Retry-After when the server sent one, else jittered backoff."""
        asked = _retry_after(response.headers.get("retry-after")) if response is not None else None
        if asked is not None:
            return asked
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    def _price(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_usd_per_mtok + completion_tokens * self.output_usd_per_mtok) / 1e6

    def _who(self) -> str:
        return f"teacher {self.name!r} ({self.model} at {self.url})"


class LocalHFTeacher(Teacher):
    """A local Hugging Face causal LM: a folder with weights and a tokenizer that has a chat template (or the
    tokenizer in its own folder, `tokenizer_path`).

    Greedy when temperature is 0, else sampled with a fixed seed, so the same prefix gives the same answer.
    The answer is plain text (tool calls are not parsed out of it); cost is 0. Generation runs in a worker
    thread, one call at a time.
    """

    def __init__(self, name: str, path: str | os.PathLike[str], *, tokenizer_path: str | os.PathLike[str] | None = None,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 device: str = "cpu") -> None:
        self.name = name
        self.path = os.fspath(path)
        self.tokenizer_path = os.fspath(tokenizer_path or path)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.device = device
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.path,
                "params": {"tokenizer": self.tokenizer_path, "max_new_tokens": self.max_new_tokens,
                           "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}}

    async def complete(self, messages: list[dict[str, Any]]) -> TeacherReply:
        return await asyncio.to_thread(self._generate, messages)

    def _generate(self, messages: list[dict[str, Any]]) -> TeacherReply:
        import torch

        started = time.perf_counter()
        with self._lock:
            model, tokenizer = self._load()
            inputs = tokenizer.apply_chat_template([_template_message(m) for m in messages], add_generation_prompt=True,
                                                   tokenize=True, return_dict=True, return_tensors="pt")
            inputs = {key: value.to(self.device) for key, value in inputs.items()}
            sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p} \
                if self.temperature > 0 else {"do_sample": False}
            torch.manual_seed(self.seed)
            with torch.no_grad():
                output = model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                        pad_token_id=tokenizer.pad_token_id, **sampling)
        prompt_tokens = inputs["input_ids"].shape[1]
        new_tokens = output[0, prompt_tokens:]
        return TeacherReply(content=tokenizer.decode(new_tokens, skip_special_tokens=True).strip(),
                            prompt_tokens=prompt_tokens, completion_tokens=int(new_tokens.numel()),
                            latency_s=time.perf_counter() - started)

    def _load(self) -> tuple[Any, Any]:
        # transformers is imported here, not at module level: composer_core is a backend-agnostic library
        # that must import (and run its losses) without transformers or any other backend installed.
        if self._model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
            self._model = AutoModelForCausalLM.from_pretrained(self.path).to(self.device).eval()
        return self._model, self._tokenizer


def _template_message(message: dict[str, Any]) -> dict[str, Any]:
    """Chat templates expect tool-call arguments as objects, not the JSON text the wire format carries."""
    if not message.get("tool_calls"):
        return message
    calls = [{**call, "function": {**call["function"], "arguments": parse_arguments(call["function"]["arguments"])}}
             for call in message["tool_calls"]]
    return {**message, "tool_calls": calls}


def _api_key(teacher: str, variable: str) -> str:
    key = os.environ.get(variable)
    if not key:
        raise ConfigError(f"teacher {teacher!r}: environment variable {variable} (its API key) is not set")
    return key


def _retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds, fractional accepted, or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= BODY_EXCERPT_CHARS else text[:BODY_EXCERPT_CHARS] + "..."
