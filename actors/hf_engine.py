"""transformers replicas: ``generate`` for small generators, ``AutoModelForSequenceClassification`` RMs.

For machines without vLLM and for checking vLLM's scores. The RM batches by length (sorted, then
padded per batch) and scores at the last non-padding position, as the reference setup does. The
generator runs one request at a time so that each rollout depends only on its own seed.
"""

from __future__ import annotations

from actors.formatting import make_rollout, new_token_limit, prompt_token_ids, reward_token_ids
from pipeline.distributed.contract import PromptInput, Rollout, RolloutRequest, Score, ScoreRequest, scores_prefixes
from pipeline.distributed.grading import make_grader


def _device(settings: dict) -> str:
    import torch

    wanted = settings.get("device", "auto")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def _dtype(settings: dict):
    import torch

    name = settings.get("dtype", "auto")
    return "auto" if name == "auto" else getattr(torch, name)


class HFGenerator:
    def __init__(self, settings: dict):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = settings
        self.device = _device(settings)
        self.tokenizer = AutoTokenizer.from_pretrained(settings["model"])
        self.model = AutoModelForCausalLM.from_pretrained(settings["model"], dtype=_dtype(settings)).to(self.device).eval()
        self.state_tokens = int(settings["state_tokens"])
        self.max_tokens = int(settings["max_tokens"])
        self.grader = make_grader(settings.get("grading", "math_verify"))
        stop = list(settings.get("stop") or [])
        self._stop = {"stop_strings": stop, "tokenizer": self.tokenizer} if stop else {}
        self._prompt_ids: dict[str, list[int]] = {}

    def prompt_ids(self, prompt: PromptInput) -> list[int]:
        if prompt.prompt_id not in self._prompt_ids:
            self._prompt_ids[prompt.prompt_id] = prompt_token_ids(self.tokenizer, prompt, self.settings)
        return self._prompt_ids[prompt.prompt_id]

    def generate(self, requests: list[RolloutRequest]) -> list[Rollout]:
        return [self._one(r) for r in requests]

    def _one(self, request: RolloutRequest) -> Rollout:
        import torch

        state_ids = list(request.state.token_ids) if request.state else []
        ids = self.prompt_ids(request.prompt) + state_ids
        torch.manual_seed(request.seed)
        with torch.no_grad():
            output = self.model.generate(
                torch.tensor([ids], device=self.device), attention_mask=torch.ones(1, len(ids), device=self.device),
                do_sample=True, max_new_tokens=new_token_limit(request, self.max_tokens),
                temperature=self.settings.get("temperature", 1.0), top_p=self.settings.get("top_p", 1.0),
                repetition_penalty=self.settings.get("repetition_penalty", 1.0),
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id, **self._stop)
        generated = output[0, len(ids):].tolist()
        eos = self.tokenizer.eos_token_id
        finish = "stop" if eos is not None and generated and generated[-1] == eos else "length"
        return make_rollout(request, generated, self.tokenizer, self.state_tokens, self.grader, finish, len(ids),
                            max_tokens=self.max_tokens)


class HFRewardModel:
    def __init__(self, settings: dict):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.settings = settings
        self.device = _device(settings)
        self.tokenizer = AutoTokenizer.from_pretrained(settings["model"])
        self.model = AutoModelForSequenceClassification.from_pretrained(
            settings["model"], dtype=_dtype(settings), num_labels=1).to(self.device).eval()
        self.batch_size = int(settings.get("batch_size", 16))
        self.max_length = int(settings.get("max_length", 4096))

    @scores_prefixes
    def score(self, requests: list[ScoreRequest]) -> list[Score]:
        ids = [reward_token_ids(self.tokenizer, r.prompt.text, r.response_text, self.max_length) for r in requests]
        return [Score(r.request_id, reward, num_tokens=len(i)) for r, reward, i in zip(requests, self.score_ids(ids), ids)]

    def score_ids(self, ids: list[list[int]]) -> list[float]:
        """Scores of token sequences, batched by length: the logit at each sequence's last token."""
        import torch

        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        scores = [0.0] * len(ids)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            width = max(len(ids[i]) for i in batch)
            tokens = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, i in enumerate(batch):
                tokens[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            # The head is applied at each row's last real token ourselves: HF's own pooling looks for
            # pad_token_id, which is often the EOS we append, and would pick the wrong position.
            head = getattr(self.model, "score", None) or self.model.classifier
            with torch.no_grad():
                hidden = self.model.base_model(input_ids=tokens.to(self.device), attention_mask=mask.to(self.device))[0]
                last = mask.sum(dim=1).to(self.device) - 1
                logits = head(hidden[torch.arange(len(batch), device=self.device), last])
            for row, i in enumerate(batch):
                scores[i] = float(logits[row, 0])
        return scores
