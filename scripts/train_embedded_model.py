"""Train the embedded default model of `composer-core train`: a tiny Qwen2 that adds two-digit numbers.

From scratch, on CPU, in a few minutes: supervised next-token prediction on correct chat-formatted examples of
`composer_core.tasks.arithmetic`, with the loss on the assistant's answer tokens only. Training stops at the
first probe where greedy held-out accuracy reaches `--stop-at`, so the model is only partly right and RL has
room to improve it.

A share of the examples carry privileged context in the prompt, laid out as the self-distillation teacher
sees it: a hint, the verifier's feedback on a wrong answer, or a correct solution. The teacher (the same
model, given that context) is then measurably better than the student, which self-distillation needs.

The tokenizer is byte-level with no merges (one token per byte) plus special tokens. It is built with the
`tokenizers` library in exactly the pipeline of transformers' Qwen2Tokenizer, because transformers 5 loads any
tokenizer saved next to a qwen2 config.json as Qwen2Tokenizer, whatever tokenizer_config.json names: both
classes then tokenize identically.

The script writes the model, the tokenizer and a README with the measured accuracies to `--out`.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from composer_core.tasks.arithmetic import Problem, make_problems, score

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "adapters" / "composer_trl" / "embedded" / "model"
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>")
QWEN2_PRETOKENIZE = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                     r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unsupported role: ' + message['role']) }}{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
# The teacher-context layout of composer_trl's RepromptSettings defaults (SDPO's reprompt templates).
REPROMPT = "{prompt}{demonstration}{feedback}{hint}\n\nCorrectly solve the original question.\n"
PARAGRAPHS = {"demonstration": "\nCorrect solution:\n\n{}\n\n",
              "feedback": "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{}\n\n",
              "hint": "\nHint:\n\n{}\n\n"}
# The layout of composer_core.traces.targets: the privileged text as one more user turn.
TURN_LABELS = {"demonstration": "Correct solution: {}", "feedback": "Feedback: {}", "hint": "Hint: {}"}
PRIVILEGED_SETS = (("hint",), ("feedback",), ("demonstration",), ("feedback", "hint"), ("demonstration", "hint"))
WRONG_OFFSETS = (-11, -10, -9, -2, -1, 1, 2, 9, 10, 11)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to save model, tokenizer, README")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (results depend on it)")
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64, help="plain examples per step")
    parser.add_argument("--privileged-share", type=float, default=0.25,
                        help="teacher-context examples per step, as a share of --batch-size")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--probe-every", type=int, default=100, help="steps between held-out probes")
    parser.add_argument("--probe-size", type=int, default=256, help="eval problems per probe")
    parser.add_argument("--stop-at", type=float, default=0.4, help="stop once greedy probe accuracy >= this")
    parser.add_argument("--eval-size", type=int, default=512, help="eval problems for the final measurements")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem at temperature 1")
    return parser.parse_args()


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte (Qwen2's byte-level pipeline, no merges) plus special tokens, with a chat template."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={token: index for index, token in enumerate(SPECIAL_TOKENS + tuple(alphabet))},
                                   merges=[]))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True) for token in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
                                        eos_token="<eos>", unk_token="<unk>",
                                        additional_special_tokens=list(SPECIAL_TOKENS[4:]))
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast) -> Qwen2ForCausalLM:
    """A four-layer Qwen2 with tied embeddings, about 0.8 M parameters, randomly initialised."""
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def privileged_texts(problem: Problem, sources: tuple[str, ...], rng: random.Random) -> dict[str, str]:
    """The privileged texts a teacher may see: a hint, feedback on a wrong answer, a correct solution."""
    texts = {"hint": problem.hint, "demonstration": str(problem.answer)}
    if "feedback" in sources:
        wrong = "" if rng.random() < 0.1 else str(problem.answer + rng.choice(WRONG_OFFSETS))
        texts["feedback"] = score(problem, wrong).feedback or ""
    return {source: texts[source] for source in sources}


def teacher_context(problem: Problem, texts: dict[str, str], layout: str) -> list[dict[str, str]]:
    """The prompt with privileged texts, either rewritten into the user message or appended as user turns."""
    prompt = problem.messages[-1]["content"]
    if layout == "reprompt":
        paragraphs = {name: PARAGRAPHS[name].format(texts[name]) if name in texts else "" for name in PARAGRAPHS}
        return [{"role": "user", "content": REPROMPT.format(prompt=prompt, **paragraphs)}]
    turns = [{"role": "user", "content": TURN_LABELS[name].format(text)} for name, text in texts.items()]
    return [*problem.messages, *turns]


def random_teacher_context(problem: Problem, rng: random.Random) -> list[dict[str, str]]:
    sources = rng.choice(PRIVILEGED_SETS)
    return teacher_context(problem, privileged_texts(problem, sources, rng), rng.choice(("reprompt", "turn")))


def encode(tokenizer: PreTrainedTokenizerFast, contexts: list[list[dict[str, str]]],
           answers: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded ids of context + answer, with labels only on the answer tokens and the closing eos."""
    rows, labels = [], []
    for context, answer in zip(contexts, answers, strict=True):
        prompt = tokenizer.apply_chat_template(context, add_generation_prompt=True)["input_ids"]
        full = tokenizer.apply_chat_template([*context, {"role": "assistant", "content": answer}])["input_ids"]
        rows.append(full)
        labels.append([-100] * len(prompt) + full[len(prompt):])
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    return {"input_ids": torch.tensor([row + [pad] * (width - len(row)) for row in rows]),
            "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows]),
            "labels": torch.tensor([label + [-100] * (width - len(label)) for label in labels])}


