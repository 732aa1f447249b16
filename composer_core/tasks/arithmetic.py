"""Two-digit addition: a synthetic task with a verifiable reward, textual feedback on failures, and hints.

A problem asks "What is 47 + 38?" in a one-message chat prompt; the expected completion is the sum, "85".
Carries make it hard for a small model: it writes the most significant digit first, so it must work out the
carry from the ones digits before it writes the tens digit.

Parsing: the model's answer is the LAST integer in its completion (an optional minus sign and a run of
digits), so "47 + 38 = 85" and "The sum is 85." both read as 85. A comma splits numbers ("1,085" reads as
85); a completion with no digit at all is unparseable and scores 0.

Reward: 1.0 when the answer equals the sum, else 0.0. Feedback on a failure states the error and the
correct sum: the verifier knows it, and a self-distillation teacher that sees it can then score every digit
of the student's answer. A hint gives less: the ones-digit sum and whether it carries.

Train and eval prompts are disjoint: each ordered operand pair belongs to exactly one split, by a hash.
"""

from __future__ import annotations

import itertools
import random
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

Split = Literal["train", "eval"]
ChatMessage = dict[str, str]
OPERANDS = range(10, 100)
EVAL_BUCKETS = 5  # one operand pair in five belongs to the eval split
INTEGER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Problem:
    """One addition problem, `a + b`."""

    a: int
    b: int

    @property
    def messages(self) -> list[ChatMessage]:
        """The prompt as chat messages (a single user turn)."""
        return [{"role": "user", "content": f"What is {self.a} + {self.b}?"}]

    @property
    def answer(self) -> int:
        return self.a + self.b

    @property
    def hint(self) -> str:
        return hint_for(self)

    def row(self) -> dict[str, Any]:
        """A dataset row for TRL: a conversational `prompt`, the `answer` the reward reads, and the `hint`."""
        return {"prompt": self.messages, "answer": self.answer, "hint": self.hint}


@dataclass(frozen=True)
class RewardResult:
    """A completion's reward in [0, 1] and, when it is wrong, textual feedback saying how."""

    reward: float
    feedback: str | None


def split_of(a: int, b: int) -> Split:
    """The split an operand pair belongs to: fixed by a hash, so that the splits never share a prompt."""
    return "eval" if zlib.crc32(f"{a}+{b}".encode()) % EVAL_BUCKETS == 0 else "train"


def make_problems(n: int, seed: int, split: Split = "train") -> list[Problem]:
    """`n` problems of one split in a seeded random order. They are distinct up to the split's size (about
    6,500 train and 1,600 eval pairs); beyond it the split repeats, reshuffled for each pass."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    pool = [Problem(a, b) for a in OPERANDS for b in OPERANDS if split_of(a, b) == split]
    return list(itertools.islice(passes(pool, random.Random(seed)), n))


def passes(pool: list[Problem], rng: random.Random) -> Iterator[Problem]:
    """Endless shuffled passes over `pool`."""
    while True:
        order = pool[:]
        rng.shuffle(order)
        yield from order


def hint_for(problem: Problem) -> str:
    """A hint that helps without giving the sum away: the ones-digit sum and whether it carries. The text has
    no "Hint:" label: teacher-context builders add their own."""
    ones_a, ones_b = problem.a % 10, problem.b % 10
    ones = ones_a + ones_b
    if ones >= 10:
        return f"The ones digits add up to {ones_a} + {ones_b} = {ones}, so write {ones - 10} and carry 1."
    return f"The ones digits add up to {ones_a} + {ones_b} = {ones}, so there is no carry."


def parse_answer(completion: str) -> int | None:
    """The last integer in `completion`, or None when it has none."""
    numbers = INTEGER.findall(completion)
    return int(numbers[-1]) if numbers else None


def score(problem_or_answer: Problem | int, completion: str) -> RewardResult:
    """Reward 1.0 and no feedback for the right sum; reward 0.0 and feedback naming the error otherwise."""
    answer = problem_or_answer.answer if isinstance(problem_or_answer, Problem) else problem_or_answer
    given = parse_answer(completion)
    if given is None:
        return RewardResult(0.0, f"Your reply contains no number; the correct answer is {answer}.")
    if given == answer:
        return RewardResult(1.0, None)
    direction = "low" if given < answer else "high"
    return RewardResult(0.0, f"Your answer {given} is {abs(given - answer)} too {direction}; "
                             f"the correct answer is {answer}.")


def completion_text(completion: str | list[ChatMessage]) -> str:
    """A TRL completion as text: standard completions are strings, conversational ones lists of messages."""
    if isinstance(completion, str):
        return completion
    return completion[-1]["content"] if completion else ""


def reward_function(answer_column: str = "answer", *, with_feedback: bool = False) -> Callable[..., list[Any]]:
    """A TRL reward function, `f(prompts, completions, **columns)`, reading the correct sums from the dataset
    column `answer_column`. It returns one float per completion, or with `with_feedback` one `RewardResult`
    (for trainers that pass feedback on to a self-distillation teacher, such as composer_trl's)."""

    def arithmetic_reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[Any]:
        if answer_column not in columns:
            raise KeyError(f"the reward needs the dataset column {answer_column!r}; columns: {sorted(columns)}")
        results = [score(int(answer), completion_text(completion))
                   for completion, answer in zip(completions, columns[answer_column], strict=True)]
        return results if with_feedback else [result.reward for result in results]

    return arithmetic_reward


# `reward: composer_core.tasks.arithmetic:feedback_reward` scores a data set of this task's rows (the `answer`
# column) with feedback for the self-distillation teacher, as the built-in job does (the evidence ladder's files).
feedback_reward = reward_function(with_feedback=True)
