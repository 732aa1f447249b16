"""Teachers for trace replay: channel 3 (trace-replay DPO) data.

Channel 3 is composer-core's own research channel, NOT part of Cursor's Composer recipe. A teacher is given
the prefix of an agent trace as OpenAI-style chat messages and answers with its next action; `replay` turns
the answers of N teachers into preference pairs.

Two teachers ship: `OpenAICompatibleTeacher` (any chat-completions endpoint, with retries, a shared
concurrency limit and a shared spend cap) and `LocalHFTeacher` (a local Hugging Face causal LM, cost 0).
Neither needs its backend at import time: httpx is imported when first used, transformers when a local
teacher is made. Every wait is bounded: a request by `timeout_s`, a wait between attempts by
`max_retry_wait_s` (whatever a Retry-After header asks), a whole call with its retries by `deadline_s`; each
wait between attempts is logged (logger `composer_core.replay.teachers`) with the teacher, the reason and
the seconds.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import math
import numbers
import os
import random
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from composer_core.errors import ConfigError, SpendCapReached, TeacherError
from composer_core.finite import non_finite_values
from composer_core.traces.contracts import Contract, ToolCall
from composer_core.traces.formats import parse_arguments
from composer_core.traces.openai_messages import text_of

if TYPE_CHECKING:
    import httpx

BODY_EXCERPT_CHARS = 500
CHARS_PER_TOKEN = 3  # deliberately low, so that the pre-call cost estimate errs on the expensive side
DEFAULT_OUTPUT_TOKENS = 1024  # output assumed for the estimate when params set no max_tokens
RETRYABLE_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
LOGGER = logging.getLogger(__name__)


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
    """A spend cap shared by the paid teachers of a replay: a hard guarantee.

    Before a request is sent its worst-case cost is reserved, and the request is refused with SpendCapReached
    when spent + in flight + that estimate would pass the cap; when the request ends the reservation is
    replaced by what it actually cost (nothing for a request that never reached the server). The cap must be
    a finite number >= 0 (None: no cap), estimates and costs finite numbers >= 0, so spend never decreases
    and a NaN can never make the comparison with the cap false. Thread-safe, so teachers on different event
    loops or threads can share one.
    """

    def __init__(self, cap_usd: float | None = None) -> None:
        if cap_usd is not None and not _usd(cap_usd):
            raise ConfigError(f"the spend cap must be a finite number of USD >= 0, got {cap_usd!r}; leave it out "
                              "for no cap")
        self.cap_usd = cap_usd
        self.spent_usd = 0.0
        self.paid_calls = 0
        self._in_flight_usd = 0.0
        self._lock = threading.Lock()

    def reserve(self, teacher: str, estimate_usd: float) -> None:
        """Hold `estimate_usd` for a request of `teacher`, or raise SpendCapReached if it could pass the cap."""
        if not _usd(estimate_usd):
            raise ConfigError(f"teacher {teacher!r}: its cost estimate is {estimate_usd!r} USD, not a finite number "
                              ">= 0: check its prices and max_tokens")
        with self._lock:
            total = self.spent_usd + self._in_flight_usd + estimate_usd
            if self.cap_usd is not None and total > self.cap_usd:
                raise SpendCapReached(
                    f"teacher {teacher!r}: refused a call estimated at up to {estimate_usd:.6f} USD: it could take "
                    f"spend to {total:.6f} USD, past the cap of {self.cap_usd:.6f} USD (spent {self.spent_usd:.6f} "
                    f"USD on {self.paid_calls} paid calls). Raise the cap and rerun: cached calls are not paid again")
            self._in_flight_usd += estimate_usd

    def settle(self, estimate_usd: float, actual_usd: float | None) -> None:
        """Replace a reservation by what the request cost (None: it was not paid). A cost that is negative or
        not finite is charged at the estimate instead, then refused: spend never decreases."""
        valid = actual_usd is None or _usd(actual_usd)
        with self._lock:
            self._in_flight_usd -= estimate_usd
            if actual_usd is not None:
                self.spent_usd += actual_usd if valid else estimate_usd
                self.paid_calls += 1
        if not valid:
            raise ConfigError(f"a request was settled at {actual_usd!r} USD, not a finite number >= 0; it was charged "
                              f"at its estimate of {estimate_usd:.6f} USD instead")


@dataclass
class _Attempt:
    """How one request ended: a parsed answer, or what went wrong; cost_usd is None when it was not paid."""

    reply: TeacherReply | None = None
    failure: str = ""
    status: int | None = None
    retryable: bool = True
    retry_after_s: float | None = None
    cost_usd: float | None = None


class OpenAICompatibleTeacher(Teacher):
    """A model behind any OpenAI-compatible `POST {base_url}/chat/completions` endpoint.

    At most `max_concurrency` requests of this teacher are in flight at once. 408, 429, 5xx, timeouts and
    connection errors are retried up to `max_retries` times with exponential backoff and jitter, waiting
    what a Retry-After header asks for when there is one, but never more than `max_retry_wait_s` at a time.
    One request gets at most `timeout_s` from sending to the last byte of the answer (a server that trickles
    bytes is cut off too), and one call with all its retries and waits at most `deadline_s`. Cost is priced
    from the reply's usage tokens (USD per million input / output tokens) and charged to the shared `budget`;
    a request that timed out after it was sent may still be billed, so it is charged at its estimate.
    """

    def __init__(self, name: str, *, base_url: str, model: str, api_key_env: str | None = None,
                 params: dict[str, Any] | None = None, input_usd_per_mtok: float = 0.0,
                 output_usd_per_mtok: float = 0.0, budget: Budget | None = None, max_concurrency: int = 8,
                 max_retries: int = 4, backoff_s: float = 1.0, max_retry_wait_s: float = 60.0,
                 timeout_s: float = 120.0, deadline_s: float = 300.0) -> None:
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
        self.max_retry_wait_s = max_retry_wait_s
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self._check_settings()
        self._headers = {"Authorization": f"Bearer {_api_key(name, api_key_env)}"} if api_key_env else {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None

    def _check_settings(self) -> None:
        """Refuse settings that would make a wait unbounded, a price NaN or a request body invalid JSON."""
        problems = [f"{field} must be an integer >= {least}, got {value!r}"
                    for field, value, least in (("max_concurrency", self.max_concurrency, 1),
                                                ("max_retries", self.max_retries, 0))
                    if not (_integer(value) and value >= least)]
        problems += [f"{field} must be a finite number >= 0, got {value!r}"
                     for field, value in (("input_usd_per_mtok", self.input_usd_per_mtok),
                                          ("output_usd_per_mtok", self.output_usd_per_mtok),
                                          ("backoff_s", self.backoff_s), ("max_retry_wait_s", self.max_retry_wait_s))
                     if not _usd(value)]
        problems += [f"{field} must be a finite number of seconds > 0, got {value!r}"
                     for field, value in (("timeout_s", self.timeout_s), ("deadline_s", self.deadline_s))
                     if not (_usd(value) and value > 0)]
        problems += [f"params.{field} is {value!r}: give a finite number"
                     for field, value in non_finite_values(self.params)]
        problems += [f"params.{field} must be an integer >= 1, got {self.params[field]!r}"
                     for field in ("max_tokens", "max_completion_tokens")
                     if self.params.get(field) is not None and not (_integer(self.params[field])
                                                                    and self.params[field] >= 1)]
        if problems:
            raise ConfigError(f"teacher {self.name!r}: " + "; ".join(problems))

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
        deadline = started + self.deadline_s
        charged, attempt = 0.0, 0
        while True:
            attempt += 1
            outcome = await self._attempt(body, estimate, deadline)
            charged += outcome.cost_usd or 0.0
            if outcome.reply is not None:
                return outcome.reply.model_copy(update={"cost_usd": charged, "attempts": attempt,
                                                        "latency_s": time.perf_counter() - started})
            if not outcome.retryable:
                raise TeacherError(f"{self._who()}: {outcome.failure} (not retried)", teacher=self.name,
                                   status=outcome.status, attempts=attempt, cost_usd=charged)
            if attempt > self.max_retries:
                raise TeacherError(f"{self._who()}: gave up after {attempt} attempts; last: {outcome.failure}",
                                   teacher=self.name, status=outcome.status, attempts=attempt, cost_usd=charged)
            await self._wait_before_retry(attempt, outcome, deadline, charged)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        self._loop = self._client = self._semaphore = None

    async def _wait_before_retry(self, attempt: int, outcome: _Attempt, deadline: float, charged: float) -> None:
        """Sleep before the next attempt, saying what for; give up now if the wait would pass the deadline."""
        wait, why = self._delay(attempt, outcome.retry_after_s)
        left = deadline - time.perf_counter()
        if wait >= left:
            raise TeacherError(f"{self._who()}: gave up after {attempt} attempts: the next could start only after "
                               f"its deadline_s of {self.deadline_s:g} s ({why}); last: {outcome.failure}",
                               teacher=self.name, status=outcome.status, attempts=attempt, cost_usd=charged)
        LOGGER.warning("teacher %r: %s; waiting %.3g s (%s) before attempt %d of %d", self.name,
                       _short(outcome.failure), wait, why, attempt + 1, self.max_retries + 1)
        await asyncio.sleep(wait)

    async def _attempt(self, body: dict[str, Any], estimate: float, deadline: float) -> _Attempt:
        """One request: reserved against the budget before it is sent, settled with what it cost after. A
        request interrupted after it was sent (cancelled) is charged at its estimate: it may have been billed."""
        if self.budget is not None:
            self.budget.reserve(self.name, estimate)
        outcome: _Attempt | None = None
        try:
            outcome = await self._request(body, estimate, deadline)
            return outcome
        finally:
            if self.budget is not None:
                self.budget.settle(estimate, estimate if outcome is None else outcome.cost_usd)

    async def _request(self, body: dict[str, Any], estimate: float, deadline: float) -> _Attempt:
        """Send under the concurrency limit, cut off at `timeout_s` or the call's deadline, whichever is first."""
        import httpx  # imported here: composer_core itself must import without the replay extras installed

        client, semaphore = self._session()
        async with semaphore:
            limit = min(self.timeout_s, deadline - time.perf_counter())
            if limit <= 0:
                return _Attempt(failure=f"its deadline_s of {self.deadline_s:g} s passed while queued behind "
                                f"{self.max_concurrency} requests in flight", retryable=False)
            try:  # wait_for, not asyncio.timeout: the package supports Python 3.10
                response = await asyncio.wait_for(client.post(self.url, json=body), limit)
            except (asyncio.TimeoutError, httpx.ReadTimeout, httpx.WriteTimeout) as error:
                return _Attempt(failure=f"no complete answer within {limit:.3g} s ({type(error).__name__})",
                                cost_usd=estimate)
            except httpx.TransportError as error:  # connect / pool timeouts included: nothing reached the server
                return _Attempt(failure=f"connection failed ({type(error).__name__}: {error})")
        if response.status_code == 200:
            return self._answer(response, estimate)
        failure = f"HTTP {response.status_code}: {_excerpt(response.text)}"
        return _Attempt(failure=failure, status=response.status_code,
                        retryable=response.status_code in RETRYABLE_STATUS,
                        retry_after_s=_retry_after(response.headers.get("retry-after")))

    def _session(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        """The client and semaphore of the running event loop (both are bound to the loop that uses them)."""
        import httpx

        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._client is None or self._semaphore is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s, headers=self._headers)
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._loop = loop
        return self._client, self._semaphore

    def _answer(self, response: httpx.Response, estimate: float) -> _Attempt:
        """Parse a 200 reply, priced from its usage (at the estimate when it has none). A malformed reply or
        invalid usage is an error that is not retried and is still charged at the estimate."""
        try:
            payload = response.json()
            message = payload["choices"][0]["message"]
            calls = [ToolCall(id=call.get("id"), name=call["function"]["name"],
                              arguments=parse_arguments(call["function"].get("arguments")))
                     for call in message.get("tool_calls") or []]
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
            return _Attempt(failure=f"malformed reply ({type(error).__name__}: {error}): {_excerpt(response.text)}",
                            status=200, retryable=False, cost_usd=estimate)
        usage = payload.get("usage")
        tokens, problem = self._tokens(usage)
        if problem:
            return _Attempt(failure=f"invalid usage {_excerpt(json.dumps(usage))}: {problem}; charged at the "
                            f"estimate of {estimate:.6f} USD", status=200, retryable=False, cost_usd=estimate)
        prompt, completion = tokens or (0, 0)
        reply = TeacherReply(content=text_of(message.get("content")), tool_calls=calls, prompt_tokens=prompt,
                             completion_tokens=completion)
        return _Attempt(reply=reply, cost_usd=estimate if tokens is None else self._price(prompt, completion))

    def _tokens(self, usage: Any) -> tuple[tuple[int, int] | None, str]:
        """(prompt, completion) tokens of a reply's usage (None when it has none) and what is wrong with them."""
        if not usage:
            return None, ""
        if not isinstance(usage, dict):
            return None, "usage is not an object"
        counts = [usage.get(field) for field in ("prompt_tokens", "completion_tokens")]
        if not all(_integer(count) and count >= 0 for count in counts):
            return None, "prompt_tokens and completion_tokens must be integers >= 0"
        if self._priced() and counts[0] == 0:
            return None, "a priced teacher must report prompt_tokens > 0 (every request sends a prompt)"
        return (int(counts[0]), int(counts[1])), ""

    def _delay(self, attempt: int, retry_after_s: float | None) -> tuple[float, str]:
        """Seconds before the next attempt and why: Retry-After when the server sent one, else jittered
        exponential backoff; never more than max_retry_wait_s."""
        if retry_after_s is not None:
            if retry_after_s > self.max_retry_wait_s:
                return self.max_retry_wait_s, (f"the server asked for {retry_after_s:g} s, capped by "
                                               f"max_retry_wait_s")
            return retry_after_s, "as Retry-After asked"
        backoff = min(self.max_retry_wait_s, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        return backoff, "backoff"

    def _priced(self) -> bool:
        return self.input_usd_per_mtok > 0 or self.output_usd_per_mtok > 0

    def _price(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_usd_per_mtok + completion_tokens * self.output_usd_per_mtok) / 1e6

    def _who(self) -> str:
        return f"teacher {self.name!r} ({self.model} at {self.url})"


_LOCAL_LOCK = threading.Lock()  # transformers' lazy imports, from_pretrained and torch's seeded RNG are process-wide
_LOADED: weakref.WeakValueDictionary[tuple[str, ...], Any] = weakref.WeakValueDictionary()


class LocalHFTeacher(Teacher):
    """A local Hugging Face causal LM: a folder with weights and a tokenizer that has a chat template (or the
    tokenizer in its own folder, `tokenizer_path`).

    Greedy when temperature is 0, else sampled with a fixed seed, so the same prefix gives the same answer.
    The answer is plain text (tool calls are not parsed out of it); cost is 0. transformers is imported when
    the teacher is made (its lazy imports are not thread-safe); the model is loaded once per process and
    folder, shared by the teachers that name it, and generation runs in a worker thread, one local
    generation at a time in the process (loading is not thread-safe and the seeded RNG is global).
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
        self._check_settings()
        self._auto_model, self._auto_tokenizer = _import_transformers(name)
        self._model: Any = None
        self._tokenizer: Any = None

    def _check_settings(self) -> None:
        problems = [f"{field} {folder} is not a folder; give the folder of a saved model"
                    for field, folder in (("path", self.path), ("tokenizer_path", self.tokenizer_path))
                    if not Path(folder).is_dir()]
        if not (_integer(self.max_new_tokens) and self.max_new_tokens >= 1):
            problems.append(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not _usd(self.temperature):
            problems.append(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, numbers.Real) and 0 < self.top_p <= 1):
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not _integer(self.seed):
            problems.append(f"seed must be an integer, got {self.seed!r}")
        if problems:
            raise ConfigError(f"teacher {self.name!r}: " + "; ".join(problems))

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.path,
                "params": {"tokenizer": self.tokenizer_path, "max_new_tokens": self.max_new_tokens,
                           "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}}

    async def complete(self, messages: list[dict[str, Any]]) -> TeacherReply:
        return await asyncio.to_thread(self._generate, messages)

    def _generate(self, messages: list[dict[str, Any]]) -> TeacherReply:
        import torch

        started = time.perf_counter()
        with _LOCAL_LOCK:
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
        """The model and tokenizer, loaded on first use (the caller holds _LOCAL_LOCK)."""
        if self._model is None:
            self._tokenizer = self._shared(("tokenizer", self.tokenizer_path),
                                           lambda: self._auto_tokenizer.from_pretrained(self.tokenizer_path))
            self._model = self._shared(("model", self.path, self.device),
                                       lambda: self._auto_model.from_pretrained(self.path).to(self.device).eval())
        return self._model, self._tokenizer

    def _shared(self, key: tuple[str, ...], load: Callable[[], Any]) -> Any:
        """What `load` gives, made once per process while some teacher still holds it."""
        loaded = _LOADED.get(key)
        if loaded is None:
            try:
                loaded = load()
            except (OSError, ValueError, RuntimeError) as error:
                raise TeacherError(f"teacher {self.name!r}: cannot load the {key[0]} from {key[1]}: "
                                   f"{type(error).__name__}: {error}", teacher=self.name) from error
            _LOADED[key] = loaded
        return loaded


def _import_transformers(teacher: str) -> tuple[Any, Any]:
    """transformers' auto classes, imported under the lock before any worker thread can race on them."""
    with _LOCAL_LOCK:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as error:
            raise ConfigError(f"teacher {teacher!r} (local_hf) needs transformers ({error}): install "
                              "composer-core[replay]") from None
    return AutoModelForCausalLM, AutoTokenizer


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
    """Seconds a Retry-After header asks for (delta-seconds, fractional accepted, or an HTTP date); None
    when there is none or it is not a finite time."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _usd(value: Any) -> bool:
    """Whether `value` is a real number (not a bool), finite and >= 0: a price, a cost, a cap or a wait."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _integer(value: Any) -> bool:
    """Whether `value` is an integer (an integral float such as 12.0 counts; a bool does not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return isinstance(value, numbers.Integral) or (math.isfinite(value) and float(value).is_integer())


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= BODY_EXCERPT_CHARS else text[:BODY_EXCERPT_CHARS] + "..."