def training_batches(tokenizer: PreTrainedTokenizerFast, args: argparse.Namespace) -> Any:
    """Per step, a batch of plain prompts and a smaller one of teacher contexts (padded apart: they differ a
    lot in length)."""
    rng = random.Random(args.seed)
    privileged = round(args.batch_size * args.privileged_share)
    stream = iter(make_problems(args.max_steps * (args.batch_size + privileged), args.seed, "train"))
    for _ in range(args.max_steps):
        plain = [next(stream) for _ in range(args.batch_size)]
        hinted = [next(stream) for _ in range(privileged)]
        yield [encode(tokenizer, [problem.messages for problem in plain], [str(p.answer) for p in plain]),
               encode(tokenizer, [random_teacher_context(problem, rng) for problem in hinted],
                      [str(p.answer) for p in hinted])]


@torch.no_grad()
def generate(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, contexts: list[list[dict[str, str]]],
             samples: int = 1, sample: bool = False, batch_size: int = 128) -> list[list[str]]:
    """Completions (`samples` per context), greedy or sampled at temperature 1 with no top-k/top-p cut."""
    model.eval()
    tokenizer.padding_side = "left"
    out: list[list[str]] = []
    for start in range(0, len(contexts), batch_size):
        batch = tokenizer.apply_chat_template(contexts[start:start + batch_size], add_generation_prompt=True,
                                              padding=True, return_tensors="pt", return_dict=True)
        options = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} if sample else {
            "do_sample": False}
        ids = model.generate(**batch, max_new_tokens=6, num_return_sequences=samples, **options)
        texts = tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        out.extend(texts[index:index + samples] for index in range(0, len(texts), samples))
    tokenizer.padding_side = "right"
    model.train()
    return out


def accuracy(problems: list[Problem], completions: list[list[str]]) -> float:
    hits = [score(problem, text).reward for problem, texts in zip(problems, completions, strict=True) for text in texts]
    return sum(hits) / len(hits)


