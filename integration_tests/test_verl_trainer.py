"""The composer trainer's teacher pass on CPU, with VeRL's real TransferQueue in a local Ray instance.

The trainer is VeRL's V1 trainer class built from VeRL's own composed config; only the actor worker group is
replaced (VeRL's engines need a GPU): its `compute_teacher_topk` goes through VeRL's own TransferQueue bridge
(`tqbridge`, which reads the batch and writes the outputs back) and runs a tiny model on each sample where
VeRL's engine would run the actor, calling the composer loss's logits processor as the engine does. After the
pass, the training partition must hold the teacher's top-K for every sample, computed on the teacher contexts
(a successful sibling's answer, a dataset hint), and a distillation mask on exactly the rows with a context.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

verl = pytest.importorskip("verl")
ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")
hydra = pytest.importorskip("hydra")
pytest.importorskip("transformers")

from tensordict import TensorDict  # noqa: E402
from tiny_models import build_model  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass  # noqa: E402
from verl.utils.tensordict_utils import list_of_dict_to_tensordict  # noqa: E402
from verl.utils.transferqueue_utils import tqbridge  # noqa: E402
from verl.workers.utils.padding import no_padding_2_padding  # noqa: E402

from composer_core.distill import distill_per_token_precomputed, teacher_topk  # noqa: E402
from composer_core.selfteach import RepromptSettings, build_teacher_contexts, template_ids  # noqa: E402
from composer_verl.composite_loss import DISTILL_MASK, TEACHER_IDS, TEACHER_LOG_PROBS, ComposerActorLoss  # noqa: E402
from composer_verl.trainer import TEACHER_PARTITION  # noqa: E402

pytestmark = pytest.mark.backend("verl")

TOP_K = 4
OVERRIDES = ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
             "actor_rollout_ref.actor.policy_loss.loss_mode=composer_dr_grpo", "trainer.use_v1=true",
             "trainer.v1.trainer_mode=composer", "+composer.distill.weight=0.5", "+composer.distill.teacher=live",
             f"+composer.distill.top_k={TOP_K}"]
SUPPORTS = {"student_topk": ["+composer.distill.support=student_topk"],
            "teacher_topk": ["+composer.distill.support=teacher_topk"],
            "sampled_token": ["+composer.distill.support=sampled_token", "+composer.distill.alpha=1.0"]}
QUESTION = [{"role": "user", "content": "what is two plus two"}]
OTHER = [{"role": "user", "content": "which test fail"}]
# (prompt messages, response text, reward, uid, hint in the dataset row, feedback from the reward function)
SAMPLES = [(QUESTION, "the answer is four", 1.0, "q1", None, None),
           (QUESTION, "the answer is five", 0.0, "q1", None, "five is wrong"),
           (OTHER, "the test pass", 0.0, "q2", None, "the test fail"),
           (OTHER, "no", 0.0, "q2", "read the error", None),
           (OTHER, "yes", 0.0, "q2", None, None)]


@pytest.fixture(scope="module")
def transfer_queue() -> Any:
    """A local Ray (logical CPUs above the physical count: TransferQueue's actors each reserve one) and TQ."""
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False)
    tq.init()
    yield tq
    tq.close()
    ray.shutdown()


class CPUActorGroup:
    """The actor worker group's teacher forward: VeRL's TQ bridge, a tiny model where the engine runs the actor."""

    def __init__(self, model: torch.nn.Module, loss: ComposerActorLoss) -> None:
        self.model, self.loss = model, loss

    @tqbridge()
    def compute_teacher_topk(self, data: TensorDict) -> TensorDict:
        """Like the engine: packed logits to the logits processor, plus `log_probs` of each next token."""
        offsets = data["input_ids"].offsets()
        with torch.no_grad():
            logits = torch.cat([self.model(input_ids=ids.unsqueeze(0)).logits[0]
                                for ids in data["input_ids"].unbind()])
        labels = data["input_ids"].values().roll(-1)
        outputs = {"log_probs": torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1),
                   **{key: value.squeeze(0) for key, value in
                      self.loss(student_logits=logits.unsqueeze(0), data=data).items()}}
        return TensorDict({key: torch.nested.nested_tensor_from_jagged(value, offsets)
                           for key, value in outputs.items()}, batch_size=[len(offsets) - 1])

    # VeRL's compute_log_prob is the same forward without the teacher's weights (a live teacher has none)
    compute_log_prob = compute_teacher_topk


def training_batch(tokenizer: Any) -> Any:
    """The samples as VeRL's agent loop stores them in the training partition."""
    fields, tags, keys = [], [], []
    for index, (messages, response, reward, uid, hint, feedback) in enumerate(SAMPLES):
        prompt = torch.tensor(template_ids(tokenizer, messages, {}))
        response_ids = torch.tensor(tokenizer(response, add_special_tokens=False)["input_ids"])
        scores = torch.zeros(len(response_ids))
        scores[-1] = reward
        fields.append({"prompts": prompt, "responses": response_ids, "input_ids": torch.cat([prompt, response_ids]),
                       "response_mask": torch.ones(len(response_ids), dtype=torch.long), "rm_scores": scores,
                       "uid": uid, "raw_prompt": messages, "extra_info": {"hint": hint} if hint else {},
                       "extra_fields": {"reward_extra_info": {"feedback": feedback}}})
        keys.append(f"{uid}_0_{index}")
        tags.append({"seq_len": len(prompt) + len(response_ids)})
    return tq.kv_batch_put(keys=keys, partition_id="train", fields=list_of_dict_to_tensordict(fields), tags=tags)


