"""Trace replay with N teachers -> preference pairs: the data of channel 3 (trace-replay DPO).

Channel 3 is composer-core's own research channel, NOT part of Cursor's Composer recipe. Each selected step
of a trace (an assistant message) is replayed: the messages before it go to every teacher at once, each
answer is reduced to an action key (tool names and canonical arguments, else whitespace-normalised text) and
the keys are counted. The strict-majority action is chosen and every other action is rejected, one pair
each. With `use_trace_outcome`, a step whose own action the trace later verified (its tool results came back
without failure) has that action chosen instead, and a failed trace action is never chosen and is rejected
against the majority.
Unanimous steps, steps without a strict majority and steps with too few answers give no pair and are
counted; a failing teacher is reported and the step goes on with the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from composer_core.errors import ConfigError, SpendCapReached, TeacherError
from composer_core.replay.cache import ReplayCache, cache_key
from composer_core.replay.pairs import CHANNEL, TRACE_VOTER, PreferencePair
from composer_core.replay.teachers import Teacher, TeacherReply, tool_calls_to_chat
from composer_core.traces.contracts import Contract, Message, ToolCall, Trace
from composer_core.traces.formats import parse_arguments

ActionKey = Callable[[str, Sequence[ToolCall]], str]
StepKind = Literal["pairs", "unanimous", "no_consensus", "too_few_answers"]
PROGRESS_TICK_S = 1.0  # how often the progress bar says which teacher call is waited for, and for how long


def action_key(content: str, tool_calls: Sequence[ToolCall]) -> str:
    """What an answer does: its tool calls (names and canonical JSON arguments, ids ignored) when it makes
    any, else its text with whitespace runs collapsed. Two answers with the same key are the same action."""
    if tool_calls:
        calls = [[call.name, _canonical_arguments(call.arguments)] for call in tool_calls]
        return "tools:" + json.dumps(calls, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "text:" + " ".join(content.split())


def _canonical_arguments(arguments: dict[str, Any] | str) -> dict[str, Any] | str:
    parsed = parse_arguments(arguments)
    return parsed if isinstance(parsed, dict) else " ".join(parsed.split())


def chat_message(message: Message) -> dict[str, Any]:
    """A trace message as sent to teachers: visible content only (no thinking), arguments as JSON text."""
    chat = message.to_chat(include_thinking=False)
    if message.tool_calls:
        chat["tool_calls"] = tool_calls_to_chat(message.tool_calls)
    return chat


def step_verified(trace: Trace, step: int) -> bool | None:
    """The trace's own verdict on a step: True when the tool results that follow it all came back without
    failure, False when one failed, None when the step made no tool call or no result follows."""
    if not trace.messages[step].tool_calls:
        return None
    results = []
    for later in trace.messages[step + 1:]:
        if later.role != "tool":
            break
        results.append(later)
    return None if not results else not any(result.failed for result in results)


def select_steps(trace: Trace, steps: Sequence[int] | None = None, max_steps: int | None = None) -> list[int]:
    """Indices of the assistant messages to replay: by default every one right after a user or tool message;
    `steps` names them instead (for example self-distillation targets); `max_steps` (>= 1) keeps the first ones."""
    _check_count("max_steps", max_steps, least=1, optional=True)
    if steps is None:
        chosen = [index for index, message in enumerate(trace.messages) if index > 0 and message.role == "assistant"
                  and trace.messages[index - 1].role in ("user", "tool")]
    else:
        _check_step_numbers(steps, f"trace {trace.trace_id!r}: steps")
        chosen = sorted(set(steps))
        bad = [index for index in chosen if not 0 < index < len(trace.messages)
               or trace.messages[index].role != "assistant"]
        if bad:
            raise ConfigError(f"trace {trace.trace_id!r}: steps {bad} are not assistant messages after the first "
                              f"message (the trace has {len(trace.messages)} messages)")
    return chosen if max_steps is None else chosen[:max_steps]


@dataclass(frozen=True)
class ReplayOptions:
    """How to replay. steps: message indices to replay, one list for every trace or a list per trace_id (a
    trace missing from the mapping is skipped); None selects steps as `select_steps` does."""

    steps: Sequence[int] | Mapping[str, Sequence[int]] | None = None
    max_steps_per_trace: int | None = None
    use_trace_outcome: bool = False
    min_answers: int = 2
    max_concurrent_steps: int = 4
    action_key: ActionKey = action_key
    verify: Callable[[Trace, int], bool | None] = step_verified
    progress: bool = False

    def __post_init__(self) -> None:
        """Refuse counts that would silently replay less than asked (a negative max_steps_per_trace drops the
        last steps, 0 replays nothing) or never finish (no concurrent step)."""
        _check_count("max_steps_per_trace", self.max_steps_per_trace, least=1, optional=True)
        _check_count("min_answers", self.min_answers, least=2)
        _check_count("max_concurrent_steps", self.max_concurrent_steps, least=1)
        if isinstance(self.steps, Mapping):
            for trace_id, wanted in self.steps.items():
                _check_step_numbers(wanted, f"steps[{trace_id!r}]")
        elif self.steps is not None:
            _check_step_numbers(self.steps, "steps")

    def steps_of(self, trace: Trace) -> list[int]:
        if isinstance(self.steps, Mapping):
            wanted = self.steps.get(trace.trace_id)
            return [] if wanted is None else select_steps(trace, wanted, self.max_steps_per_trace)
        return select_steps(trace, self.steps, self.max_steps_per_trace)


class TeacherFailure(Contract):
    """A teacher call that gave no answer, kept with its error."""

    teacher: str
    trace_id: str
    step: int
    error: str
    status: int | None = None
    attempts: int = 1


class ReplayReport(Contract):
    """What a replay did. Every selected step that was replayed lands in exactly one of pair_steps,
    unanimous_steps, no_consensus_steps, too_few_answers_steps. calls: answers the teachers gave in this run
    (cache hits excluded); attempts: requests sent, retries and failed calls included; cost_usd: paid in this
    run; cached_cost_usd: what the cached answers cost when they were first paid; latency_s: summed over
    this run's calls; wall_s: the whole replay."""

    channel: str = CHANNEL
    teachers: list[str] = Field(default_factory=list)
    traces: int = 0
    steps_selected: int = 0
    steps_replayed: int = 0
    pair_steps: int = 0
    unanimous_steps: int = 0
    no_consensus_steps: int = 0
    too_few_answers_steps: int = 0
    pairs: int = 0
    calls: int = 0
    attempts: int = 0
    retries: int = 0
    cache_hits: int = 0
    teacher_errors: int = 0
    errors_by_teacher: dict[str, int] = Field(default_factory=dict)
    errors: list[TeacherFailure] = Field(default_factory=list)
    cost_usd: float = 0.0
    cached_cost_usd: float = 0.0
    latency_s: float = 0.0
    wall_s: float = 0.0


