"""Trace replay with N teachers -> preference pairs (channel 3 data, composer-core's own research channel).

The teachers talk to a real OpenAI-compatible server process on loopback (tests/openai_server.py) whose
answers are deterministic per (model, last message), with faults injected per model; the trace is a real
SWE-agent trajectory from the shared data set.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import math
import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai_server import answer
from shared_data import TRACES

from composer_core.errors import ConfigError, SpendCapReached, TeacherError
from composer_core.replay import runner
from composer_core.replay.cache import ReplayCache, cache_key
from composer_core.replay.local_teacher import LocalHFTeacher
from composer_core.replay.openai_teacher import OpenAICompatibleTeacher
from composer_core.replay.pairs import (
    CHANNEL,
    TRACE_VOTER,
    pairs_to_dataset,
    read_pairs_jsonl,
    trl_message,
    write_pairs_jsonl,
)
from composer_core.replay.runner import (
    ReplayOptions,
    StepResult,
    action_key,
    chat_message,
    replay_trace,
    select_steps,
)
from composer_core.replay.teacher_config import load_teachers
from composer_core.replay.teachers import Budget
from composer_core.traces.contracts import Message, Provenance, ToolCall, Trace
from composer_core.traces.formats import parse_arguments
from composer_core.traces.openai_messages import chat_message as ingest_message

SWE_AGENT = TRACES / "swe_agent" / "SWE-agent__SWE-agent__6e44b9__sweagenttestrepo-1c2844.traj"
pytestmark = pytest.mark.skipif(not SWE_AGENT.is_file(), reason=f"shared trace samples not found at {TRACES}")
TINY_MODELS = Path(__file__).resolve().parents[1] / "integration_tests" / "tiny_models.py"
RACE_SCRIPT = Path(__file__).with_name("local_teachers_race.py")
TEACHERS = ("teacher-a", "teacher-b", "teacher-c")  # on the trace's 4 steps: 2 / 1 / 1 / 3 distinct actions


def swe_agent_trace(path: Path = SWE_AGENT) -> Trace:
    """A Trace built from a real SWE-agent v1 trajectory's `history` (OpenAI-style messages with tool calls)."""
    messages = []
    for index, raw in enumerate(json.loads(path.read_text())["history"]):
        ids = raw.get("tool_call_ids") or [None]
        chat = {**raw, "tool_call_id": ids[0]}
        where = Provenance(format="swe_agent", file=str(path), record=f"history[{index}]")
        messages.append(ingest_message(chat, where))
    return Trace(trace_id=path.stem, format="swe_agent", source=str(path), messages=messages)


@pytest.fixture(scope="module")
def trace() -> Trace:
    return swe_agent_trace()


@dataclass
class Api:
    """The test server: its address, fault injection and request statistics."""

    url: str

    def control(self, model: str, **faults: Any) -> None:
        body = json.dumps({"model": model, **faults})  # json.dumps, not httpx: a fault may be a NaN
        httpx.post(f"{self.url}/control", content=body, headers={"content-type": "application/json"}).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/stats").json()

    def teacher(self, model: str, **options: Any) -> OpenAICompatibleTeacher:
        settings = {"backoff_s": 0.01, "max_retry_wait_s": 0.05, "timeout_s": 5.0, **options}
        return OpenAICompatibleTeacher(model, base_url=f"{self.url}/v1", model=model, **settings)

    def teachers(self, **options: Any) -> list[OpenAICompatibleTeacher]:
        return [self.teacher(model, **options) for model in TEACHERS]


@pytest.fixture
def api(server: str) -> Api:
    httpx.post(f"{server}/reset").raise_for_status()
    return Api(server)


def expected_votes(trace: Trace, step: int, models: tuple[str, ...] = TEACHERS) -> dict[str, int]:
    """The votes the server's policy implies for a step, computed without the replay code path."""
    prompt = [chat_message(message) for message in trace.messages[:step]]
    votes: dict[str, int] = {}
    for model in models:
        calls = [ToolCall(name=call["function"]["name"], arguments=parse_arguments(call["function"]["arguments"]))
                 for call in answer(model, prompt)["tool_calls"]]
        key = action_key("", calls)
        votes[key] = votes.get(key, 0) + 1
    return votes


