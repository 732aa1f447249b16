"""VeRL reward function for the arithmetic task (`reward.custom_reward_function.path=<this file>`).

Returns the score and, for wrong answers, textual feedback: the composer trainer hands it to the
self-distillation teacher (VeRL keeps a reward function's extra outputs with each sample).
"""

from __future__ import annotations

from typing import Any

from composer_core.tasks.arithmetic import score


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None,
                  **_: Any) -> dict[str, Any]:
    """VeRL's reward-function contract; `ground_truth` is the correct sum."""
    result = score(int(ground_truth), solution_str)
    return {"score": result.reward, "feedback": result.feedback or ""}
