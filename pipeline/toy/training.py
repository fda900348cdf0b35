"""Making the toy models: a character-level Llama generator and a Llama reward model for the toy
task (``pipeline.toy.task``), trained on two CPU cores.

``make_toy_models(DIR, seed)`` writes ``DIR/generator`` (a ``LlamaForCausalLM``) and
``DIR/reward`` (a ``LlamaForSequenceClassification``, one label), each with its tokenizer
(``PreTrainedTokenizerFast``, one token per character) and a chat template that renders exactly
what the models were trained on, so that the pipeline's formatting (``actors/formatting.py``)
feeds them their training inputs: the generator's prompt is ``<s>PROBLEM:`` and the reward
model reads ``<s>PROBLEM:RESPONSE</s>`` and scores the last position. Both folders load as they
are in transformers and in vLLM (head_dim 64, which the CPU build needs).

How they are made (one training run, stopped twice on checks, never on a clock):
1. The generator learns worked solutions of training problems (loss on the response only). Its
   accuracy of one sample at temperature 1 rises from near 0 to near 1 within a few hundred
   steps, about 1% a step in between, so the saved generator is the model at the first check
   (every 10 steps) whose accuracy on validation problems reaches ``target_accuracy``.
2. Training goes on; the "teacher" is the model at the first check where its reading of the
   saved generator's own samples of validation problems ranks the right ones above the wrong ones
   of the same problem with a ROC AUC of at least ``rm_target_auc``. Its reading
   (``teacher_surprise``) is the mean, over the prompt and the response, of the centred logit it
   gives each token after the ones before: a wrong digit is one that a model that knows the
   arithmetic did not expect. (The prompt's part is the same for every response to a problem.)
3. The reward model computes exactly that reading of the teacher, calibrated by a logistic fit to
   the log-odds that the final answer is right (labels from checking the generator's own samples
   of training problems), as a standard ``LlamaForSequenceClassification``: the teacher's layers
   plus two layers whose weights are set, not trained (``build_reward_model``). Classifiers
   trained on the labels instead stayed at a within-prompt AUC of about 0.6 after 300 steps: they
   must notice one wrong digit anywhere in the work, and a label at the end does not say where.

``evaluate_toy_models(DIR)`` measures the quality bands (accuracy, pass@k, the reward model's
AUCs, how much states differ) on held-out problems. This module is training and measurement
only; the engines that serve the models are ``actors/vllm_engine.py`` and ``actors/hf_engine.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError
from pipeline.toy import task as toy_task
from pipeline.toy.metrics import within_prompt_auc
from pipeline.toy.models import (
    MANIFEST,
    MAX_REWARD_TOKENS,
    Codec,
    ToyTrainingConfig,
    build_tokenizer,
    llama_config,
    response_batch,
    sample_responses,
)
from pipeline.toy.reward_model import build_reward_model

# ---------------------------------------------------------------- making the models

def make_toy_models(directory, seed: int = 0, settings: ToyTrainingConfig | None = None,
                    progress: bool = True) -> dict[str, Path]:
    """Train the toy generator and its teacher, build the reward model from the teacher, and write
    ``DIRECTORY/generator`` and ``DIRECTORY/reward`` (and a manifest of how they were made).
    Refuses a folder that holds anything but its own earlier output. Seeded: the same seed, thread
    count and CPU kind give the same weights."""
    settings = settings or ToyTrainingConfig()
    root = Path(directory)
    check_output_folder(root)
    # Beside other jobs, spinning OpenMP threads slowed training ~10x; only effective before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    from tqdm import tqdm

    torch.set_num_threads(settings.num_threads)
    tokenizer = build_tokenizer()
    splits = toy_task.make_splits(toy_task.TASK_SEED)
    with tqdm(desc="generator", unit="step", disable=not progress) as bar:  # it stops on a check: no total
        generator, teacher, log = train_generator_and_teacher(tokenizer, splits, seed, settings, bar)
    sampler = torch.Generator().manual_seed(seed * 1000 + 4)
    calibration = labelled_samples(generator, tokenizer, splits["train"][: settings.calibration_problems],
                                   settings.calibration_samples, sampler)
    surprise = np.concatenate([teacher_surprise(teacher, ids, tokenizer.pad_token_id) for ids, _ in calibration])
    slope, intercept = fit_logistic(surprise, np.concatenate([labels for _, labels in calibration]))
    log["calibration"] = {"samples": int(surprise.size), "slope": slope, "intercept": intercept}
    reward = build_reward_model(tokenizer, teacher, slope, intercept)
    paths = {"generator": root / "generator", "reward": root / "reward"}
    root.mkdir(parents=True, exist_ok=True)
    manifest = {"made_by": "slg make-toy-models", "seed": seed, "task_seed": toy_task.TASK_SEED,
                "settings": asdict(settings), **log, "complete": False}
    _write_json(root / MANIFEST, manifest)
    for role, model in (("generator", generator), ("reward", reward)):
        shutil.rmtree(paths[role], ignore_errors=True)
        model.save_pretrained(paths[role], safe_serialization=True)
        tokenizer.save_pretrained(paths[role])
    _write_json(root / MANIFEST, {**manifest, "complete": True})
    return paths


def check_output_folder(root: Path) -> None:
    """A folder ``make_toy_models`` may write: new, empty, or its own earlier output."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{str(root)!r} is a file; make-toy-models writes a folder")
    if not root.exists():
        return
    entries = sorted(p.name for p in root.iterdir())
    if not entries:
        return
    foreign = [e for e in entries if e not in (MANIFEST, "generator", "reward")]
    if MANIFEST not in entries or foreign:
        shown = ", ".join((foreign or entries)[:3])
        raise ConfigError(f"{str(root)!r} holds files make-toy-models did not write ({shown}); give a new or empty folder")