def test_step_selection_and_action_keys(trace: Trace) -> None:
    assert select_steps(trace) == [2, 4, 6, 8]
    assert select_steps(trace, max_steps=2) == [2, 4]
    assert select_steps(trace, steps=[6, 2, 6]) == [2, 6]
    with pytest.raises(ConfigError, match=r"steps \[3\] are not assistant messages"):
        select_steps(trace, steps=[3])
    options = ReplayOptions(steps={trace.trace_id: [4]})
    assert options.steps_of(trace) == [4]
    assert options.steps_of(trace.model_copy(update={"trace_id": "other"})) == []
    one = [ToolCall(id="x", name="bash", arguments={"b": 1, "a": {"y": 2, "x": 1}})]
    same = [ToolCall(id="y", name="bash", arguments='{"a": {"x": 1, "y": 2}, "b": 1}')]
    assert action_key("ignored", one) == action_key("", same)
    assert action_key("", one) != action_key("", [ToolCall(name="bash", arguments={"b": 2, "a": {"y": 2, "x": 1}})])
    assert action_key("run  the\n tests ", []) == action_key("run the tests", []) == "text:run the tests"


def test_pairs_from_disagreement_on_a_real_trace(api: Api, trace: Trace) -> None:
    steps: list[StepResult] = []
    result = replay_trace(trace, api.teachers(), on_step=steps.append)
    report = result.report
    assert (report.steps_selected, report.steps_replayed, report.calls, report.retries) == (4, 4, 12, 0)
    assert (report.pair_steps, report.unanimous_steps, report.no_consensus_steps) == (1, 2, 1)
    assert report.teacher_errors == 0 and api.stats()["total"] == 12
    for step in steps:
        assert step.votes == expected_votes(trace, step.step)
        assert step.kind == {1: "unanimous", 2: "pairs", 3: "no_consensus"}[len(step.votes)]
    [pair] = result.pairs
    assert pair.channel == CHANNEL and pair.chosen_by == "majority" and pair.trace_id == trace.trace_id
    assert pair.votes == {pair.chosen_action: 2, pair.rejected_action: 1} and pair.agreement == pytest.approx(2 / 3)
    assert len(pair.chosen_teachers) == 2 and len(pair.rejected_teachers) == 1
    assert set(pair.chosen_teachers + pair.rejected_teachers) == set(TEACHERS)
    assert pair.prompt == [chat_message(message) for message in trace.messages[:pair.step]]
    assert pair.step == 2 and pair.prompt[-1]["role"] == "user"
    assert json.loads(pair.chosen["tool_calls"][0]["function"]["arguments"])["command"].startswith("echo step-")
    assert pair.provenance == trace.messages[pair.step].provenance
    assert pair.provenance.file == str(SWE_AGENT) and pair.provenance.record == f"history[{pair.step}]"
    assert pair.latency_s > 0 and pair.cost_usd == 0


def test_trace_outcome_chooses_verified_actions_and_rejects_failed_ones(api: Api, trace: Trace, tmp_path: Path) -> None:
    options = ReplayOptions(use_trace_outcome=True)
    with ReplayCache(tmp_path / "cache.sqlite") as cache:
        verified = replay_trace(trace, api.teachers(), options, cache=cache)
        failed_trace = trace.model_copy(deep=True)
        failed_trace.messages[7].tool_result.is_error = True  # the result of step 6's tool call (unanimous)
        failed = replay_trace(failed_trace, api.teachers(), options, cache=cache)
    assert api.stats()["total"] == 12 and failed.report.cache_hits == 12  # the second replay paid nothing
    assert verified.report.pairs == 2 + 1 + 1 + 3  # the trace's own action against every teacher action
    for pair in verified.pairs:
        assert pair.chosen_by == "verified_trace" and pair.chosen_teachers == [TRACE_VOTER]
        assert pair.chosen == chat_message(trace.messages[pair.step]) and pair.agreement == 0
    [against] = [pair for pair in failed.pairs if pair.step == 6]
    assert against.chosen_by == "majority" and against.rejected_teachers == [TRACE_VOTER]
    assert against.rejected == chat_message(trace.messages[6]) and against.chosen_teachers == list(TEACHERS)


