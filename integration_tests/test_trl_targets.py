"""`data.targets` through `composer-core train` on the embedded model: the real shared agent traces are ingested and
turned into self-distillation targets by the CLI, then trained on channel 2 on-policy (alone, and mixed with the
built-in task) and off-policy, as subprocesses, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("trl")

from shared_data import TRACES

from composer_core.config import DEFAULT_JOB, ComposerConfig
from composer_core.errors import ConfigError
from composer_trl.defaults import EMBEDDED_MODEL

pytestmark = pytest.mark.skipif(not TRACES.is_dir(), reason=f"the shared trace samples are not at {TRACES}")
FORMATS = ("claude_code", "mini_swe_agent", "swe_agent")  # the small samples with error turns
# 128 prompt tokens: the contexts are cut to it (their system message kept), or skipped where that message fills it
SMALL = ["run.max_steps=2", "run.num_generations=2", "run.max_completion_length=6", "data.eval_size=4",
         "run.max_prompt_length=128"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "composer_core.cli", *args], capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture(scope="module")
def targets_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TARGETS.jsonl from the real traces, through `composer-core traces ingest` and `traces targets`."""
    folder = tmp_path_factory.mktemp("targets")
    ingested = cli("traces", "ingest", *(str(TRACES / name) for name in FORMATS), "--out", str(folder / "t.jsonl"))
    assert ingested.returncode == 0, ingested.stderr
    made = cli("traces", "targets", str(folder / "t.jsonl"), "--out", str(folder / "targets.jsonl"), "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout.strip().splitlines()[-1])["targets"] > 5
    return folder / "targets.jsonl"


def train(out: Path, *overrides: str) -> tuple[dict, list[dict]]:
    result = cli("train", "--output-dir", str(out), *SMALL, *overrides)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, [record for record in metrics if "composer/loss/total" in record]


def assert_every_target_accounted(summary: dict, targets_file: Path) -> None:
    report = summary["targets"]
    assert report["total"] == len(targets_file.read_text().splitlines())
    assert report["used"] + sum(report["skipped"].values()) == report["total"]
    assert report["used"] > 0


def test_on_policy_targets_alone_train_channel_two_and_never_the_policy(targets_file: Path, tmp_path: Path) -> None:
    summary, steps = train(tmp_path / "run", f"data.targets={targets_file}", "run.prompts_per_step=3")
    assert summary["steps"] == 2 and len(steps) == 2
    assert_every_target_accounted(summary, targets_file)
    report = summary["targets"]
    assert report["prompt_limit"] == 128 and report["skipped"] == {"system_message_fills_prompt_limit": 8}
    assert report["truncated"]["student_context"] == 4  # one claude-code context is shorter
    for step in steps:
        assert step["composer/targets/rows"] == 3 * 2  # every row of the step is a target row
        assert step["composer/targets/coverage"] > 0 and step["composer/distill/coverage"] > 0
        assert step["composer/policy/tokens"] == 0  # no reward, zero advantage, outside the policy mask
        assert step["composer/policy/loss"] == 0
    assert report["trained"]["rows"] == sum(step["composer/targets/rows"] for step in steps)
    assert report["trained"]["sd_tokens"] == sum(step["composer/targets/sd_tokens"] for step in steps)


def test_on_policy_targets_mixed_with_the_builtin_task(targets_file: Path, tmp_path: Path) -> None:
    # 2 arithmetic rows plus the 5 targets that fit 128 prompt tokens: one step holds every row of the data set
    summary, steps = train(tmp_path / "run", f"data.targets={targets_file}", "data.task=arithmetic",
                           "data.train_size=2", "run.prompts_per_step=7")
    assert_every_target_accounted(summary, targets_file)
    assert summary["targets"]["used"] == 5
    assert summary["eval_reward_after"] is not None  # the built-in task's held-out eval still runs
    for step in steps:
        rows = 7 * 2
        assert step["composer/targets/rows"] == 5 * 2 and step["composer/targets/coverage"] > 0
        # the policy channel counts exactly the arithmetic rows' tokens: all tokens minus the target rows'
        all_tokens = step["completions/mean_length"] * rows
        assert step["composer/policy/tokens"] == pytest.approx(all_tokens - step["composer/targets/completion_tokens"],
                                                               abs=1e-3)
        assert step["composer/policy/tokens"] > 0


def test_off_policy_targets_distil_the_trace_message_every_step(targets_file: Path, tmp_path: Path) -> None:
    summary, steps = train(tmp_path / "run", f"data.targets={targets_file}", "data.targets_mode=off_policy",
                           "data.task=arithmetic", "data.train_size=4", "run.prompts_per_step=2")
    assert_every_target_accounted(summary, targets_file)
    for step in steps:
        assert step["composer/targets/off_policy/tokens"] == 2 * 6  # 2 targets a step, 6 message tokens each
        assert step["composer/targets/off_policy/loss"] > 0
        assert "composer/targets/rows" not in step  # no target rows: the RL rows are the task's
    trained = summary["targets"]["trained"]
    assert trained == {"off_policy_targets": 4, "off_policy_tokens": 24}
    assert summary["targets"]["truncated"]["target_message"] == summary["targets"]["used"]


# ---- bad targets files: clear errors, or counted skips -------------------------------------------------------------

def read(path: Path, *overrides: str) -> tuple[list, dict]:
    from transformers import AutoTokenizer

    from composer_trl.targets_data import read_targets

    config = ComposerConfig.from_mapping(DEFAULT_JOB, overrides=[f"data.targets={path}", "data.task=arithmetic",
                                                                 *overrides])
    targets, report = read_targets(config, AutoTokenizer.from_pretrained(EMBEDDED_MODEL), 1024)
    return targets, report.summary()


def test_empty_missing_and_wrong_files_are_named(targets_file: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="holds no targets: write them with `composer-core traces targets"):
        read(empty)
    with pytest.raises(ConfigError, match="missing.jsonl"):
        read(tmp_path / "missing.jsonl")
    traces = targets_file.parent / "t.jsonl"
    with pytest.raises(ConfigError, match="looks like traces"):
        read(traces)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"pair_id": "p", "prompt": [], "chosen": {}, "rejected": {}}) + "\n")
    with pytest.raises(ConfigError, match="looks like preference pairs"):
        read(pairs)


