"""The toy models' shared pieces: the character tokenizer and its codec, the Llama configurations,
batched sampling and scoring with transformers. The toy models are a character-level Llama generator
and a Llama reward model for the toy task (``pipeline.toy.task``), small enough to train and serve on
two CPU cores; ``training`` makes them, ``reward_model`` builds the reward model from a teacher,
``report`` measures them. Both load as they are in transformers and in vLLM (head_dim 64, which the
CPU build needs); the engines that serve them are ``actors/vllm_engine.py`` and ``actors/hf_engine.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

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