def test_retries_on_429_500_and_timeouts_succeed_and_are_counted(api: Api, trace: Trace) -> None:
    api.control("teacher-a", fail_429=2, retry_after="0.2")
    api.control("teacher-b", fail_500=2)
    api.control("teacher-c", sleep_s=1.0, sleep_n=1)
    teachers = [api.teacher("teacher-a"), api.teacher("teacher-b"), api.teacher("teacher-c", timeout_s=0.3)]
    report = replay_trace(trace, teachers, ReplayOptions(max_steps_per_trace=1)).report
    assert (report.calls, report.retries, report.attempts, report.teacher_errors) == (3, 5, 8, 0)
    stats = api.stats()
    assert stats["by_status"]["429"] == 2 and stats["by_status"]["500"] == 2
    assert stats["by_model"] == {"teacher-a": 3, "teacher-b": 3, "teacher-c": 2}

    api.control("teacher-a", fail_429=2, retry_after="0.2")
    reply = asyncio.run(api.teacher("teacher-a", max_retry_wait_s=1.0).complete([{"role": "user", "content": "hi"}]))
    assert reply.attempts == 3 and reply.latency_s >= 0.4  # both Retry-After waits were honoured


def test_exhausted_retries_are_reported_and_the_step_goes_on(api: Api, trace: Trace) -> None:
    api.control("teacher-b", fail_500=100)
    api.control("teacher-c", fail_400=1)
    teachers = [api.teacher("teacher-a"), api.teacher("teacher-b", max_retries=2), api.teacher("teacher-c"),
                api.teacher("teacher-d")]
    report = replay_trace(trace, teachers, ReplayOptions(max_steps_per_trace=1)).report
    assert (report.steps_replayed, report.calls, report.teacher_errors) == (1, 2, 2)
    assert report.too_few_answers_steps == 0 and report.errors_by_teacher == {"teacher-b": 1, "teacher-c": 1}
    exhausted, refused = sorted(report.errors, key=lambda failure: failure.teacher)
    assert (exhausted.status, exhausted.attempts, refused.status, refused.attempts) == (500, 3, 400, 1)
    assert "teacher 'teacher-b'" in exhausted.error and "gave up after 3 attempts" in exhausted.error
    assert "HTTP 500" in exhausted.error and "injected 500 for teacher-b" in exhausted.error
    assert "HTTP 400" in refused.error and "(not retried)" in refused.error

    lone = [api.teacher("teacher-a"), api.teacher("teacher-b", max_retries=0), api.teacher("teacher-e",
                                                                                         max_retries=0)]
    api.control("teacher-e", fail_500=100)
    report = replay_trace(trace, lone, ReplayOptions(max_steps_per_trace=1)).report
    assert (report.steps_replayed, report.too_few_answers_steps, report.pairs, report.teacher_errors) == (1, 1, 0, 2)
    with pytest.raises(TeacherError, match=r"teacher 'teacher-b' \(teacher-b at http://127\.0\.0\.1:\d+/v1/chat"):
        asyncio.run(api.teacher("teacher-b", max_retries=0).complete([{"role": "user", "content": "hi"}]))


def test_a_malformed_reply_is_an_error_and_is_still_charged(api: Api) -> None:
    api.control("teacher-a", malformed=1)
    budget = Budget(1.0)
    teacher = api.teacher("teacher-a", budget=budget, input_usd_per_mtok=1.0, params={"max_tokens": 10})
    prompt = [{"role": "user", "content": "hi"}]
    with pytest.raises(TeacherError, match=r"teacher 'teacher-a' .* malformed reply \(IndexError") as caught:
        asyncio.run(teacher.complete(prompt))
    assert caught.value.cost_usd == budget.spent_usd == teacher.estimate_usd(prompt) > 0 and budget.paid_calls == 1


def test_concurrency_limit_is_shared_across_calls(api: Api, trace: Trace) -> None:
    for model in TEACHERS:
        api.control(model, sleep_s=0.3, sleep_n=100)
    teachers = [api.teacher("teacher-a", max_concurrency=1), api.teacher("teacher-b", max_concurrency=2),
                api.teacher("teacher-c")]
    replay_trace(trace, teachers, ReplayOptions(max_concurrent_steps=4))
    most = api.stats()["max_in_flight"]
    assert (most["teacher-a"], most["teacher-b"]) == (1, 2) and most["teacher-c"] > 2  # c: unlimited, 4 steps


