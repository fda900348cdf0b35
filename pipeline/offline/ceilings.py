"""How much an allocation between the prompt and its states could gain, if it knew what it cannot:
two ceilings that ``slg replay`` reports beside the methods it plays.

Pure numpy. A prompt's arms are the prompt itself (a fresh state each draw) and its states (a bank's
states, merged by prefix; a world's sampled states), each with its reward distribution known.

- **clairvoyant**: every state free to use from the start, the N draws shared among the arms so as
  to maximise the expected best (``pipeline.stats.arms.allocate_draws``). No policy can do better.
- **paid discovery**: the first ``discovery_fraction`` of N are prompt draws; each reveals its state
  and its reward. The rest are shared optimally among the prompt and the revealed states, knowing
  their distributions and the best reward already drawn. Averaged over ``draws`` random discoveries.
  It pays for finding states as a real policy must, and still knows what a policy must estimate.

The gap between the methods and these two is the cost of not knowing the distributions.
``slg replay`` computes them per prompt, a task per chunk of a bank and budget
(``pipeline.offline.replay_tasks.ceilings``), and averages them over the prompts.
"""

from __future__ import annotations

import numpy as np

from pipeline.offline.episodes import BankPrompt
from pipeline.stats.arms import allocate_draws, common_support, expected_best

DISCOVERY_FRACTION = 0.25
DISCOVERY_DRAWS = 64  # Monte Carlo discoveries per prompt and budget


class PromptArms:
    """A prompt's arms on one support: CDFs of its states (states, K) and of the prompt (K,)."""

    def __init__(self, prompt: BankPrompt):
        self.prompt = prompt
        self.values, self.state_cdfs = common_support(prompt.state_rewards)
        self.prompt_cdf = prompt.state_weights @ self.state_cdfs

    def clairvoyant(self, budget: int) -> float:
        cdfs = np.vstack([self.prompt_cdf, self.state_cdfs])
        return expected_best(self.values, cdfs, allocate_draws(self.values, cdfs, budget))

    def paid_discovery(self, budget: int, rng: np.random.Generator, draws: int = DISCOVERY_DRAWS,
                       discovery_fraction: float = DISCOVERY_FRACTION) -> float:
        found = max(1, round(discovery_fraction * budget))
        rest = budget - found
        prompt = self.prompt
        total = 0.0
        for _ in range(draws):
            states = np.searchsorted(prompt.cumulative_weights, rng.random(found) * prompt.cumulative_weights[-1],
                                     side="right").clip(max=prompt.num_states - 1)
            picks = (rng.random(found) * prompt.lengths[states]).astype(np.int64)
            best = float(prompt.rewards[prompt.offsets[states] + picks].max())
            if rest == 0:
                total += best
                continue
            cdfs = np.vstack([self.prompt_cdf, self.state_cdfs[np.unique(states)]])
            total += expected_best(self.values, cdfs, allocate_draws(self.values, cdfs, rest, best), best)
        return total / draws


def format_ceilings(rows: list[dict]) -> str:
    lines = [f"{'ceiling':<16}{'N':>7}  {'mean best reward':>26}  {'multiplier':>10}"]
    for r in rows:
        multiplier = r["compute_multiplier"] if isinstance(r["compute_multiplier"], str) else f"{r['compute_multiplier']:.2f}x"
        lines.append(f"{r['ceiling']:<16}{r['budget']:>7}  {r['mean_best_reward']:>26.4f}  {multiplier:>10}")
    return "\n".join(lines)
