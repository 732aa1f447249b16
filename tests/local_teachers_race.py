"""Replays a hand-made trace with several local HF teachers at once in a fresh interpreter, where transformers
is not imported yet: the setting in which concurrent lazy imports and model loads used to race.

Run as `python local_teachers_race.py MODEL TOKENIZER ROUNDS`: each round makes four new teachers on the saved
model and replays four steps at once; the one line printed is a JSON list, per round, of the teacher errors,
the answers and how many distinct model objects the round's teachers hold.
"""

from __future__ import annotations

import json
import sys

from composer_core.replay.local_teacher import LocalHFTeacher
from composer_core.replay.runner import ReplayOptions, replay_trace
from composer_core.traces.contracts import Message, Provenance, Trace

TEACHERS = 4
STEPS = 4


def hand_trace() -> Trace:
    where = Provenance(format="hand", file="inline")
    messages = []
    for number in range(STEPS):
        messages += [Message(role="user", content=f"add {number} plus one", provenance=where),
                     Message(role="assistant", content="two", provenance=where)]
    return Trace(trace_id="hand", format="hand", source="inline", messages=messages)


def one_round(model: str, tokenizer: str) -> dict[str, object]:
    teachers = [LocalHFTeacher(f"teacher-{index}", model, tokenizer_path=tokenizer, max_new_tokens=3,
                               temperature=float(index), seed=index) for index in range(TEACHERS)]
    report = replay_trace(hand_trace(), teachers, ReplayOptions(max_concurrent_steps=STEPS)).report
    return {"errors": [failure.error for failure in report.errors], "calls": report.calls,
            "models": len({id(teacher._model) for teacher in teachers})}


def main() -> None:
    model, tokenizer, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(json.dumps([one_round(model, tokenizer) for _ in range(rounds)]))


if __name__ == "__main__":
    main()