def test_spend_cap_stops_paid_calls_and_a_rerun_resumes(api: Api, trace: Trace, tmp_path: Path) -> None:
    prices = {"input_usd_per_mtok": 100.0, "output_usd_per_mtok": 100.0, "params": {"max_tokens": 64}}
    first_prompt = [chat_message(message) for message in trace.messages[:2]]
    cap = 3 * api.teacher("x", **prices).estimate_usd(first_prompt) * 1.0001  # room for the first step only
    budget = Budget(cap)
    options = ReplayOptions(max_concurrent_steps=1)
    with ReplayCache(tmp_path / "cache.sqlite") as cache:
        with pytest.raises(SpendCapReached, match=r"teacher 'teacher-\w': refused a call .* past the cap") as caught:
            replay_trace(trace, api.teachers(budget=budget, **prices), options, cache=cache)
        first = api.stats()
        assert budget.paid_calls == first["total"] == 3 == len(cache) and 0 < budget.spent_usd <= cap
        partial = caught.value.report
        assert partial.calls == 3 and partial.cost_usd == pytest.approx(budget.spent_usd)
        httpx.post(f"{api.url}/reset").raise_for_status()
        resumed = replay_trace(trace, api.teachers(budget=Budget(), **prices), options, cache=cache).report
    second = api.stats()
    assert (resumed.cache_hits, resumed.calls, second["total"]) == (3, 9, 9)
    assert not {tuple(request) for request in first["requests"]} & {tuple(request) for request in second["requests"]}


def test_cache_second_run_makes_no_calls(api: Api, trace: Trace, tmp_path: Path) -> None:
    path = tmp_path / "replay" / "cache.sqlite"
    prices = {"input_usd_per_mtok": 3.0, "output_usd_per_mtok": 15.0}
    with ReplayCache(path) as cache:
        first = replay_trace(trace, api.teachers(**prices), cache=cache)
    assert api.stats()["total"] == 12 and first.report.cost_usd > 0
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    httpx.post(f"{api.url}/reset").raise_for_status()
    with ReplayCache(path) as cache:
        second = replay_trace(trace, api.teachers(**prices), cache=cache)
    assert api.stats()["total"] == 0
    assert (second.report.calls, second.report.cache_hits, second.report.cost_usd) == (0, 12, 0)
    assert second.report.cached_cost_usd == pytest.approx(first.report.cost_usd)
    assert [pair.model_dump() for pair in second.pairs] == [pair.model_dump() for pair in first.pairs]
    assert cache_key({"a": 1, "b": [2]}, [{"role": "user", "content": "x"}]) == \
        cache_key({"b": [2], "a": 1}, [{"content": "x", "role": "user"}])


def test_an_interrupted_replay_resumes_without_redoing_completed_calls(api: Api, trace: Trace,
                                                                        tmp_path: Path) -> None:
    def stop(step: StepResult) -> None:
        raise KeyboardInterrupt

    options = ReplayOptions(max_concurrent_steps=1)
    with ReplayCache(tmp_path / "cache.sqlite") as cache:
        with pytest.raises(KeyboardInterrupt):
            replay_trace(trace, api.teachers(), options, cache=cache, on_step=stop)
        completed = len(cache)
        resumed = replay_trace(trace, api.teachers(), options, cache=cache).report
    assert completed >= 3
    assert resumed.cache_hits == completed and resumed.calls == 12 - completed
    assert resumed.steps_replayed == 4


