"""The toy reward model, built rather than trained: a teacher's layers plus two layers whose weights are
set to compute its mean centred logit of each response token, calibrated to the log-odds that the
answer is right (a standard ``LlamaForSequenceClassification`` with one label)."""

from __future__ import annotations

from pipeline.toy.models import PREVIOUS_TOKEN_FREQUENCIES, PREVIOUS_TOKEN_SCALE


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
