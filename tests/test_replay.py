"""Trace replay with N teachers -> preference pairs (channel 3 data, composer-core's own research channel).

The teachers talk to a real OpenAI-compatible server process on loopback (tests/openai_server.py) whose
answers are deterministic per (model, last message), with faults injected per model; the trace is a real
SWE-agent trajectory from the shared data set.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai_server import answer
from shared_data import TRACES

from composer_core.errors import ConfigError, SpendCapReached, TeacherError
from composer_core.replay.cache import ReplayCache, cache_key
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
from composer_core.replay.teachers import Budget, LocalHFTeacher, OpenAICompatibleTeacher
from composer_core.traces.contracts import Message, Provenance, ToolCall, Trace
from composer_core.traces.formats import parse_arguments
from composer_core.traces.openai_messages import chat_message as ingest_message

SWE_AGENT = TRACES / "swe_agent" / "SWE-agent__SWE-agent__6e44b9__sweagenttestrepo-1c2844.traj"
pytestmark = pytest.mark.skipif(not SWE_AGENT.is_file(), reason=f"shared trace samples not found at {TRACES}")
TINY_MODELS = Path(__file__).resolve().parents[1] / "integration_tests" / "tiny_models.py"
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
        httpx.post(f"{self.url}/control", json={"model": model, **faults}).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/stats").json()

    def teacher(self, model: str, **options: Any) -> OpenAICompatibleTeacher:
        settings = {"backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 5.0, **options}
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
    reply = asyncio.run(api.teacher("teacher-a").complete([{"role": "user", "content": "hi"}]))
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
        api.control(model, sleep_s=0.1, sleep_n=100)
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
    with pytest.raises(ConfigError, match="at least that many teachers"):
        replay_trace(trace, [api.teacher("teacher-a")])
    with pytest.raises(ConfigError, match="max_concurrent_steps"):
        replay_trace(trace, api.teachers(), ReplayOptions(max_concurrent_steps=0))
    monkeypatch.delenv("REPLAY_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="REPLAY_TEST_KEY"):
        api.teacher("teacher-a", api_key_env="REPLAY_TEST_KEY")
    with pytest.raises(ConfigError, match="spend cap"):
        Budget(-1)


def test_local_hf_teacher_on_a_tiny_model(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("tiny_models", TINY_MODELS)
    assert spec is not None and spec.loader is not None
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    tokenizer = tiny.build_tokenizer()
    tiny.build_model(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "tokenizer")  # apart: next to a qwen2 config it would load as Qwen2's
    where = Provenance(format="hand", file="inline")
    trace = Trace(trace_id="tiny", format="hand", source="inline", messages=[
        Message(role="user", content="what is one plus two", provenance=where),
        Message(role="assistant", content="three", provenance=where),
        Message(role="user", content="add four", provenance=where),
        Message(role="assistant", content="seven", provenance=where)])
    teachers = [LocalHFTeacher("greedy", tmp_path / "model", tokenizer_path=tmp_path / "tokenizer", max_new_tokens=6),
                LocalHFTeacher("sampled", tmp_path / "model", tokenizer_path=tmp_path / "tokenizer", max_new_tokens=6,
                               temperature=1.0, seed=7)]
    started = time.perf_counter()
    with ReplayCache(":memory:") as cache:
        first = replay_trace(trace, teachers, cache=cache).report
        again = replay_trace(trace, teachers, cache=cache).report
    assert time.perf_counter() - started < 20
    assert (first.steps_replayed, first.calls, first.cost_usd, first.teacher_errors) == (2, 4, 0, 0)
    assert (again.calls, again.cache_hits) == (0, 4)
    prompt = [chat_message(trace.messages[0])]
    replies = [asyncio.run(teacher.complete(prompt)) for teacher in teachers for _ in range(2)]
    assert replies[0].content == replies[1].content and replies[2].content == replies[3].content
    assert replies[0].prompt_tokens == 8 and 0 < replies[0].completion_tokens <= 6 and replies[0].cost_usd == 0
