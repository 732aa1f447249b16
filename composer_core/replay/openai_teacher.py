"""`OpenAICompatibleTeacher`: a replay teacher behind any OpenAI-compatible chat-completions endpoint.

httpx is imported when first used. Every wait is bounded: a request by `timeout_s`, a wait between attempts by
`max_retry_wait_s` (whatever a Retry-After header asks), a whole call with its retries by `deadline_s`; each
wait between attempts is logged (logger `composer_core.replay.openai_teacher`) with the teacher, the reason
and the seconds. Spend goes through the shared `Budget`, a hard cap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from composer_core.errors import ConfigError, TeacherError
from composer_core.finite import non_finite_values
from composer_core.traces.contracts import ToolCall
from composer_core.traces.formats import parse_arguments
from composer_core.traces.openai_messages import text_of

if TYPE_CHECKING:
    import httpx

from composer_core.replay.teachers import Budget, Teacher, TeacherReply, valid_amount, valid_integer

BODY_EXCERPT_CHARS = 500
CHARS_PER_TOKEN = 3  # deliberately low, so that the pre-call cost estimate errs on the expensive side
DEFAULT_OUTPUT_TOKENS = 1024  # output assumed for the estimate when params set no max_tokens
RETRYABLE_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
LOGGER = logging.getLogger(__name__)


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
                    if not (valid_integer(value) and value >= least)]
        problems += [f"{field} must be a finite number >= 0, got {value!r}"
                     for field, value in (("input_usd_per_mtok", self.input_usd_per_mtok),
                                          ("output_usd_per_mtok", self.output_usd_per_mtok),
                                          ("backoff_s", self.backoff_s), ("max_retry_wait_s", self.max_retry_wait_s))
                     if not valid_amount(value)]
        problems += [f"{field} must be a finite number of seconds > 0, got {value!r}"
                     for field, value in (("timeout_s", self.timeout_s), ("deadline_s", self.deadline_s))
                     if not (valid_amount(value) and value > 0)]
        problems += [f"params.{field} is {value!r}: give a finite number"
                     for field, value in non_finite_values(self.params)]
        problems += [f"params.{field} must be an integer >= 1, got {self.params[field]!r}"
                     for field in ("max_tokens", "max_completion_tokens")
                     if self.params.get(field) is not None and not (valid_integer(self.params[field])
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
        if not all(valid_integer(count) and count >= 0 for count in counts):
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


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= BODY_EXCERPT_CHARS else text[:BODY_EXCERPT_CHARS] + "..."