@dataclass
class StepResult:
    """One replayed step: its votes, its pairs, how it ended, and the teachers that failed on it."""

    trace_id: str
    step: int
    kind: StepKind
    votes: dict[str, int]
    pairs: list[PreferencePair] = field(default_factory=list)
    failures: list[TeacherFailure] = field(default_factory=list)


@dataclass
class ReplayResult:
    pairs: list[PreferencePair]
    report: ReplayReport


def replay_trace(trace: Trace, teachers: Sequence[Teacher], options: ReplayOptions | None = None, *,
                 cache: ReplayCache | None = None,
                 on_step: Callable[[StepResult], None] | None = None) -> ReplayResult:
    """Replay one trace (blocking; inside a running event loop await `areplay_traces` instead)."""
    return replay_traces([trace], teachers, options, cache=cache, on_step=on_step)


def replay_traces(traces: Iterable[Trace], teachers: Sequence[Teacher], options: ReplayOptions | None = None, *,
                  cache: ReplayCache | None = None,
                  on_step: Callable[[StepResult], None] | None = None) -> ReplayResult:
    """Replay traces (blocking); see `areplay_traces`."""
    return asyncio.run(areplay_traces(traces, teachers, options, cache=cache, on_step=on_step))


async def areplay_traces(traces: Iterable[Trace], teachers: Sequence[Teacher], options: ReplayOptions | None = None,
                         *, cache: ReplayCache | None = None,
                         on_step: Callable[[StepResult], None] | None = None) -> ReplayResult:
    """Replay the selected steps of every trace with every teacher; up to `max_concurrent_steps` steps are in
    flight at once. Every answer is cached as it arrives, so when the replay stops early (SpendCapReached, an
    exception from `on_step`, cancellation) a rerun with the same cache resumes without paying again.
    Returns the pairs in (trace, step) order and the report.

    On SpendCapReached no new step starts, the steps in flight finish (their requests are already paid for)
    and the error is raised with the partial report as its `report`; any other exception cancels the rest."""
    options = options or ReplayOptions()
    _check(teachers, options)
    traces = list(traces)
    work = [(trace, step) for trace in traces for step in options.steps_of(trace)]
    report = ReplayReport(teachers=[teacher.name for teacher in teachers], traces=len(traces),
                          steps_selected=len(work))
    replayer = _StepReplayer(teachers, options, cache, report)
    gate = asyncio.Semaphore(options.max_concurrent_steps)
    halt = asyncio.Event()

    async def run(order: int, trace: Trace, step: int) -> tuple[int, StepResult | None]:
        async with gate:
            return order, None if halt.is_set() else await replayer.replay(trace, step)

    started = time.perf_counter()
    bar = _progress_bar(len(work)) if options.progress else None
    results: dict[int, StepResult] = {}
    cap: SpendCapReached | None = None
    tasks = [asyncio.ensure_future(run(order, trace, step)) for order, (trace, step) in enumerate(work)]
    ticker = [asyncio.ensure_future(_show_waits(bar, replayer))] if bar is not None else []
    try:
        for next_done in asyncio.as_completed(tasks):
            try:
                order, result = await next_done
            except SpendCapReached as error:
                cap = cap or error
                halt.set()
                continue
            if result is None:
                continue
            results[order] = result
            if bar is not None:
                bar.update(1)
                _show_state(bar, replayer, refresh=False)
            if on_step is not None:
                on_step(result)
    finally:
        for task in tasks + ticker:
            task.cancel()
        await asyncio.gather(*tasks, *ticker, return_exceptions=True)
        if bar is not None:
            bar.close()
        for teacher in teachers:
            await teacher.aclose()
        report.wall_s = time.perf_counter() - started
    if cap is not None:
        cap.report = report
        raise cap
    return ReplayResult([pair for order in sorted(results) for pair in results[order].pairs], report)