def test_jsonl_and_dataset_exports_round_trip(api: Api, trace: Trace, tmp_path: Path) -> None:
    import datasets

    pairs = replay_trace(trace, api.teachers(), ReplayOptions(use_trace_outcome=True, progress=True)).pairs
    assert write_pairs_jsonl(pairs, tmp_path / "pairs.jsonl") == len(pairs) == 7
    assert read_pairs_jsonl(tmp_path / "pairs.jsonl") == pairs
    pairs_to_dataset(pairs).save_to_disk(str(tmp_path / "dataset"))
    rows = datasets.load_from_disk(str(tmp_path / "dataset")).to_list()
    for row, pair in zip(rows, pairs, strict=True):
        assert row["prompt"] == [trl_message(message) for message in pair.prompt]
        assert row["chosen"] == [trl_message(pair.chosen)] and row["rejected"] == [trl_message(pair.rejected)]
        assert row["chosen"][0]["role"] == "assistant" and row["prompt"][-1]["role"] in ("user", "tool")
        calls = [call for message in row["prompt"] for call in message["tool_calls"] or []]
        assert len(calls) == pair.step // 2 - 1 and all(isinstance(call["function"]["arguments"], str)
                                                        for call in calls)
        assert json.loads(row["votes"]) == pair.votes and row["pair_id"] == pair.pair_id
        assert (row["source_file"], row["source_record"], row["step"]) == (pair.provenance.file,
                                                                           pair.provenance.record, pair.step)
    assert len({pair.pair_id for pair in pairs}) == len(pairs)
    assert len(pairs_to_dataset([])) == 0


def test_configuration_errors(api: Api, trace: Trace, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="teacher names must be unique"):
        replay_trace(trace, [api.teacher("teacher-a"), api.teacher("teacher-a")])
    with pytest.raises(ConfigError, match="at least min_answers=2 teachers"):
        replay_trace(trace, [api.teacher("teacher-a")])
    monkeypatch.delenv("REPLAY_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="REPLAY_TEST_KEY"):
        api.teacher("teacher-a", api_key_env="REPLAY_TEST_KEY")


@pytest.mark.parametrize(("field", "value"), [
    ("max_steps_per_trace", -1), ("max_steps_per_trace", 0), ("max_steps_per_trace", 1.5),
    ("max_steps_per_trace", True), ("min_answers", 1), ("min_answers", -2), ("min_answers", 2.0),
    ("max_concurrent_steps", 0), ("max_concurrent_steps", -4), ("max_concurrent_steps", None),
    ("steps", "24"), ("steps", [2, "4"]), ("steps", {"some-trace": [2.5]})])
def test_replay_options_refuse_counts_that_would_drop_steps_or_stall(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"{field}.* must be (an integer|a list of integer)"):
        ReplayOptions(**{field: value})


def test_select_steps_refuses_a_negative_limit_instead_of_dropping_the_last_step(trace: Trace) -> None:
    with pytest.raises(ConfigError, match="max_steps must be an integer >= 1"):
        select_steps(trace, max_steps=-1)
    assert select_steps(trace, max_steps=4) == select_steps(trace) == [2, 4, 6, 8]


@pytest.mark.parametrize("cap", [math.nan, math.inf, -math.inf, -1, -1e-9, "5", True])
def test_budget_refuses_a_cap_that_could_never_be_enforced(cap: Any) -> None:
    with pytest.raises(ConfigError, match="the spend cap must be a finite number of USD >= 0"):
        Budget(cap)


def test_budget_spend_never_decreases() -> None:
    budget = Budget(1.0)
    for estimate in (math.nan, math.inf, -0.5):
        with pytest.raises(ConfigError, match="teacher 't': its cost estimate is .* not a finite number"):
            budget.reserve("t", estimate)
    for actual in (-5.0, math.nan, math.inf):
        budget.reserve("t", 0.1)
        with pytest.raises(ConfigError, match="charged at its estimate"):
            budget.settle(0.1, actual)
    assert budget.spent_usd == pytest.approx(0.3) and budget.paid_calls == 3
    budget.reserve("t", 0.7 - 1e-9)  # what is left
    budget.settle(0.7 - 1e-9, 0.0)
    with pytest.raises(SpendCapReached):
        budget.reserve("t", 0.71)


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": -1_000_000, "completion_tokens": 5}, {"prompt_tokens": 10, "completion_tokens": -3},
    {"prompt_tokens": 0, "completion_tokens": 0}, {"prompt_tokens": "lots", "completion_tokens": 1},
    {"prompt_tokens": 1.5, "completion_tokens": 1}, {"prompt_tokens": math.nan, "completion_tokens": 1},
    {"completion_tokens": 7}, [1, 2]])