def _write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


def train_generator_and_teacher(tokenizer, splits, seed: int, settings: ToyTrainingConfig, bar):
    """One training run, two stops. The generator is the model at the first accuracy check at or
    above ``target_accuracy``; training then goes on, and the teacher is the model at the first
    check where its surprise (``teacher_surprise``) ranks the generator's right samples above its
    wrong ones, within a validation problem, with an AUC at or above ``rm_target_auc``."""
    import copy

    import torch
    from transformers import LlamaForCausalLM

    codec = Codec(tokenizer)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(tokenizer, settings))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    batches = np.random.default_rng([seed, 1])
    sampler = torch.Generator().manual_seed(seed * 1000 + 2)
    train, check = splits["train"], splits["valid"][: settings.check_problems]
    log = {"generator": {"checks": []}, "teacher": {"checks": []}}
    generator, judged = None, None
    for step in range(1, settings.max_generator_steps + settings.max_teacher_steps + 1):
        ids, mask = response_batch(codec, [train[i] for i in batches.integers(len(train), size=settings.batch_size)])
        loss = generator_loss(model, ids, mask)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        bar.update(1)
        if step % settings.check_every:
            continue
        model.eval()
        if generator is None:
            accuracy = sample_accuracy(model, tokenizer, check, sampler)
            log["generator"]["checks"].append({"step": step, "accuracy": accuracy})
            bar.set_postfix(accuracy=f"{accuracy:.2f}")
            if accuracy >= settings.target_accuracy:
                generator = copy.deepcopy(model)
                log["generator"].update(steps=step, check_accuracy=accuracy)
                judged = labelled_samples(generator, tokenizer, splits["valid"][settings.check_problems:],
                                          settings.calibration_samples, sampler)
                bar.set_description("teacher")
                step_saved = step
        if generator is not None:
            scored = [teacher_surprise(model, ids, tokenizer.pad_token_id) for ids, _ in judged]
            auc = within_prompt_auc(scored, [labels for _, labels in judged])[0]
            log["teacher"]["checks"].append({"step": step, "within_prompt_auc": auc})
            bar.set_postfix(within_prompt_auc=f"{auc:.3f}")
            if auc >= settings.rm_target_auc:
                log["teacher"].update(steps=step, check_within_prompt_auc=auc)
                return generator.eval(), model.eval(), log
            if step - step_saved >= settings.max_teacher_steps:
                break
        elif step >= settings.max_generator_steps:
            break
        model.train()
    stage = "teacher's within-prompt AUC" if generator is not None else "generator's accuracy"
    raise RuntimeError(f"the toy {stage} did not reach its target in time; see the checks: {log}")


def generator_loss(model, ids, mask):
    import torch

    logits = model(input_ids=ids[:, :-1]).logits
    targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def sample_accuracy(model, tokenizer, problems, sampler) -> float:
    responses = sample_responses(model, tokenizer, problems, 1, sampler)
    return float(np.mean([toy_task.is_correct(r[0], p.answer) for p, r in zip(problems, responses)]))


def labelled_samples(generator, tokenizer, problems, samples: int, sampler) -> list[tuple[list[list[int]], list[bool]]]:
    """Per problem: the reward model's input ids of ``samples`` generator samples (the pipeline's
    formatting), and whether each one's answer is right."""
    from actors.formatting import reward_token_ids

    out = []
    for problem, responses in zip(problems, sample_responses(generator, tokenizer, problems, samples, sampler)):
        ids = [reward_token_ids(tokenizer, problem.text, r, MAX_REWARD_TOKENS) for r in responses]
        out.append((ids, [toy_task.is_correct(r, problem.answer) for r in responses]))
    return out


# ---------------------------------------------------------------- the reward model, built from the teacher

def teacher_surprise(teacher, rows: list[list[int]], pad: int) -> np.ndarray:
    """What the reward model computes before calibration, computed directly with the teacher:
    the mean over positions t of u_t, the teacher's centred logit (the logit minus the mean logit
    over the vocabulary) of the token at t given the tokens before it; at t = 0, of BOS at 0. A
    wrong digit is one the teacher did not expect: a low u where it was written."""
    import torch

    ids = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    with torch.no_grad():
        logits = teacher(input_ids=ids).logits
    centred = logits - logits.mean(dim=-1, keepdim=True)
    before = torch.cat([centred[:, :1], centred[:, :-1]], dim=1)  # position 0 reads itself
    u = before.gather(2, ids[..., None])[..., 0]
    return np.array([float(u[i, : len(row)].mean()) for i, row in enumerate(rows)])


def fit_logistic(x, y, iterations: int = 50) -> tuple[float, float]:
    """(slope, intercept) of P(y) = sigmoid(slope x + intercept) by maximum likelihood (Newton)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    design = np.stack([x, np.ones_like(x)], axis=1)
    theta = np.zeros(2)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-design @ theta))
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        theta += np.linalg.solve(hessian, design.T @ (y - p))
    return float(theta[0]), float(theta[1])