def test_flagged_and_unfittable_targets_are_counted_skips(targets_file: Path, tmp_path: Path) -> None:
    lines = targets_file.read_text().splitlines()
    flagged = tmp_path / "flagged.jsonl"
    flagged.write_text("".join(json.dumps({**json.loads(line), "empty_target": True}) + "\n" for line in lines[:2])
                       + "\n".join(lines[2:]) + "\n")
    targets, summary = read(flagged, "data.targets_mode=off_policy")
    assert summary["skipped"]["empty_target"] == 2 and summary["flagged_empty_target"] == 2
    assert len(targets) == summary["used"] == len(lines) - sum(summary["skipped"].values())
    _, on_policy = read(flagged)  # on-policy the student writes its own turn: the trace's message is not needed
    assert "empty_target" not in on_policy["skipped"] and on_policy["flagged_empty_target"] == 2
    every = tmp_path / "every.jsonl"
    every.write_text("".join(json.dumps({**json.loads(line), "empty_target": True}) + "\n" for line in lines))
    with pytest.raises(ConfigError, match=r"none of its \d+ targets can be trained on \(skipped: \{'empty_target'"):
        read(every, "data.targets_mode=off_policy")


def test_long_contexts_lose_their_oldest_tokens_but_keep_the_system_message(targets_file: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL)
    targets, summary = read(targets_file)
    # the embedded model has 1024 positions, 16 of them for the completion; the swe-agent system prompt alone is
    # longer (those targets are skipped, by name), mini-swe-agent's fits and is kept ahead of the newest tokens
    assert summary["prompt_limit"] == 1024 - 16 and summary["skipped"] == {"system_message_fills_prompt_limit": 4}
    with_system = [target for target in targets if target.student_messages[0]["role"] == "system"]
    assert with_system and summary["truncated"]["student_context"] >= len(with_system)
    for target in with_system:
        text = tokenizer.decode(target.student_prompt)
        assert len(target.student_prompt) == 1024 - 16
        assert text.startswith(f"<bos><|system|>{target.student_messages[0]['content']}<eos>")
        assert text.endswith("<|assistant|>")
        assert tokenizer.decode(target.teacher_prompt).endswith("<eos><|assistant|>")
        assert "Hint: " in tokenizer.decode(target.teacher_prompt)


def test_a_bad_targets_file_is_one_line_exit_2(tmp_path: Path) -> None:
    result = cli("train", "--output-dir", str(tmp_path / "run"), *SMALL, f"data.targets={tmp_path / 'none.jsonl'}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "none.jsonl" in result.stderr
    assert not (tmp_path / "run").exists()  # refused before the output folder is made
    assert Counter(line.startswith("composer-core: ") for line in result.stderr.strip().splitlines())[True] == 1


def test_target_rows_join_chat_prompt_data_and_refuse_plain_string_prompts(targets_file: Path) -> None:
    from datasets import Dataset

    from composer_trl.target_rows import TARGET_COLUMN, with_target_rows

    targets, _ = read(targets_file)
    rl = Dataset.from_list([{"prompt": [{"role": "user", "content": "1+1"}], "answer": 2}])
    joined = with_target_rows(rl, targets)
    assert len(joined) == 1 + len(targets) and joined[0][TARGET_COLUMN] is None and joined[0]["answer"] == 2
    assert joined[1][TARGET_COLUMN] == 0 and joined[1]["answer"] is None
    assert [message["role"] for message in joined[1]["prompt"]] == [m["role"] for m in targets[0].student_messages]
    with pytest.raises(ConfigError, match="prompts are plain strings"):
        with_target_rows(Dataset.from_list([{"prompt": "1+1", "answer": 2}]), targets)