def test_invalid_usage_from_a_priced_teacher_is_refused_and_charged(api: Api, usage: Any) -> None:
    api.control("teacher-a", usage=usage, usage_n=1)
    budget = Budget(1.0)
    teacher = api.teacher("teacher-a", budget=budget, input_usd_per_mtok=5.0, output_usd_per_mtok=5.0,
                          params={"max_tokens": 10})
    prompt = [{"role": "user", "content": "hi"}]
    with pytest.raises(TeacherError, match=r"teacher 'teacher-a' .*invalid usage .*\(not retried\)") as caught:
        asyncio.run(teacher.complete(prompt))
    assert caught.value.cost_usd == budget.spent_usd == teacher.estimate_usd(prompt) > 0
    assert api.stats()["by_model"] == {"teacher-a": 1}


def test_negative_usage_in_a_replay_never_lowers_the_spend(api: Api, trace: Trace) -> None:
    api.control("teacher-a", usage={"prompt_tokens": -10**9, "completion_tokens": 1}, usage_n=100)
    budget = Budget(10.0)
    prices = {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 1.0, "params": {"max_tokens": 16}}
    report = replay_trace(trace, api.teachers(budget=budget, **prices), ReplayOptions(max_concurrent_steps=1)).report
    assert report.errors_by_teacher == {"teacher-a": 4} and report.calls == 8
    assert all("invalid usage" in failure.error for failure in report.errors)
    assert report.cost_usd == pytest.approx(budget.spent_usd) and budget.paid_calls == 12 and budget.spent_usd > 0


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("input_usd_per_mtok", math.nan, "input_usd_per_mtok must be a finite number"),
    ("output_usd_per_mtok", -1.0, "output_usd_per_mtok must be a finite number"),
    ("timeout_s", math.inf, "timeout_s must be a finite number of seconds > 0"),
    ("deadline_s", 0, "deadline_s must be a finite number of seconds > 0"),
    ("max_retry_wait_s", math.nan, "max_retry_wait_s must be a finite number"),
    ("max_retries", -1, "max_retries must be an integer >= 0"),
    ("max_concurrency", 0, "max_concurrency must be an integer >= 1"),
    ("params", {"temperature": math.nan}, r"params\.temperature is nan"),
    ("params", {"max_tokens": -5}, "params.max_tokens must be an integer >= 1"),
    ("params", {"max_tokens": "many"}, "params.max_tokens must be an integer >= 1")])
def test_teacher_settings_that_break_waits_or_prices_are_refused(api: Api, setting: str, value: Any,
                                                                  message: str) -> None:
    with pytest.raises(ConfigError, match=rf"teacher 'teacher-a': .*{message}"):
        api.teacher("teacher-a", **{setting: value})


