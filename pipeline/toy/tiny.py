"""Tiny random-weight models for running the real engine path on a laptop or in CI (no downloads).

``make_tiny_models(DIR)`` writes ``DIR/generator`` (a 2-layer Llama causal LM) and ``DIR/reward``
(the same shape as a one-label ``LlamaForSequenceClassification``), each with a BPE tokenizer
trained here on a small built-in text and a chat template. Shapes follow what the CPU build of
vLLM accepts (head_dim 64; the CPU build refuses head_dim 16). The weights are random: generations are
noise and rewards meaningless, but every token, cache and score goes through the real engines.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
CORPUS = """
A farmer has 12 sheep and buys 7 more. Then 3 run away. How many sheep does the farmer have now?
The answer is 16. We add 12 and 7 to get 19, then subtract 3. So the final answer is \\boxed{16}.
Solve for x: 2x + 3 = 11. Subtract 3 from both sides to get 2x = 8, then divide by 2: x = 4.
What is the sum of the first ten positive integers? Pair them up: 1 + 10, 2 + 9, and so on, five pairs
of 11, so the sum is 55. A train travels 60 miles per hour for 2.5 hours; distance equals rate times
time, which is 150 miles. Let the width be w; the length is 2w, and the perimeter 6w = 36, so w = 6.
Therefore, the probability is 3/8. Step 1: read the problem. Step 2: write an equation. Step 3: check.
"""


def make_tiny_models(directory, seed: int = 0, vocab_size: int = 384) -> dict[str, Path]:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator([CORPUS] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", additional_special_tokens=SPECIAL_TOKENS[4:])
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, torch_dtype="float32")
    paths = {"generator": root / "generator", "reward": root / "reward"}
    torch.manual_seed(seed)
    generator = LlamaForCausalLM(config)
    generator.save_pretrained(paths["generator"], safe_serialization=True)
    tokenizer.save_pretrained(paths["generator"])
    config.num_labels = 1
    torch.manual_seed(seed + 1)
    reward = LlamaForSequenceClassification(config)
    reward.save_pretrained(paths["reward"], safe_serialization=True)
    tokenizer.save_pretrained(paths["reward"])
    return paths
