"""The composer GRPO recipe through torchtune's own launcher, `tune run`, on the embedded model (CPU).

One process trains and writes checkpoints that torchtune's checkpointer loads back into the model builder; two
processes (torchrun, gloo) with the same global batch train the same weights as one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchtune")

import torch
from omegaconf import OmegaConf
from torchtune import config as tune_config
from torchtune import training

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = ROOT / "adapters"
RECIPE = "composer_torchtune/recipes/composer_grpo.py"  # tune run resolves it as an importable module
CONFIG = ADAPTERS / "composer_torchtune" / "recipes" / "configs" / "embedded_arithmetic.yaml"
TUNE = Path(sys.executable).with_name("tune")
TINY = ["prompts_per_step=2", "num_generations=4", "max_generated_tokens=6", "dataset.size=8", "eval_dataset.size=4"]


def tune_run(output: Path, *overrides: str, processes: int = 1) -> subprocess.CompletedProcess[str]:
    """`tune run [--nproc_per_node N] <recipe> --config <shipped yaml> output_dir=... overrides`."""
    launcher = [] if processes == 1 else ["--nproc_per_node", str(processes)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ADAPTERS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(TUNE), "run", *launcher, RECIPE, "--config", str(CONFIG), f"output_dir={output}",
                           *TINY, *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def metrics(output: Path) -> list[dict[str, float]]:
    """The training steps' rows of metrics.jsonl (the eval rows, before and after, hold only eval_reward)."""
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "loss" in row]


def checkpoint_weights(folder: Path, files: list[str], scratch: Path) -> dict[str, torch.Tensor]:
    """A Hugging Face folder's weights through torchtune's checkpointer, in torchtune's names."""
    checkpointer = training.FullModelHFCheckpointer(checkpoint_dir=str(folder), checkpoint_files=files,
                                                    model_type="QWEN2", output_dir=str(scratch))
    return checkpointer.load_checkpoint()[training.MODEL_KEY]


def load_checkpoint(folder: Path, scratch: Path) -> torch.nn.Module:
    """A saved step loaded into the YAML's model builder (strict: every weight present, none extra)."""
    model = tune_config.instantiate(OmegaConf.load(CONFIG).model)
    model.load_state_dict(checkpoint_weights(folder, ["model-00001-of-00001.safetensors"], scratch), strict=True)
    return model


def embedded_weights(scratch: Path) -> dict[str, torch.Tensor]:
    from composer_torchtune.model_folder import embedded_model

    return checkpoint_weights(embedded_model(), ["model.safetensors"], scratch)


def test_one_process_trains_and_its_checkpoints_load_back(tmp_path: Path) -> None:
    out = tmp_path / "run"
    tune_run(out, "num_steps=2", "save_every_n_steps=1")
    rows = metrics(out)
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        assert all(isinstance(row[key], float) for key in ("loss", "reward_mean", "grad_norm", "distill/loss"))
        assert row["self_distillation/reprompt_fraction"] > 0  # the teacher saw hints/feedback/demonstrations
    before = embedded_weights(tmp_path / "scratch0")
    for step in (1, 2):
        model = load_checkpoint(out / "checkpoints" / f"epoch_{step}", tmp_path / f"scratch{step}")
        moved = max((model.state_dict()[key] - value).abs().max().item() for key, value in before.items())
        assert moved > 0, f"step {step}'s checkpoint holds the initial weights"
        logits = model(torch.tensor([[1, 5, 61, 78, 71, 90, 2, 6]]))
        assert torch.isfinite(logits).all()
    assert (out / "checkpoints" / "epoch_2" / "config.json").is_file()  # a Hugging Face folder, as it came in


def test_two_processes_train_the_same_weights_as_one(tmp_path: Path) -> None:
    # SGD: Adam's normalisation turns float-rounding differences of near-zero gradients into lr-sized steps
    steps = ["num_steps=3", "optimizer._component_=torch.optim.SGD", "optimizer.lr=0.05"]
    one, two = tmp_path / "one", tmp_path / "two"
    tune_run(one, *steps)
    log = tune_run(two, *steps, processes=2)
    assert "2 process(es), 1 prompt(s) x 4 per rank" in log.stdout + log.stderr
    for a, b in zip(metrics(one), metrics(two), strict=True):
        for key in ("loss", "reward_mean", "reward_std", "grad_norm", "distill/loss", "response_length"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    first = load_checkpoint(one / "checkpoints" / "epoch_3", tmp_path / "s1").state_dict()
    second = load_checkpoint(two / "checkpoints" / "epoch_3", tmp_path / "s2").state_dict()
    initial = embedded_weights(tmp_path / "s0")
    difference = max((first[key] - second[key]).abs().max().item() for key in first)
    moved = max((first[key] - initial[key]).abs().max().item() for key in first)
    assert difference < 1e-5 < moved / 100, (difference, moved)