def test_a_retry_after_of_an_hour_is_capped_and_said(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    api.control("teacher-a", fail_429=2, retry_after="3600")
    teacher = api.teacher("teacher-a", max_retry_wait_s=0.05)
    with caplog.at_level(logging.WARNING, logger="composer_core.replay.openai_teacher"):
        reply = asyncio.run(teacher.complete([{"role": "user", "content": "hi"}]))
    assert reply.attempts == 3
    waits = [record.getMessage() for record in caplog.records]
    assert len(waits) == 2 and all("teacher 'teacher-a': HTTP 429" in wait and "asked for 3600 s" in wait
                                   and "waiting 0.05 s" in wait and "max_retry_wait_s" in wait for wait in waits)

    api.control("teacher-a", fail_429=100, retry_after="3600")
    with pytest.raises(TeacherError, match=r"teacher 'teacher-a' .*gave up after 3 attempts; last: HTTP 429"):
        asyncio.run(api.teacher("teacher-a", max_retries=2, max_retry_wait_s=0.05).complete([{"role": "user",
                                                                                               "content": "hi"}]))
    slow = api.teacher("teacher-a", max_retries=10, max_retry_wait_s=600, deadline_s=1.0)
    with pytest.raises(TeacherError, match=r"gave up after 1 attempts: the next could start only after its "
                                           r"deadline_s of 1 s \(the server asked for 3600 s"):
        asyncio.run(slow.complete([{"role": "user", "content": "hi"}]))


def test_a_teacher_that_never_answers_fails_within_its_deadline(api: Api) -> None:
    api.control("teacher-a", sleep_s=3600, sleep_n=100)
    teacher = api.teacher("teacher-a", timeout_s=0.2, deadline_s=0.5, max_retries=100)
    with pytest.raises(TeacherError, match=r"teacher 'teacher-a' .*deadline_s of 0\.5 s") as caught:
        asyncio.run(teacher.complete([{"role": "user", "content": "hi"}]))
    assert "no complete answer within" in str(caught.value) or "passed while queued" in str(caught.value)
    assert 2 <= caught.value.attempts < 100


def test_a_server_trickling_bytes_is_cut_off_and_charged(api: Api) -> None:
    api.control("teacher-a", trickle_n=1)
    budget = Budget(1.0)
    teacher = api.teacher("teacher-a", timeout_s=0.3, max_retries=0, budget=budget, input_usd_per_mtok=1.0)
    prompt = [{"role": "user", "content": "hi"}]
    with pytest.raises(TeacherError, match=r"no complete answer within 0\.3 s \(TimeoutError\)"):
        asyncio.run(teacher.complete(prompt))
    assert budget.spent_usd == teacher.estimate_usd(prompt) > 0  # it was sent: it may have been billed


def test_a_hanging_teacher_does_not_stop_the_replay_and_shows_in_the_progress(
        api: Api, trace: Trace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(runner, "PROGRESS_TICK_S", 0.02)
    api.control("teacher-c", sleep_s=3600, sleep_n=100)
    teachers = [api.teacher("teacher-a"), api.teacher("teacher-b"),
                api.teacher("teacher-c", timeout_s=0.3, deadline_s=0.4)]
    report = replay_trace(trace, teachers, ReplayOptions(max_steps_per_trace=1, progress=True)).report
    assert (report.steps_replayed, report.calls, report.errors_by_teacher) == (1, 2, {"teacher-c": 1})
    assert "waiting=teacher-c" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "text", "message"), [
    ("dup.yaml", "- {name: a, base_url: x, model: m, model: n}\n", "duplicate key 'model'"),
    ("bomb.yaml", "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nteachers: [*e]\n", "alias bomb"),
    ("nan.yaml", "- {name: a, base_url: x, model: m, input_usd_per_mtok: .nan}\n",
     r"teacher 'a' \(entry 1\): input_usd_per_mtok: Input should be a finite number"),
    ("inf.json", '[{"name": "a", "base_url": "x", "model": "m"}, {"name": "b", "base_url": "x", "model": "m", '
     '"timeout_s": Infinity}]', r"teacher 'b' \(entry 2\): timeout_s: Input should be a finite number"),
    ("params.yaml", "- {name: a, base_url: x, model: m, params: {temperature: .inf}}\n",
     r"teacher 'a': params\.temperature is inf"),
    ("local.yaml", "- {name: a, kind: local_hf, path: ., temperature: .nan}\n",
     r"teacher 'a' \(entry 1\): temperature: Input should be a finite number"),
    ("kind.yaml", "- {name: a, kind: locl, path: x}\n", r"teacher 'a' \(entry 1\): kind 'locl' is unknown"),
    ("names.yaml", "- {name: a, base_url: x, model: m}\n- {name: a, base_url: y, model: m}\n",
     r"names must be unique .*\['a'\] repeat"),
    ("empty.yaml", "", "expected a non-empty list of teachers"),
    ("extra.yaml", "teachers: []\nbudget: 3\n", r"unknown top-level keys \['budget'\]"),
    ("scalar.yaml", "- just-a-name\n", "entry 1: expected a mapping of settings, got a str"),
    ("binary.yaml", "\udcff\x00\x01", "is not UTF-8 text")])
def test_hostile_teachers_files_are_named_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError, match=rf"teachers file {re.escape(str(path))}.*{message}"):
        load_teachers(path, Budget())


def test_a_teachers_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "teachers.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"teachers file .*teachers\.yaml is not a regular file \(a FIFO\)"):
        load_teachers(fifo, Budget())


@pytest.mark.parametrize(("flags", "message"), [
    (("--spend-cap", "nan"), "the spend cap must be a finite number"),
    (("--max-steps-per-trace", "-1"), "max_steps_per_trace must be an integer >= 1")])
