"""Methods compared at equal cost in generated tokens: the N each method plays so that it generates
what best-of-N generates at a budget.

Pure numpy (replay underneath). Best-of-N at budget N generates N whole responses, ``N x
mean_response_tokens`` tokens on average (``pipeline.offline.responses.TokenModel``). Another method
costs a different number of tokens per rollout: ``slg``'s rollouts from a state do not generate the
state's T tokens again, and ``spec_rejection`` stops most of its responses early. At equal tokens
each method plays the N whose mean generated tokens per episode are best-of-N's at the budget: found
by pilot replays (a slice of the prompts and repeats) at the budget, then at the N that its tokens
per rollout suggest, once more for the curvature; the final replay reports the tokens each method
actually spent beside its result, so how close the match came is in the table.

This is the comparison ``slg replay --equal-tokens`` makes. Episodes at one budget draw from common
streams whatever N each method plays (``replay_tasks.play``), so differences are paired by episode.
"""

from __future__ import annotations

from pipeline.offline.bank_reader import as_bank
from pipeline.offline.replay import replay_many
from pipeline.offline.responses import TokenModel
from pipeline.offline.worlds import World

PILOT_PROMPTS = 100   # world prompts (or bank prompts, at most) of a pilot
PILOT_REPEATS = 10    # repeats per prompt of a pilot
PILOT_ROUNDS = 2      # proportional steps from N = budget


def match_budgets(targets: dict, methods: list[str], budgets: list[int], repeats: int, num_prompts: int | None,
                  seed: int, config, tokens: TokenModel | None = None, workers: int | None = None) -> dict:
    """``{label: {(method, budget): N}}``: the N each method plays at each budget to generate, on
    average, best-of-N's tokens at that budget (``budget x mean_response_tokens``); bon plays the budget."""
    tokens = tokens or TokenModel()
    pilots = {label: target if isinstance(target, World) else as_bank(target, label).head(PILOT_PROMPTS)
              for label, target in targets.items()}
    pilot_prompts = None if num_prompts is None else min(num_prompts, PILOT_PROMPTS)
    others = [m for m in methods if m != "bon"]
    maps = {label: {(m, b): b for m in methods for b in budgets} for label in targets}
    for _ in range(PILOT_ROUNDS if others else 0):
        found = replay_many(pilots, others, budgets, min(repeats, PILOT_REPEATS), pilot_prompts, seed + 1, config,
                            workers, tokens=tokens, budget_maps=maps)
        for label, results in found.items():
            for result in results:
                goal = result.budget * tokens.mean_response_tokens
                played = maps[label][(result.method, result.budget)]
                maps[label][(result.method, result.budget)] = max(1, round(played * goal / max(result.tokens_mean, 1.0)))
    return maps