def measure(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, problems: list[Problem],
            args: argparse.Namespace) -> dict[str, float]:
    """Held-out accuracies: the student's greedy and sampled ones, pass@samples, and the teacher's greedy ones."""
    torch.manual_seed(args.seed)
    prompts = [problem.messages for problem in problems]
    sampled = generate(model, tokenizer, prompts, samples=args.samples, sample=True)
    metrics = {"greedy_accuracy": accuracy(problems, generate(model, tokenizer, prompts)),
               "sampled_accuracy": accuracy(problems, sampled),
               f"pass_at_{args.samples}": sum(any(score(p, text).reward for text in texts)
                                              for p, texts in zip(problems, sampled, strict=True)) / len(problems)}
    rng = random.Random(args.seed)
    for sources in (("hint",), ("feedback",), ("demonstration",)):
        for layout in ("reprompt", "turn"):
            contexts = [teacher_context(p, privileged_texts(p, sources, rng), layout) for p in problems]
            metrics[f"teacher_{sources[0]}_{layout}_greedy_accuracy"] = accuracy(
                problems, generate(model, tokenizer, contexts))
    return metrics


def train(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, probe: list[Problem],
          args: argparse.Namespace) -> int:
    """Train until the greedy probe accuracy reaches `--stop-at`; returns the steps taken."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / args.warmup))
    model.train()
    start = time.monotonic()
    for step, batches in enumerate(training_batches(tokenizer, args), start=1):
        optimizer.zero_grad()
        losses = [model(**batch).loss for batch in batches]
        sum(losses).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % args.probe_every == 0:
            greedy = accuracy(probe, generate(model, tokenizer, [problem.messages for problem in probe]))
            print(f"step {step:5d}  loss plain {losses[0].item():.3f} teacher {losses[1].item():.3f}  "
                  f"probe greedy accuracy {greedy:.3f}  {time.monotonic() - start:.0f}s", flush=True)
            if greedy >= args.stop_at:
                return step
    return args.max_steps


def save(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    """Save in safetensors; tokenizer_config.json names the generic fast class, which loaders other than
    AutoTokenizer-with-a-qwen2-config honour."""
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def write_readme(out: Path, args: argparse.Namespace, steps: int, seconds: float, parameters: int,
                 metrics: dict[str, float]) -> None:
    rows = "\n".join(f"| {name} | {value:.3f} |" for name, value in metrics.items())
    command = "python scripts/train_embedded_model.py" + ("" if args.out == DEFAULT_OUT else f" --out {args.out}")
    (out / "README.md").write_text(f"""# Embedded default model: tiny Qwen2 for two-digit addition

The model `composer-core train` uses when given no model: a {parameters:,}-parameter Qwen2 (hidden 128, 4 layers,
4 heads, intermediate 384, tied embeddings) with a byte-level tokenizer (one token per byte, special tokens
`<pad> <bos> <eos> <|system|> <|user|> <|assistant|>`) and a chat template. Task:
`composer_core.tasks.arithmetic` ("What is 47 + 38?" -> "85", reward 1 for the right sum).

Trained from scratch by `scripts/train_embedded_model.py` (supervised next-token prediction on correct
chat-formatted answers, loss on the answer tokens; {args.privileged_share:.0%} extra examples per step carry a
hint, feedback or a correct solution in the self-distillation teacher's layouts), seed {args.seed},
{args.threads} CPU threads: {steps} steps of {args.batch_size} + {round(args.batch_size * args.privileged_share)}
examples in {seconds / 60:.1f} minutes, stopped at the first probe with greedy held-out accuracy >= {args.stop_at}.
Accuracy is deliberately partial, so that RL has room to improve it.

Held-out accuracy ({args.eval_size} eval-split problems; sampling at temperature 1, {args.samples} samples each;
teacher rows: greedy, with the privileged text in composer_trl's reprompt layout or as an extra user turn):

| metric | value |
| --- | --- |
{rows}

Reproduce (from the repository root; results depend on the thread count):

    {command}
""")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    print(f"{parameters:,} parameters, vocabulary {len(tokenizer)}", flush=True)
    held_out = make_problems(args.probe_size + args.eval_size, args.seed, "eval")
    start = time.monotonic()
    steps = train(model, tokenizer, held_out[:args.probe_size], args)
    seconds = time.monotonic() - start
    metrics = measure(model, tokenizer, held_out[args.probe_size:], args)
    print(json.dumps({"steps": steps, "seconds": round(seconds), **metrics}, indent=2), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    save(model, tokenizer, args.out)
    write_readme(args.out, args, steps, seconds, parameters, metrics)


if __name__ == "__main__":
    main()