class _StepReplayer:
    """Replays one step at a time against the teachers, the cache and the shared report."""

    def __init__(self, teachers: Sequence[Teacher], options: ReplayOptions, cache: ReplayCache | None,
                 report: ReplayReport) -> None:
        self.teachers = teachers
        self.options = options
        self.cache = cache
        self.report = report
        self.asking: dict[object, tuple[str, float]] = {}  # teacher calls in flight: teacher name, start time

    def longest_wait(self) -> str:
        """The teacher call in flight the longest, how long so far, and how many are in flight ('' if none)."""
        if not self.asking:
            return ""
        name, since = min(self.asking.values(), key=lambda entry: entry[1])
        return f"{name} {time.perf_counter() - since:.0f}s ({len(self.asking)} calls in flight)"

    async def replay(self, trace: Trace, step: int) -> StepResult:
        prompt = [chat_message(message) for message in trace.messages[:step]]
        outcomes = await asyncio.gather(*(self._ask(teacher, prompt) for teacher in self.teachers),
                                        return_exceptions=True)
        answers: dict[str, TeacherReply] = {}
        failures = []
        for teacher, outcome in zip(self.teachers, outcomes, strict=True):
            if isinstance(outcome, TeacherReply):
                answers[teacher.name] = outcome
            elif isinstance(outcome, Exception) and not isinstance(outcome, SpendCapReached):
                failures.append(self._failure(teacher, trace, step, outcome))
        for outcome in outcomes:  # the cap and cancellation stop the replay once every answer is accounted for
            if isinstance(outcome, (SpendCapReached, asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise outcome
        result = self._decide(trace, step, prompt, answers)
        result.failures = failures
        self.report.steps_replayed += 1
        counter = {"pairs": "pair_steps", "unanimous": "unanimous_steps", "no_consensus": "no_consensus_steps",
                   "too_few_answers": "too_few_answers_steps"}[result.kind]
        setattr(self.report, counter, getattr(self.report, counter) + 1)
        self.report.pairs += len(result.pairs)
        return result

    async def _ask(self, teacher: Teacher, prompt: list[dict[str, Any]]) -> TeacherReply:
        key = cache_key(teacher.fingerprint(), prompt) if self.cache is not None else ""
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                self.report.cache_hits += 1
                self.report.cached_cost_usd += cached.cost_usd
                return cached
        token = object()
        self.asking[token] = (teacher.name, time.perf_counter())
        try:
            reply = await teacher.complete(prompt)
        except TeacherError as error:
            self.report.attempts += error.attempts
            self.report.retries += error.attempts - 1
            self.report.cost_usd += error.cost_usd
            raise
        finally:
            del self.asking[token]
        if self.cache is not None:
            self.cache.put(key, teacher.name, reply)
        self.report.calls += 1
        self.report.attempts += reply.attempts
        self.report.retries += reply.attempts - 1
        self.report.cost_usd += reply.cost_usd
        self.report.latency_s += reply.latency_s
        return reply

    def _failure(self, teacher: Teacher, trace: Trace, step: int, error: Exception) -> TeacherFailure:
        failure = TeacherFailure(teacher=teacher.name, trace_id=trace.trace_id, step=step,
                                 error=f"{type(error).__name__}: {error}", status=getattr(error, "status", None),
                                 attempts=getattr(error, "attempts", 1))
        self.report.teacher_errors += 1
        self.report.errors_by_teacher[teacher.name] = self.report.errors_by_teacher.get(teacher.name, 0) + 1
        self.report.errors.append(failure)
        return failure

    def _decide(self, trace: Trace, step: int, prompt: list[dict[str, Any]],
                answers: dict[str, TeacherReply]) -> StepResult:
        """Votes -> pairs: the chosen action against each other action (see the module doc)."""
        keys = {name: self.options.action_key(reply.content, reply.tool_calls) for name, reply in answers.items()}
        votes = dict(Counter(keys.values()).most_common())
        if len(answers) < self.options.min_answers:
            return StepResult(trace.trace_id, step, "too_few_answers", votes)
        own = trace.messages[step]
        own_key = self.options.action_key(own.content, own.tool_calls)
        verdict = self.options.verify(trace, step) if self.options.use_trace_outcome else None
        top, top_votes = next(iter(votes.items()))
        if verdict:
            chosen, chosen_by = own_key, "verified_trace"
        elif 2 * top_votes > len(answers) and not (verdict is False and top == own_key):
            chosen, chosen_by = top, "majority"
        else:  # no strict majority, or the majority repeats the trace's failed action
            return StepResult(trace.trace_id, step, "no_consensus", votes)
        rejected = [key for key in votes if key != chosen]
        if verdict is False and own_key not in rejected:
            rejected.append(own_key)
        if not rejected:
            return StepResult(trace.trace_id, step, "unanimous", votes)

        def side(key: str, is_rejected: bool) -> tuple[dict[str, Any], list[str]]:
            names = [name for name, value in keys.items() if value == key]
            with_trace = key == own_key and (verdict is False if is_rejected else chosen_by == "verified_trace")
            message = chat_message(own) if with_trace else answers[names[0]].to_chat()
            return message, names + ([TRACE_VOTER] if with_trace else [])

        chosen_message, chosen_teachers = side(chosen, is_rejected=False)
        cost = sum(reply.cost_usd for reply in answers.values())
        latency = max(reply.latency_s for reply in answers.values())
        pairs = []
        for key in rejected:
            rejected_message, rejected_teachers = side(key, is_rejected=True)
            pairs.append(PreferencePair(
                pair_id=_pair_id(trace.trace_id, step, chosen, key), trace_id=trace.trace_id, step=step,
                prompt=prompt, chosen=chosen_message, rejected=rejected_message, chosen_action=chosen,
                rejected_action=key, chosen_by=chosen_by, chosen_teachers=chosen_teachers,
                rejected_teachers=rejected_teachers, votes=votes, agreement=votes.get(chosen, 0) / len(answers),
                cost_usd=cost, latency_s=latency, provenance=own.provenance))
        return StepResult(trace.trace_id, step, "pairs", votes, pairs)


def _check(teachers: Sequence[Teacher], options: ReplayOptions) -> None:
    names = [teacher.name for teacher in teachers]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"teacher names must be unique (they key votes and the cache): {duplicates} repeat")
    if len(teachers) < options.min_answers:
        raise ConfigError(f"replay needs at least min_answers={options.min_answers} teachers; got "
                          f"{len(teachers)} ({names})")


def _check_count(name: str, value: Any, *, least: int, optional: bool = False) -> None:
    """Refuse a count that is not an integer >= `least` (None allowed when `optional`)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        allowed = " (or None for no limit)" if optional else ""
        raise ConfigError(f"{name} must be an integer >= {least}{allowed}, got {value!r}")


def _check_step_numbers(steps: Any, where: str) -> None:
    """Refuse step lists that are not lists of integer message indices (a string would be read char by char)."""
    if isinstance(steps, str | bytes) or not isinstance(steps, Sequence | set | frozenset) or \
            not all(isinstance(step, int) and not isinstance(step, bool) for step in steps):
        raise ConfigError(f"{where} must be a list of integer message indices, got {steps!r}")


def _pair_id(trace_id: str, step: int, chosen: str, rejected: str) -> str:
    canonical = json.dumps([trace_id, step, chosen, rejected], ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


async def _show_waits(bar: Any, replayer: _StepReplayer) -> None:
    """Refresh the bar every PROGRESS_TICK_S, so that a slow or hanging teacher shows while it is waited for."""
    while True:
        await asyncio.sleep(PROGRESS_TICK_S)
        _show_state(bar, replayer, refresh=True)


def _show_state(bar: Any, replayer: _StepReplayer, refresh: bool) -> None:
    bar.set_postfix(pairs=replayer.report.pairs, cost=f"{replayer.report.cost_usd:.4f}",
                    waiting=replayer.longest_wait() or "-", refresh=refresh)


def _progress_bar(total: int) -> Any:
    from tqdm.auto import tqdm  # optional: only needed when progress is shown

    return tqdm(total=total, desc="replay", unit="step")
