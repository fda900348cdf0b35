"""Toy models trained by the project: a character-level Llama generator and a Llama reward model
for the toy task (``actors/toy_task.py``), small enough to train and serve on two CPU cores.

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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError
from pipeline.toy import task as toy_task

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
PROMPT_END = ":"  # the generation prompt ends here; the response follows
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ message['content'] }}" + PROMPT_END +
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('the toy models read user and assistant messages only') }}{% endif %}"
    "{% endfor %}"
)
MAX_RESPONSE_TOKENS = 48  # a right solution is 31 characters and EOS
MAX_REWARD_TOKENS = 128   # <s>, problem, ':', response, </s>
MANIFEST = "toy_models.json"  # marks a folder as this module's output (it may overwrite such a folder)
# The previous-token head of the reward model: RoPE's 8 fastest frequencies, and a scale that puts
# more than 1 - 1e-6 of the attention on the previous position for sequences up to 64 tokens.
PREVIOUS_TOKEN_FREQUENCIES = 8
PREVIOUS_TOKEN_SCALE = 20.0


@dataclass
class ToyTrainingConfig:
    hidden_size: int = 128
    num_layers: int = 3
    intermediate_size: int = 384
    batch_size: int = 128
    learning_rate: float = 1e-3
    grad_clip: float = 1.0             # without clipping (and at 3e-3) training stalled below 5% accuracy
    target_accuracy: float = 0.30      # the generator: the first check at or above this accuracy
    check_every: int = 10              # steps between checks (accuracy rises ~1% a step in the band)
    check_problems: int = 256          # validation problems of an accuracy check, one sample each
    max_generator_steps: int = 2000
    rm_target_auc: float = 0.85        # the teacher: the first check whose within-prompt AUC reaches this
    max_teacher_steps: int = 1000
    calibration_samples: int = 8       # generator samples per problem, for the AUC check and the calibration
    calibration_problems: int = 500    # training problems whose samples calibrate the reward
    num_threads: int = 2


# ---------------------------------------------------------------- tokenizer and encoding

def build_tokenizer():
    """One token per character of the task's alphabet, plus BOS, EOS, PAD and UNK; decoding joins
    characters with nothing between them."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + list(toy_task.ALPHABET))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


class Codec:
    """Fast encoding of what the chat template renders (tests check that the two agree)."""

    def __init__(self, tokenizer):
        self.vocab = tokenizer.get_vocab()
        self.bos, self.eos, self.pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id

    def chars(self, text: str) -> list[int]:
        return [self.vocab.get(c, self.vocab["<unk>"]) for c in text]

    def prompt(self, problem: str) -> list[int]:
        return [self.bos] + self.chars(problem + PROMPT_END)

    def pair(self, problem: str, response: str) -> list[int]:
        return self.prompt(problem) + self.chars(response) + [self.eos]


def llama_config(tokenizer, settings: ToyTrainingConfig, num_labels: int | None = None):
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=settings.hidden_size,
                         intermediate_size=settings.intermediate_size, num_hidden_layers=settings.num_layers,
                         num_attention_heads=settings.hidden_size // 64, num_key_value_heads=settings.hidden_size // 64,
                         head_dim=64, max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    if num_labels is not None:
        config.num_labels = num_labels
    return config


# ---------------------------------------------------------------- sampling

def sample(model, prefixes: list[list[int]], max_new_tokens: int, eos: int, generator, temperature: float = 1.0,
           batch_size: int = 1024) -> list[list[int]]:
    """Completions of token prefixes at ``temperature`` (ids after the prefix, up to and including
    EOS). Prefixes of one batch must share a length (the toy task's prompts do)."""
    import torch

    out: list[list[int]] = []
    for start in range(0, len(prefixes), batch_size):
        batch = prefixes[start:start + batch_size]
        widths = {len(p) for p in batch}
        if len(widths) != 1:
            groups: dict[int, list[int]] = {}
            for i, p in enumerate(batch):
                groups.setdefault(len(p), []).append(i)
            results: list = [None] * len(batch)
            for indices in groups.values():
                for i, ids in zip(indices, sample(model, [batch[i] for i in indices], max_new_tokens, eos, generator,
                                                  temperature, batch_size)):
                    results[i] = ids
            out.extend(results)
            continue
        with torch.no_grad():
            tokens = torch.tensor(batch)
            output = model(input_ids=tokens, use_cache=True)
            past, logits = output.past_key_values, output.logits[:, -1]
            generated = torch.zeros(len(batch), 0, dtype=torch.long)
            done = torch.zeros(len(batch), dtype=torch.bool)
            for _ in range(max_new_tokens):
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
                generated = torch.cat([generated, nxt[:, None]], dim=1)
                done |= nxt == eos
                if bool(done.all()):
                    break
                output = model(input_ids=nxt[:, None], past_key_values=past, use_cache=True)
                past, logits = output.past_key_values, output.logits[:, -1]
        for row in generated.tolist():
            out.append(row[: row.index(eos) + 1] if eos in row else row)
    return out