def test_cli_refuses_nonsense_replay_flags(server: str, trace: Trace, tmp_path: Path, flags: tuple[str, ...],
                                           message: str) -> None:
    traces = tmp_path / "traces.jsonl"
    traces.write_text(trace.model_dump_json() + "\n")
    teachers = tmp_path / "teachers.yaml"
    teachers.write_text("".join(f"- {{name: {name}, base_url: '{server}/v1', model: {name}}}\n" for name in TEACHERS))
    out = tmp_path / "pairs.jsonl"
    result = subprocess.run([sys.executable, "-m", "composer_core.cli", "traces", "replay", str(traces), "--teachers",
                             str(teachers), "--out", str(out), *flags], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"composer-core: error: {message}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny local causal LM and its tokenizer, saved in separate folders (next to a qwen2 config the
    tokenizer would load as Qwen2's)."""
    spec = importlib.util.spec_from_file_location("tiny_models", TINY_MODELS)
    assert spec is not None and spec.loader is not None
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    folder = tmp_path_factory.mktemp("tiny")
    tokenizer = tiny.build_tokenizer()
    tiny.build_model(tokenizer).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "tokenizer")
    return folder / "model", folder / "tokenizer"


def test_local_hf_teacher_on_a_tiny_model(tiny_model: tuple[Path, Path]) -> None:
    model, tokenizer = tiny_model
    where = Provenance(format="hand", file="inline")
    trace = Trace(trace_id="tiny", format="hand", source="inline", messages=[
        Message(role="user", content="what is one plus two", provenance=where),
        Message(role="assistant", content="three", provenance=where),
        Message(role="user", content="add four", provenance=where),
        Message(role="assistant", content="seven", provenance=where)])
    teachers = [LocalHFTeacher("greedy", model, tokenizer_path=tokenizer, max_new_tokens=6),
                LocalHFTeacher("sampled", model, tokenizer_path=tokenizer, max_new_tokens=6, temperature=1.0, seed=7)]
    with ReplayCache(":memory:") as cache:
        first = replay_trace(trace, teachers, cache=cache).report
        again = replay_trace(trace, teachers, cache=cache).report
    assert (first.steps_replayed, first.calls, first.cost_usd, first.teacher_errors) == (2, 4, 0, 0)
    assert (again.calls, again.cache_hits) == (0, 4)
    assert teachers[0]._model is teachers[1]._model  # one folder, loaded once
    prompt = [chat_message(trace.messages[0])]
    replies = [asyncio.run(teacher.complete(prompt)) for teacher in teachers for _ in range(2)]
    assert replies[0].content == replies[1].content and replies[2].content == replies[3].content
    assert replies[0].prompt_tokens == 8 and 0 < replies[0].completion_tokens <= 6 and replies[0].cost_usd == 0


def test_local_teachers_load_safely_when_many_steps_start_at_once(tiny_model: tuple[Path, Path]) -> None:
    """In a fresh interpreter (transformers not imported yet) four teachers on one folder replay four steps at
    once, twice over; before loading was locked and transformers imported up front this failed with
    `cannot import name 'AutoModelForCausalLM'` or `Cannot copy out of meta tensor` in most runs."""
    model, tokenizer = tiny_model
    result = subprocess.run([sys.executable, str(RACE_SCRIPT), str(model), str(tokenizer), "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rounds = json.loads(result.stdout.splitlines()[-1])
    assert rounds == [{"errors": [], "calls": 16, "models": 1}] * 2


def test_local_teacher_settings_are_checked_up_front(tiny_model: tuple[Path, Path], tmp_path: Path) -> None:
    model, tokenizer = tiny_model
    with pytest.raises(ConfigError, match=r"teacher 'x': path .*missing is not a folder"):
        LocalHFTeacher("x", tmp_path / "missing", tokenizer_path=tokenizer)
    for settings, message in (({"temperature": math.nan}, "temperature must be a finite number"),
                              ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
                              ({"top_p": 0.0}, r"top_p must be in \(0, 1\]")):
        with pytest.raises(ConfigError, match=rf"teacher 'x': {message}"):
            LocalHFTeacher("x", model, tokenizer_path=tokenizer, **settings)
