"""The arithmetic task: rewards and feedback, parsing, disjoint deterministic splits, hints, TRL reward functions."""

import pytest

from composer_core.tasks.arithmetic import (
    OPERANDS,
    Problem,
    RewardResult,
    hint_for,
    make_problems,
    parse_answer,
    reward_function,
    score,
    split_of,
)

PROBLEM = Problem(47, 38)


def test_problem_is_a_chat_prompt_with_its_sum_and_hint() -> None:
    assert PROBLEM.messages == [{"role": "user", "content": "What is 47 + 38?"}]
    assert PROBLEM.answer == 85
    assert PROBLEM.hint == hint_for(PROBLEM)
    assert PROBLEM.row() == {"prompt": PROBLEM.messages, "answer": 85, "hint": PROBLEM.hint}


@pytest.mark.parametrize("completion", ["85", " 85", "47 + 38 = 85", "The sum is 85.", "80? no: 85"])
def test_correct_completions_get_full_reward_and_no_feedback(completion: str) -> None:
    assert score(PROBLEM, completion) == RewardResult(1.0, None)


@pytest.mark.parametrize(("completion", "feedback"), [
    ("84", "Your answer 84 is 1 too low; the correct answer is 85."),
    ("95", "Your answer 95 is 10 too high; the correct answer is 85."),
    ("85 or 86", "Your answer 86 is 1 too high; the correct answer is 85."),
    ("-85", "Your answer -85 is 170 too low; the correct answer is 85."),
])
def test_wrong_answers_get_no_reward_and_feedback_stating_the_error(completion: str, feedback: str) -> None:
    assert score(PROBLEM, completion) == RewardResult(0.0, feedback)


@pytest.mark.parametrize("completion", ["", "eighty-five", "I don't know."])
def test_unparseable_completions_get_no_reward_and_feedback(completion: str) -> None:
    assert score(PROBLEM, completion) == RewardResult(
        0.0, "Your reply contains no number; the correct answer is 85.")


def test_score_accepts_a_bare_answer() -> None:
    assert score(85, "85") == score(PROBLEM, "85")
    assert score(85, "83") == score(PROBLEM, "83")


def test_parse_answer_takes_the_last_integer() -> None:
    assert parse_answer("3 + 4 = 7") == 7
    assert parse_answer("1,085") == 85
    assert parse_answer("no digits") is None


def test_splits_are_disjoint_and_cover_every_pair() -> None:
    train = set(make_problems(7000, seed=0, split="train"))
    evaluation = set(make_problems(2000, seed=0, split="eval"))
    assert not train & evaluation
    assert len(train) + len(evaluation) == len(OPERANDS) ** 2
    assert all(split_of(problem.a, problem.b) == "eval" for problem in evaluation)


def test_problems_are_distinct_up_to_the_split_size_then_repeat() -> None:
    problems = make_problems(2000, seed=1, split="eval")
    pool_size = len(set(problems))
    assert len(set(problems[:pool_size])) == pool_size
    assert set(problems[pool_size:]) <= set(problems[:pool_size])


def test_problems_are_deterministic_per_seed() -> None:
    assert make_problems(50, seed=3) == make_problems(50, seed=3)
    assert make_problems(50, seed=3) != make_problems(50, seed=4)


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="split"):
        make_problems(1, seed=0, split="test")  # type: ignore[arg-type]


def test_hints_state_the_ones_digit_carry_without_the_sum() -> None:
    assert hint_for(PROBLEM) == "The ones digits add up to 7 + 8 = 15, so write 5 and carry 1."
    assert hint_for(Problem(42, 31)) == "The ones digits add up to 2 + 1 = 3, so there is no carry."
    for problem in make_problems(200, seed=0, split="eval"):
        assert str(problem.answer) not in problem.hint


def test_reward_function_reads_the_answer_column_of_standard_and_conversational_completions() -> None:
    reward = reward_function()
    prompts = [PROBLEM.messages] * 3
    completions = [[{"role": "assistant", "content": "85"}], [{"role": "assistant", "content": "84"}], []]
    assert reward(prompts, completions, answer=[85, 85, 85]) == [1.0, 0.0, 0.0]
    assert reward(["p", "q"], ["85", "nothing"], answer=[85, 85], hint=["h", "h"]) == [1.0, 0.0]


def test_reward_function_with_feedback_returns_results() -> None:
    results = reward_function(with_feedback=True)(["p", "q"], ["85", "86"], answer=[85, 85])
    assert results == [score(85, "85"), score(85, "86")]


def test_reward_function_names_a_missing_column() -> None:
    with pytest.raises(KeyError, match="total"):
        reward_function("total")(["p"], ["85"], answer=[85])
