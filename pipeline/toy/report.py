"""How good the toy models are, measured on held-out problems: accuracy and pass@k of the generator,
the reward model's AUCs, how much states differ (``slg make-toy-models --report``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.toy import task as toy_task
from pipeline.toy.metrics import pass_at_k, roc_auc, within_prompt_auc
from pipeline.toy.models import MAX_REWARD_TOKENS, Codec, sample_responses, score_rows


def evaluate_toy_models(directory, num_problems: int = 200, samples: int = 64, state_tokens: int | None = None,
                        states: int = 8, completions: int = 32, seed: int = 0, progress: bool = True) -> dict:
    """The quality bands of the toy models in ``DIRECTORY``, on the first ``num_problems`` test problems.

    - generator: accuracy of one sample at temperature 1 (the mean over ``samples`` samples per
      problem), pass@k for k in 1, 16, 64 (unbiased estimator), majority vote over the samples;
    - reward model: ROC AUC of its scores for right against wrong samples within each problem
      (averaged over the problems that have both) and over all samples; the accuracy of the
      best-scored of the samples (best-of-``samples``);
    - states: the first ``state_tokens`` tokens of the first ``states`` samples of each problem,
      ``completions`` continuations each; the accuracy of each state's continuations, its spread
      within a problem (max - min, and the standard deviation), the share of the within-problem
      variance of correctness that the state explains, and the accuracy after a state whose first
      result is right against one whose first result is wrong.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer, LlamaForCausalLM, LlamaForSequenceClassification

    from actors.formatting import reward_token_ids

    root = Path(directory)
    state_tokens = state_tokens or toy_task.STATE_TOKENS
    tokenizer = AutoTokenizer.from_pretrained(root / "generator")
    generator = LlamaForCausalLM.from_pretrained(root / "generator").eval()
    reward = LlamaForSequenceClassification.from_pretrained(root / "reward").eval()
    reward_tokenizer = AutoTokenizer.from_pretrained(root / "reward")
    problems = toy_task.read_split(toy_task.DATA_DIR / "test.jsonl")[:num_problems]
    sampler = torch.Generator().manual_seed(seed)
    chunk = max(1, 2048 // samples)
    responses, state_heads = [], []
    with tqdm(total=2 * len(problems), desc="evaluate", unit="problem", disable=not progress) as bar:
        for start in range(0, len(problems), chunk):
            part = problems[start:start + chunk]
            responses += sample_responses(generator, tokenizer, part, samples, sampler)
            bar.update(len(part))
        correct = np.array([[toy_task.is_correct(r, p.answer) for r in rs] for p, rs in zip(problems, responses)])
        with torch.no_grad():
            scores = np.array([score_rows(reward, [reward_token_ids(reward_tokenizer, p.text, r, MAX_REWARD_TOKENS)
                                                   for r in rs], reward_tokenizer.pad_token_id).numpy()
                               for p, rs in zip(problems, responses)])
        codec = Codec(tokenizer)
        state_accuracy, first_step_right = [], []
        for problem, rs in zip(problems, responses):
            heads = [codec.chars(r)[:state_tokens] for r in rs if len(r) >= state_tokens][:states]
            continued = sample_responses(generator, tokenizer, [problem] * len(heads), completions, sampler, heads)
            state_accuracy.append([np.mean([toy_task.is_correct(c, problem.answer) for c in cs]) for cs in continued])
            first_step_right.append([_first_result_right(problem, r[:state_tokens]) for r in rs if len(r) >= state_tokens][:states])
            state_heads.append(len({r[:state_tokens] for r in rs}))
            bar.update(1)
    return {"problems": len(problems), "samples": samples, "state_tokens": state_tokens,
            "generator": _generator_report(correct, responses, problems),
            "reward": _reward_report(scores, correct),
            "states": _state_report(state_accuracy, first_step_right, state_heads, completions)}


def _first_result_right(problem: toy_task.ToyProblem, head: str) -> bool | None:
    """Whether a prefix writes the first step's result right (None if it holds no first result)."""
    first = head.split(";")[0]
    if ";" not in head or "=" not in first:
        return None
    return first == problem.solution().split(";")[0]


def _generator_report(correct, responses, problems) -> dict:
    from collections import Counter

    n = correct.shape[1]
    per_problem = correct.sum(axis=1)
    majority = []
    for problem, rs in zip(problems, responses):
        answers = [a for r in rs if (a := toy_task.final_answer(r)) is not None]
        majority.append(bool(answers) and Counter(answers).most_common(1)[0][0] == problem.answer)
    return {"accuracy": float(correct.mean()),
            "pass_at": {str(k): float(np.mean([pass_at_k(int(c), n, k) for c in per_problem])) for k in (1, 16, 64) if k <= n},
            "majority_vote": float(np.mean(majority)),
            "problems_all_right": float(np.mean(per_problem == n)), "problems_all_wrong": float(np.mean(per_problem == 0))}


def _reward_report(scores, correct) -> dict:
    within, mixed = within_prompt_auc(list(scores), list(correct))
    best = correct[np.arange(len(correct)), scores.argmax(axis=1)]
    return {"within_prompt_auc": within, "problems_with_both": mixed,
            "overall_auc": roc_auc(scores.ravel(), correct.ravel()),
            "best_of_samples_accuracy": float(best.mean()),
            "score_mean_right": float(scores[correct].mean()) if correct.any() else None,
            "score_mean_wrong": float(scores[~correct].mean()) if (~correct).any() else None}


def _state_report(state_accuracy, first_step_right, distinct_heads, completions) -> dict:
    spreads = [max(a) - min(a) for a in state_accuracy if len(a) >= 2]
    stds = [float(np.std(a)) for a in state_accuracy if len(a) >= 2]
    flat = np.array([x for a in state_accuracy for x in a])
    # Within a problem, correctness varies between states and within a state: the share of that
    # variance the state explains is mean(var of state accuracies) / mean(p (1 - p) of the problem).
    between = np.mean([np.var(a) for a in state_accuracy if len(a) >= 2])
    total = np.mean([np.mean(a) * (1 - np.mean(a)) for a in state_accuracy if len(a) >= 2])
    pairs = [(r, a) for rights, accs in zip(first_step_right, state_accuracy) for r, a in zip(rights, accs) if r is not None]
    after_right = [a for r, a in pairs if r]
    after_wrong = [a for r, a in pairs if not r]
    return {"completions_per_state": completions, "states": int(flat.size),
            "mean_within_prompt_spread": float(np.mean(spreads)), "mean_within_prompt_std": float(np.mean(stds)),
            "share_of_variance_explained_by_state": float(between / total) if total > 0 else None,
            "share_of_states_at_most_0.1": float(np.mean(flat <= 0.1)),
            "share_of_states_at_least_0.9": float(np.mean(flat >= 0.9)),
            "mean_distinct_prefixes_per_prompt": float(np.mean(distinct_heads)),
            "accuracy_after_right_first_step": float(np.mean(after_right)) if after_right else None,
            "accuracy_after_wrong_first_step": float(np.mean(after_wrong)) if after_wrong else None,
            "share_of_states_with_wrong_first_step": len(after_wrong) / len(pairs) if pairs else None}


def format_report(report: dict) -> str:
    g, r, s = report["generator"], report["reward"], report["states"]
    passes = ", ".join(f"pass@{k} {v:.3f}" for k, v in g["pass_at"].items())
    return "\n".join([
        f"toy models on {report['problems']} held-out problems, {report['samples']} samples each (temperature 1):",
        f"  generator: accuracy {g['accuracy']:.3f} (band 0.20-0.70); {passes}; majority vote {g['majority_vote']:.3f}",
        f"  reward model: within-prompt AUC {r['within_prompt_auc']:.3f} over {r['problems_with_both']} problems "
        f"(band 0.70-0.95); overall AUC {r['overall_auc']:.3f}; best-of-{report['samples']} accuracy "
        f"{r['best_of_samples_accuracy']:.3f}",
        f"  states (first {report['state_tokens']} tokens, {s['states']} states, {s['completions_per_state']} completions each): "
        f"within-prompt spread {s['mean_within_prompt_spread']:.3f} (max - min), std {s['mean_within_prompt_std']:.3f}, "
        f"state explains {s['share_of_variance_explained_by_state']:.2f} of the within-prompt variance; "
        f"accuracy {s['accuracy_after_right_first_step']:.3f} after a right first step, "
        f"{s['accuracy_after_wrong_first_step']:.3f} after a wrong one; "
        f"{s['mean_distinct_prefixes_per_prompt']:.1f} distinct prefixes in {report['samples']} samples",
    ])


def report_toy_models(directory) -> tuple[dict, str]:
    """``evaluate_toy_models`` and its text for the terminal (``slg make-toy-models --report``)."""
    report = evaluate_toy_models(directory)
    return report, format_report(report)
