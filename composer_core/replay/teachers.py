"""Teachers for trace replay: channel 3 (trace-replay DPO) data; the contract and the spend cap.

Channel 3 is composer-core's own research channel, NOT part of Cursor's Composer recipe. A teacher is given
the prefix of an agent trace as OpenAI-style chat messages and answers with its next action; `replay` turns
the answers of N teachers into preference pairs. Two teachers ship: `openai_teacher.OpenAICompatibleTeacher`
(any chat-completions endpoint, with retries, a shared concurrency limit and this module's shared `Budget`)
and `local_teacher.LocalHFTeacher` (a local Hugging Face causal LM, cost 0).
"""

from __future__ import annotations

import abc
import json
import math
import numbers
import threading
from typing import TYPE_CHECKING, Any

from pydantic import Field

from composer_core.errors import ConfigError, SpendCapReached
from composer_core.traces.contracts import Contract, ToolCall

if TYPE_CHECKING:
    pass



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
        if cap_usd is not None and not valid_amount(cap_usd):
            raise ConfigError(f"the spend cap must be a finite number of USD >= 0, got {cap_usd!r}; leave it out "
                              "for no cap")
        self.cap_usd = cap_usd
        self.spent_usd = 0.0
        self.paid_calls = 0
        self._in_flight_usd = 0.0
        self._lock = threading.Lock()

    def reserve(self, teacher: str, estimate_usd: float) -> None:
        """Hold `estimate_usd` for a request of `teacher`, or raise SpendCapReached if it could pass the cap."""
        if not valid_amount(estimate_usd):
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
        valid = actual_usd is None or valid_amount(actual_usd)
        with self._lock:
            self._in_flight_usd -= estimate_usd
            if actual_usd is not None:
                self.spent_usd += actual_usd if valid else estimate_usd
                self.paid_calls += 1
        if not valid:
            raise ConfigError(f"a request was settled at {actual_usd!r} USD, not a finite number >= 0; it was charged "
                              f"at its estimate of {estimate_usd:.6f} USD instead")


def valid_amount(value: Any) -> bool:
    """Whether `value` is a real number (not a bool), finite and >= 0: a price, a cost, a cap or a wait."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def valid_integer(value: Any) -> bool:
    """Whether `value` is an integer (an integral float such as 12.0 counts; a bool does not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return isinstance(value, numbers.Integral) or (math.isfinite(value) and float(value).is_integer())