def expected_teacher(tokenizer: Any, model: torch.nn.Module, support: str
                     ) -> list[tuple[torch.Tensor, torch.Tensor, bool]]:
    """Independently: each sample's teacher context, the model on it, the top-K predicting each response token
    (student_topk: the student's own top-K there and the teacher's log-probs at those ids; sampled_token: the
    response token and its log-prob)."""
    contexts = build_teacher_contexts([s[0] for s in SAMPLES], [s[1] for s in SAMPLES], [s[3] for s in SAMPLES],
                                      [s[2] for s in SAMPLES], hints=[s[4] for s in SAMPLES],
                                      feedback=[s[5] for s in SAMPLES],
                                      settings=RepromptSettings()).contexts
    expected = []
    for (messages, response, *_), context in zip(SAMPLES, contexts, strict=True):
        prompt = template_ids(tokenizer, context.messages or messages, {})
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + response_ids])).logits[0]
        predicting = logits[len(prompt) - 1: len(prompt) - 1 + len(response_ids)]
        if support == "student_topk":
            own_prompt = template_ids(tokenizer, messages, {})
            with torch.no_grad():
                own = model(input_ids=torch.tensor([own_prompt + response_ids])).logits[0]
            ids = own[len(own_prompt) - 1: len(own_prompt) - 1 + len(response_ids)].topk(TOP_K, dim=-1).indices
            values = torch.log_softmax(predicting, -1).gather(-1, ids)
        elif support == "sampled_token":
            ids = torch.tensor(response_ids).unsqueeze(-1)
            values = torch.log_softmax(predicting, -1).gather(-1, ids)
        else:
            ids, values = teacher_topk(predicting, TOP_K)
        expected.append((ids, values, context.messages is not None))
    return expected


@pytest.mark.parametrize("support", list(SUPPORTS))
def test_teacher_pass_writes_the_teacher_of_each_context(transfer_queue: Any, tiny_tokenizer: Any,
                                                         support: str) -> None:
    from verl.trainer.ppo.v1 import get_trainer_cls

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with hydra.initialize_config_dir(config_dir=config_dir, version_base=None):
        config = hydra.compose(config_name="ppo_trainer", overrides=OVERRIDES + SUPPORTS[support])
    trainer = get_trainer_cls("composer")(config)
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    assert trainer.trainer_mode == "sync" and type(trainer.replay_buffer) is ReplayBuffer  # VeRL's sync behaviour
    model = build_model(tiny_tokenizer).eval()
    # what VeRL's _setup creates on a cluster: the tokenizer of the model, the actor worker group, the step
    trainer.tokenizer, trainer.global_steps = tiny_tokenizer, 1
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    trainer.actor_rollout_wg = CPUActorGroup(model, ComposerActorLoss(actor, trainer.composer_group))
    batch = training_batch(tiny_tokenizer)
    metrics: dict[str, float] = {}
    batch = trainer._teacher_pass(batch, metrics)
    assert {TEACHER_IDS, TEACHER_LOG_PROBS, DISTILL_MASK} <= set(batch.fields)
    stored = tq.kv_batch_get(keys=batch.keys, partition_id="train",
                             select_fields=[TEACHER_IDS, TEACHER_LOG_PROBS, DISTILL_MASK])
    expected = expected_teacher(tiny_tokenizer, model, support)
    for index, (ids, values, targeted) in enumerate(expected):
        torch.testing.assert_close(stored[TEACHER_IDS][index], ids)
        torch.testing.assert_close(stored[TEACHER_LOG_PROBS][index], values, rtol=1e-5, atol=1e-6)
        mask = stored[DISTILL_MASK][index]
        assert bool(mask.all()) == targeted and bool(mask.any()) == targeted
    # sample 1 has a successful sibling (and its feedback is dropped: SDPO's feedback_only_without_solution)
    assert [e[2] for e in expected] == [False, True, True, True, False]
    assert metrics["composer/distill_rows"] == pytest.approx(3 / 5)
    for source in ("demonstration", "feedback", "hint"):
        assert metrics[f"composer/distill_{source}_fraction"] == pytest.approx(1 / 5)
    assert tq.kv_list(partition_id=TEACHER_PARTITION) == {TEACHER_PARTITION: {}}  # teacher rows cleared
    student_update_reads_the_stored_teacher(trainer, model, batch, support)
    tq.kv_clear(keys=batch.keys, partition_id="train")


def student_update_reads_the_stored_teacher(trainer: Any, model: torch.nn.Module, batch: Any, support: str) -> None:
    """The update's logits processor on the stored batch: the divergence to the stored top-K, per response token."""
    data = tq.kv_batch_get(keys=batch.keys, partition_id="train")
    logits = torch.cat([model(input_ids=ids.unsqueeze(0)).logits[0] for ids in data["input_ids"].unbind()])
    processed = trainer.actor_rollout_wg.loss(student_logits=logits.unsqueeze(0), data=data)
    per_token = no_padding_2_padding(processed["composer_distill"][0], data)
    student = no_padding_2_padding(logits, data)
    for index in range(len(SAMPLES)):
        length = int(data["response_mask"][index].sum())
        expected = distill_per_token_precomputed(student[index, :length], data[TEACHER_IDS][index],
                                                       data[TEACHER_LOG_PROBS][index], support=support,
                                                       alpha=trainer.composer.distill.alpha)
        torch.testing.assert_close(per_token[index, :length], expected, rtol=1e-5, atol=1e-6)
