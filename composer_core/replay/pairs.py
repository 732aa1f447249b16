"""Preference pairs from trace replay: the training data of channel 3 (trace-replay DPO).

Channel 3 is composer-core's own research channel, NOT part of Cursor's Composer recipe. A pair holds one
trace prefix, the next action chosen by the teachers' majority (or the trace's own verified action) and one
rejected action, with its provenance: the teachers on each side, the votes, cost, latency and where in the
source trace the step came from. Pairs are written as JSONL or turned into a Hugging Face dataset in TRL's
conversational preference format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from composer_core.errors import ConfigError
from composer_core.files import atomic_output
from composer_core.traces.contracts import Contract, Provenance
from composer_core.traces.store import read_records

if TYPE_CHECKING:
    import datasets

CHANNEL = "trace_replay_dpo"
TRACE_VOTER = "trace"  # stands for the trace itself in chosen_teachers / rejected_teachers


class PreferencePair(Contract):
    """One chosen / rejected pair of next actions after the same prefix (channel 3 data, see module doc).

    step: index in the trace's messages of the replayed assistant message; prompt: the messages before it,
    as sent to the teachers; chosen / rejected: assistant messages (tool-call arguments as JSON text);
    chosen_by: "majority" (a strict majority of the teachers that answered) or "verified_trace" (the trace's
    own action, whose tool results came back without failure); votes: action key -> teachers voting for it;
    agreement: share of the answering teachers that voted for the chosen action; cost_usd: what the step's
    teacher calls cost when made (shared by the pairs of one step); latency_s: the slowest of those calls.
    """

    channel: Literal["trace_replay_dpo"] = CHANNEL
    pair_id: str
    trace_id: str
    step: int
    prompt: list[dict[str, Any]]
    chosen: dict[str, Any]
    rejected: dict[str, Any]
    chosen_action: str
    rejected_action: str
    chosen_by: Literal["majority", "verified_trace"]
    chosen_teachers: list[str]
    rejected_teachers: list[str]
    votes: dict[str, int]
    agreement: float
    cost_usd: float
    latency_s: float
    provenance: Provenance


def write_pairs_jsonl(pairs: Iterable[PreferencePair], path: str | os.PathLike[str],
                      inputs: Iterable[str | os.PathLike[str]] = ()) -> int:
    """Write one pair per line, through a temporary file renamed into place when complete (an interrupted write
    leaves the previous file); `inputs` are files the caller read, which `path` must not be. Returns the count."""
    count = 0
    with atomic_output(path, inputs, "pairs file") as stream:
        for pair in pairs:
            stream.write(pair.model_dump_json() + "\n")
            count += 1
    return count


def read_pairs_jsonl(path: str | os.PathLike[str]) -> list[PreferencePair]:
    """Read pairs written by `write_pairs_jsonl`, every line validated against the contract. A missing file, a
    file of another kind (traces, targets) or a file without pairs is a ConfigError naming it: training on it
    would silently train channel 3 on nothing."""
    pairs = list(read_records(path, PreferencePair, "preference pairs file"))
    if not pairs:
        raise ConfigError(f"preference pairs file {path} holds no pairs; run `composer-core traces replay` to make "
                          "some, or leave the pairs out")
    return pairs


def trl_message(message: dict[str, Any]) -> dict[str, Any]:
    """A chat message with the fixed keys of the dataset schema: role, content, tool_calls, tool_call_id."""
    return {"role": message["role"], "content": message.get("content") or "",
            "tool_calls": message.get("tool_calls") or None, "tool_call_id": message.get("tool_call_id")}


def pairs_to_dataset(pairs: Iterable[PreferencePair]) -> datasets.Dataset:
    """A `datasets.Dataset` in TRL's conversational preference format: `prompt`, `chosen` and `rejected` are
    lists of messages (chosen / rejected hold the one assistant message), plus provenance columns; `votes` is
    JSON text because its keys differ from pair to pair."""
    import datasets  # imported here: composer_core must import without the optional backends installed

    rows = [{"prompt": [trl_message(m) for m in pair.prompt], "chosen": [trl_message(pair.chosen)],
             "rejected": [trl_message(pair.rejected)], "pair_id": pair.pair_id, "trace_id": pair.trace_id,
             "step": pair.step, "chosen_by": pair.chosen_by, "chosen_teachers": pair.chosen_teachers,
             "rejected_teachers": pair.rejected_teachers, "votes": json.dumps(pair.votes, ensure_ascii=False),
             "agreement": pair.agreement, "cost_usd": pair.cost_usd, "latency_s": pair.latency_s,
             "source_format": pair.provenance.format, "source_file": pair.provenance.file,
             "source_line": pair.provenance.line, "source_record": pair.provenance.record,
             "channel": pair.channel} for pair in pairs]
    features = _features(datasets)
    return datasets.Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)


def _features(datasets: Any) -> Any:
    text, number = datasets.Value("string"), datasets.Value("float64")
    call = {"id": text, "type": text, "function": {"name": text, "arguments": text}}
    conversation = [{"role": text, "content": text, "tool_calls": [call], "tool_call_id": text}]
    return datasets.Features({
        "prompt": conversation, "chosen": conversation, "rejected": conversation, "pair_id": text,
        "trace_id": text, "step": datasets.Value("int64"), "chosen_by": text, "chosen_teachers": [text],
        "rejected_teachers": [text], "votes": text, "agreement": number, "cost_usd": number, "latency_s": number,
        "source_format": text, "source_file": text, "source_line": datasets.Value("int64"), "source_record": text,
        "channel": text})