# ---------------------------------------------------------------- metrics (numpy)

def roc_auc(scores, labels) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting one half
    (the Mann-Whitney statistic); None when one class is missing."""
    from scipy.stats import rankdata

    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def within_prompt_auc(scores_by_prompt, labels_by_prompt) -> tuple[float | None, int]:
    """Mean ROC AUC over the prompts that have both right and wrong samples, and how many those are."""
    values = [a for s, y in zip(scores_by_prompt, labels_by_prompt) if (a := roc_auc(s, y)) is not None]
    return (float(np.mean(values)) if values else None), len(values)


def pass_at_k(num_correct: int, num_samples: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if num_samples - num_correct < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(num_samples - num_correct + 1, num_samples + 1)))




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


def response_batch(codec: Codec, problems, responses=None):
    """Token ids (B, L), right-padded, and a mask over each response and its EOS (the loss's part)."""
    import torch

    responses = responses if responses is not None else [p.solution() for p in problems]
    rows = [codec.pair(p.text, r) for p, r in zip(problems, responses)]
    ids = torch.full((len(rows), max(len(r) for r in rows)), codec.pad, dtype=torch.long)
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for i, (problem, row) in enumerate(zip(problems, rows)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, len(codec.prompt(problem.text)): len(row)] = True
    return ids, mask


def generator_loss(model, ids, mask):
    import torch

    logits = model(input_ids=ids[:, :-1]).logits
    targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def sample_responses(model, tokenizer, problems, samples: int, sampler, state_ids=None) -> list[list[str]]:
    """``samples`` responses per problem at temperature 1, as text (the pipeline's decoding: state
    prefix included, special tokens skipped). With ``state_ids`` (one list of ids per problem),
    each response continues that prefix."""
    codec = Codec(tokenizer)
    heads = [list(s) for s in state_ids] if state_ids is not None else [[] for _ in problems]
    prefixes = [codec.prompt(p.text) + head for p, head in zip(problems, heads) for _ in range(samples)]
    completions = sample(model, prefixes, max_new_tokens=MAX_RESPONSE_TOKENS, eos=codec.eos, generator=sampler)
    texts = tokenizer.batch_decode([head + c for head, c in zip((h for h in heads for _ in range(samples)), completions)],
                                   skip_special_tokens=True)
    return [texts[i * samples:(i + 1) * samples] for i in range(len(problems))]


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


def build_reward_model(tokenizer, teacher, slope: float, intercept: float):
    """A ``LlamaForSequenceClassification`` whose score is ``slope * teacher_surprise + intercept``:
    the teacher's judgement of the response, calibrated to the log-odds that its answer is right.

    It is the teacher, widened from H to H + 64 dimensions, with two layers on top; no weight is
    trained here, all are set (H = the teacher's width; the extra dimensions are laid out in
    ``_RM_DIMS``):
    - embeddings: the teacher's, plus a faint one-hot of the token (``_ONE_HOT_SCALE``) in extra
      dimensions the teacher's layers neither read nor write (their norms are rescaled by
      sqrt(H / (H + 64)) so that they normalise exactly as in the teacher, up to the faint one-hot);
    - added layer 1: a previous-token head (constant query and key through biases, rotated by RoPE
      so that their product peaks one position back) reads the teacher's centred logits at the
      position before; the attention output's bias writes a large constant (``_CONSTANT``) that
      from then on fixes every RMS norm; the MLP multiplies the logits by the one-hot of the
      current token (SwiGLU gates that are open for that token only): u_t;
    - added layer 2: a head with zero query attends uniformly to every position so far: the mean of u;
    - the score head reads that mean and the constant: slope * mean + intercept.
    """
    import torch
    from transformers import LlamaForSequenceClassification

    t_config = teacher.config
    width, extra = t_config.hidden_size, 64
    state = teacher.state_dict()
    # RMS over H + 64 dimensions of a vector living in H of them is sqrt(H / (H + 64)) times its RMS
    # over H: norm weights and epsilon scaled by that keep every teacher layer's normalisation exact.
    rms_scale = (width / (width + extra)) ** 0.5
    config = copy_config(t_config, hidden_size=width + extra, num_hidden_layers=t_config.num_hidden_layers + 2,
                         attention_bias=True, num_labels=1, head_dim=t_config.head_dim,
                         rms_norm_eps=t_config.rms_norm_eps * rms_scale ** 2)
    model = LlamaForSequenceClassification(config)
    d = {k: width + v for k, v in _RM_DIMS.items()}
    norm_unit = (width + extra) ** 0.5 / _CONSTANT  # once the constant dominates: x -> x * norm_unit * weight
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        _copy_teacher(model, state, t_config, rms_scale, d)
        first, second = model.model.layers[t_config.num_hidden_layers:]
        _set_surprise_layer(first, model, state, t_config, rms_scale, d, norm_unit)
        # added layer 2: uniform attention (zero query) averages u over the positions so far
        second.input_layernorm.weight[d["surprise"]] = 1 / norm_unit
        second.self_attn.v_proj.weight[0, d["surprise"]] = 1.0
        second.self_attn.o_proj.weight[d["mean"], 0] = 1.0
        # the score: slope * mean + intercept * 1
        model.model.norm.weight[d["mean"]] = 1 / norm_unit
        model.model.norm.weight[d["constant"]] = 1 / (_CONSTANT * norm_unit)
        model.score.weight[0, d["mean"]] = slope
        model.score.weight[0, d["constant"]] = intercept
    return model.eval()


def _copy_teacher(model, state, t_config, rms_scale: float, d: dict) -> None:
    """The teacher's embeddings and layers into the first H dimensions, and the faint one-hot."""
    import torch

    width, vocab = t_config.hidden_size, t_config.vocab_size
    model.model.embed_tokens.weight[:, :width] = state["model.embed_tokens.weight"]
    model.model.embed_tokens.weight[:, d["one_hot"]: d["one_hot"] + vocab] = _ONE_HOT_SCALE * torch.eye(vocab)
    for i in range(t_config.num_hidden_layers):
        layer, prefix = model.model.layers[i], f"model.layers.{i}."
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            _module(layer, name).weight[:, :width] = state[prefix + name + ".weight"]
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            _module(layer, name).weight[:width] = state[prefix + name + ".weight"]
        for name in ("input_layernorm", "post_attention_layernorm"):
            _module(layer, name).weight[:width] = state[prefix + name + ".weight"] * rms_scale


def _set_surprise_layer(first, model, state, t_config, rms_scale: float, d: dict, norm_unit: float) -> None:
    """Added layer 1: the previous-token head reads the teacher's centred logits one position back,
    writes the constant; the MLP keeps the logit of the current token: u_t."""
    import torch

    width, vocab = t_config.hidden_size, t_config.vocab_size
    first.input_layernorm.weight[:width] = state["model.norm.weight"] * rms_scale
    lm_head = state["lm_head.weight"]
    first.self_attn.v_proj.weight[:vocab, :width] = lm_head - lm_head.mean(dim=0, keepdim=True)
    frequencies = model.model.rotary_emb.inv_freq[:PREVIOUS_TOKEN_FREQUENCIES].float()
    amplitude = PREVIOUS_TOKEN_SCALE / PREVIOUS_TOKEN_FREQUENCIES ** 0.25
    pairs = torch.arange(PREVIOUS_TOKEN_FREQUENCIES)
    half = t_config.head_dim // 2  # RoPE rotates dimensions (i, i + head_dim / 2) together
    first.self_attn.q_proj.bias[pairs] = amplitude
    first.self_attn.k_proj.bias[pairs] = amplitude * torch.cos(frequencies)
    first.self_attn.k_proj.bias[pairs + half] = amplitude * torch.sin(frequencies)
    first.self_attn.o_proj.weight[d["logits"]: d["logits"] + vocab, :vocab] = torch.eye(vocab)
    first.self_attn.o_proj.bias[d["constant"]] = _CONSTANT
    # MLP: u_t = sum over v of [token == v] * logit_v, gates at +-K/2
    norm = first.post_attention_layernorm.weight
    norm[d["one_hot"]: d["one_hot"] + vocab] = 1 / (_ONE_HOT_SCALE * norm_unit)
    norm[d["logits"]: d["logits"] + vocab] = 1 / norm_unit
    norm[d["constant"]] = 1 / (_CONSTANT * norm_unit)
    units = torch.arange(vocab)
    first.mlp.gate_proj.weight[units, d["one_hot"] + units] = _GATE
    first.mlp.gate_proj.weight[units, d["constant"]] = -_GATE / 2
    first.mlp.up_proj.weight[units, d["logits"] + units] = 1.0
    first.mlp.down_proj.weight[d["surprise"], units] = 2 / _GATE


# Extra dimensions of the reward model (offsets past the teacher's width).
_RM_DIMS = {"one_hot": 0, "logits": 24, "surprise": 48, "mean": 49, "constant": 63}
_ONE_HOT_SCALE = 1e-5   # faint enough to leave the teacher's norms unchanged (relative effect ~1e-10)
_CONSTANT = 1e5         # dominates every later RMS norm (relative effect of everything else ~1e-6)
_GATE = 40.0            # SwiGLU gate: silu(20) = 20 (1 - 2e-9), silu(-20) = -4e-8


def _module(layer, dotted: str):
    for part in dotted.split("."):
        layer = getattr(layer, part)
    return layer


def copy_config(config, **changes):
    from transformers import LlamaConfig

    values = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}
    values.update(changes)
    return LlamaConfig(**values)


def score_rows(model, rows: list[list[int]], pad: int):
    """The reward model's score of each id sequence: the head at its last token (right padding), as the engines score."""
    import torch

    ids = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    mask = torch.zeros(ids.shape, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=mask)[0]
        return model.score(hidden[torch.arange(len(rows)), mask.sum(dim=1) - 1])[:, 0]


# ---------------------------------------------------------------- measuring the quality bands

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
