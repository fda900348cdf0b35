"""How much an allocation between the prompt and its states could gain, if it knew what it cannot:
two ceilings that ``slg replay`` reports beside the methods it plays.

Pure numpy. A prompt's arms are the prompt itself (a fresh state each draw) and its states (a bank's
states, merged by prefix; a world's sampled states), each with its reward distribution known.

- **clairvoyant**: every state free to use from the start (on a world, as many as N rollouts could
  reveal), the N draws shared among the arms so as to maximise the expected best
  (``pipeline.stats.arms.allocate_draws``). No allocation fixed in advance can do better; a policy
  that adapts to the rewards it sees could in principle, knowing the distributions.
- **paid discovery**: the first ``discovery_fraction`` of N (``DISCOVERY_FRACTION``, a quarter, unless
  ``slg replay --discovery-fraction`` says; at least one draw) are prompt draws; each reveals its state
  and its reward. The rest are shared optimally among the prompt and the revealed states, knowing
  their distributions and the best reward already drawn. Averaged over ``draws`` random discoveries
  (``CEILING_SAMPLES`` unless ``slg replay --ceiling-samples`` says),
  as best-of-N's exact value plus the mean gain of that share over giving the whole rest to the
  prompt after the same discovery (a control variate: ``pipeline.stats.monte_carlo``), and reported
  with its Monte Carlo error.
  It pays for finding states as a real policy must, and still knows what a policy must estimate.

The gap between the methods and these two is the cost of not knowing the distributions.
``slg replay`` computes them per prompt and averages them over the prompts: on a bank a task per
chunk of prompts and budget (``pipeline.offline.replay_tasks.ceilings``), on a world over fresh
prompts (``world_ceilings``).
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.offline.episodes import BankPrompt
from pipeline.offline.multipliers import format_multiplier, format_multiplier_range, interval_digits
from pipeline.offline.per_prompt import chunk_ceilings
from pipeline.offline.worlds import World
from pipeline.stats.arms import allocate_draws, common_support, expected_best
from pipeline.stats.monte_carlo import MonteCarloMean, control_variate_mean

DISCOVERY_FRACTION = 0.25
CEILING_SAMPLES = 64  # Monte Carlo samples of an estimated ceiling: discoveries per bank prompt, fresh prompts of a world
MAX_SUPPORT = 8192    # distinct reward values a prompt's CDFs are computed on (a bank's prompt of 16 x 512 fits whole)


class PromptArms:
    """A prompt's arms on one support: CDFs of its states (states, K) and of the prompt (K,).

    A support of more than ``MAX_SUPPORT`` distinct rewards (a large bank: 64 states x 10^4 rewards
    hold about 6 x 10^5) is replaced by an even grid of ``MAX_SUPPORT`` points from the smallest
    reward to the largest, each CDF read at the grid points: every reward is then rounded up to the
    next grid point, so the clairvoyant ceiling stays a ceiling, higher by less than one grid step (the
    rewards' range / (MAX_SUPPORT - 1)); paid discovery, the difference of two values read on the grid
    added to best-of-N's exact one, is within a step either way. Without it the allocation's cost grows
    with the square of the arms times the support (minutes per prompt and budget at that size)."""

    def __init__(self, prompt: BankPrompt):
        self.prompt = prompt
        self.values, self.state_cdfs = common_support(prompt.state_rewards)
        if len(self.values) > MAX_SUPPORT:
            grid = np.linspace(self.values[0], self.values[-1], MAX_SUPPORT)
            at = np.searchsorted(self.values, grid, side="right") - 1  # the last support point at or below each
            self.values, self.state_cdfs = grid, self.state_cdfs[:, at]
        self.prompt_cdf = prompt.state_weights @ self.state_cdfs

    def clairvoyant(self, budget: int) -> float:
        cdfs = np.vstack([self.prompt_cdf, self.state_cdfs])
        return expected_best(self.values, cdfs, allocate_draws(self.values, cdfs, budget))

    def paid_discovery(self, budget: int, rng: np.random.Generator, draws: int = CEILING_SAMPLES,
                       discovery_fraction: float = DISCOVERY_FRACTION) -> MonteCarloMean:
        """The ceiling's estimate over ``draws`` discoveries, and its variance."""
        found = max(1, round(discovery_fraction * budget))
        rest = budget - found
        prompt = self.prompt
        if rest == 0:  # the discovery is the whole budget: best-of-N's own value, exactly
            return MonteCarloMean(float(prompt.bon_value(found)), 0.0)
        values, prompt_only = np.empty(draws), np.empty(draws)  # the rest shared optimally; all of it to the prompt
        for k in range(draws):
            states = np.searchsorted(prompt.cumulative_weights, rng.random(found) * prompt.cumulative_weights[-1],
                                     side="right").clip(max=prompt.num_states - 1)
            picks = (rng.random(found) * prompt.lengths[states]).astype(np.int64)
            best = float(prompt.rewards[prompt.offsets[states] + picks].max())
            cdfs = np.vstack([self.prompt_cdf, self.state_cdfs[np.unique(states)]])
            prompt_only[k] = expected_best(self.values, cdfs[:1], np.array([rest]), best)
            # the prompt alone is one share: at least its worth, whatever the allocation's search finds
            values[k] = max(expected_best(self.values, cdfs, allocate_draws(self.values, cdfs, rest, best), best), prompt_only[k])
        return control_variate_mean(values, prompt_only, float(prompt.bon_value(budget)))


class WorldArms:
    """One fresh prompt of a world, for its ceilings. A world's states are a continuum, so a ceiling's
    arms are the states it could know of: the clairvoyant ceiling gets N of them free (as many as N
    rollouts from the prompt can reveal: no policy sees more), paid discovery the
    ``discovery_fraction`` of N (a quarter by default) that its prompt draws reveal. Of those, the
    ``kept`` of highest true V_n (n the draws left to share) are the arms, with the prompt: the others
    would get few draws or none, so a value is a hair low at most. ``arms``: the latents of the last
    ceiling's states."""

    def __init__(self, world: World, rng: np.random.Generator, kept: int = 8):
        self.world, self.rng, self.kept = world, rng, kept
        self.arms = np.empty(0)
        self.prompt_only = float("nan")

    def clairvoyant(self, budget: int) -> float:
        return self._shared(self.world.sample_states(self.rng, (budget,)), budget)

    def paid_discovery(self, budget: int, discovery_fraction: float = DISCOVERY_FRACTION) -> float:
        """As ``PromptArms.paid_discovery``, one discovery; ``prompt_only``: what giving all the rest to
        the prompt would be worth after it (whose expectation is best-of-N's at N)."""
        found = max(1, round(discovery_fraction * budget))
        latents = self.world.sample_states(self.rng, (found,))
        rewards, _ = self.world.sample_rewards(self.rng, latents)
        best = float(rewards.max())
        if budget == found:
            self.prompt_only = best
            return best
        return self._shared(latents, budget - found, best)

    def _shared(self, latents: np.ndarray, draws: int, best: float = -np.inf) -> float:
        """The expected best of ``draws`` shared optimally among the prompt and the ``kept`` states of
        ``latents`` of highest V_draws, with ``best`` in hand (and ``prompt_only``: all of them to the prompt)."""
        self.arms = latents[np.argsort(-self.world.state_value(latents, draws))[:self.kept]]
        values = world_grid(self.world, self.rng, self.arms, draws)
        cdfs = np.vstack([self.world.prompt_cdf(values), self.world.state_cdf(self.arms, values)])
        self.prompt_only = expected_best(values, cdfs[:1], np.array([draws]), best)
        return max(expected_best(values, cdfs, allocate_draws(values, cdfs, draws, best), best), self.prompt_only)


def world_grid(world: World, rng: np.random.Generator, latents: np.ndarray, draws: int, points: int = 1500) -> np.ndarray:
    """A support for a world's CDFs, for the best of ``draws`` draws from the prompt or the states
    ``latents``: its levels where it has few, else an even grid from the prompt's 0.1% quantile to
    beyond the largest of many draws of the prompt and of the states (its step, about a thousandth of
    that span, bounds the error of the expected maxima computed on it), continued by as many points
    in geometric steps to where ``draws`` draws of any arm pass with a chance below ``TAIL_MISS``.
    The expected best counts every draw beyond the support's end as at the end: at N = 10^5 the even
    grid alone put the heavy world's clairvoyant ceiling at 59, below its best-of-N's exact 65."""
    if hasattr(world, "_values"):  # the discrete family: its levels are the support
        return np.asarray(world._values(), dtype=float)
    prompt, _ = world.sample_rewards(rng, world.sample_states(rng, (20000,)))
    states, _ = world.sample_rewards(rng, np.repeat(latents, 2000))
    top = max(prompt.max(), states.max())
    low, high = np.quantile(prompt, 0.001), top + (top - np.quantile(np.concatenate([prompt, states]), 0.99))
    if world.upper_bound is not None:
        return np.linspace(low, min(high, world.upper_bound), points)
    core = np.linspace(low, high, points)
    end = _beyond_the_best(world, latents, draws, high, high - low)
    if end <= high:
        return core
    return np.concatenate([core, high + (high - low) * (np.geomspace(1.0, 1.0 + (end - high) / (high - low), points + 1)[1:] - 1.0)])


TAIL_MISS = 1e-4  # the chance that the best of a ceiling's draws lies beyond its support


def _beyond_the_best(world: World, latents: np.ndarray, draws: int, start: float, step: float) -> float:
    """A reward that ``draws`` draws of the prompt, or of any state ``latents``, pass with a chance
    below ``TAIL_MISS`` (by the union bound): ``start`` or beyond it, in doubling steps."""
    end = start
    for _ in range(64):
        at = np.array([end])
        above = max(1.0 - float(world.prompt_cdf(at)[0]), float((1.0 - world.state_cdf(latents, at)).max(initial=0.0)))
        if draws * above < TAIL_MISS:
            return end
        end, step = end + step, 2.0 * step
    return end


def world_ceilings(world: World, budgets: list[int], num_prompts: int = CEILING_SAMPLES,
                   seed: int = 0, discovery_fraction: float = DISCOVERY_FRACTION) -> dict[int, dict[str, MonteCarloMean]]:
    """The ceilings for fresh prompts of a world (``WorldArms``): the mean over ``num_prompts``
    prompts and its variance (the Monte Carlo error), paid discovery (``discovery_fraction`` of N
    spent on discovery) with the same control variate as ``PromptArms.paid_discovery``. The interval
    leaves out the grid's own error (``world_grid``), most of which cancels between a discovery's two
    values, read on the same grid."""
    out = {}
    for budget in budgets:
        rng = np.random.default_rng([seed, budget])
        arms = [WorldArms(world, rng) for _ in range(num_prompts)]
        clairvoyant = np.array([a.clairvoyant(budget) for a in arms])
        paid = np.array([a.paid_discovery(budget, discovery_fraction) for a in arms])
        out[budget] = {"clairvoyant": MonteCarloMean(float(clairvoyant.mean()), float(clairvoyant.var(ddof=1)) / num_prompts),
                       "paid_discovery": control_variate_mean(paid, np.array([a.prompt_only for a in arms]),
                                                              world.prompt_value(budget))}
    return out


CEILINGS = ("clairvoyant", "paid_discovery")


def ceiling_row(name: str, budget: int, estimate: MonteCarloMean) -> dict:
    """A ceiling's row of ``slg replay``: its mean best reward and that mean's 95% half-width (0 where
    it is exact); ``slg replay`` adds the multipliers."""
    return {"ceiling": name, "budget": budget, "mean_best_reward": estimate.mean, "ci95": 1.96 * math.sqrt(estimate.variance),
            "compute_multiplier": None, "compute_multiplier_range": None}


def bank_ceiling_rows(values: np.ndarray, budget: int) -> list[dict]:
    """A bank's two ceiling rows from its prompts' (P, 3+) values (``replay_tasks.ceilings``): the
    clairvoyant ceiling exact, paid discovery with the Monte Carlo error of its prompts' discoveries."""
    prompts = len(values)
    return [ceiling_row("clairvoyant", budget, MonteCarloMean(float(np.mean(np.ascontiguousarray(values[:, 0]))), 0.0)),
            ceiling_row("paid_discovery", budget, MonteCarloMean(float(np.mean(np.ascontiguousarray(values[:, 1]))),
                                                                 float(np.sum(values[:, 2])) / prompts ** 2))]


def target_ceiling_rows(bounds: dict, label: str, budgets: list[int], target, seed: int, samples: int,
                        discovery_fraction: float) -> list[dict]:
    """A replay target's ceiling rows: a bank's from its chunks' tasks (``bounds[(label, budget)]``:
    (first prompt, (P, 4) values) pairs), a world's from ``samples`` fresh prompts, here."""
    if isinstance(target, World):
        found = world_ceilings(target, budgets, num_prompts=samples, seed=seed, discovery_fraction=discovery_fraction)
        return [ceiling_row(name, budget, found[budget][name]) for budget in budgets for name in CEILINGS]
    return [row for budget in budgets for row in bank_ceiling_rows(chunk_ceilings(bounds, label, budget), budget)]


def format_ceilings(rows: list[dict]) -> str:
    """One line per ceiling and N: its mean best reward, with the Monte Carlo interval of an estimated
    one (paid discovery; both on a world), its multiplier and that interval's range of multipliers."""
    lines = [f"{'ceiling':<16}{'N':>7}  {'mean best reward':>26}  {'multiplier':>10}  {'95%':>17}"]
    for r in rows:
        digits = interval_digits(r["ci95"])
        reward = f"{r['mean_best_reward']:.{digits}f}" + (f" +- {r['ci95']:.{digits}f}" if r["ci95"] > 0 else "")
        lines.append(f"{r['ceiling']:<16}{r['budget']:>7}  {reward:>26}  {format_multiplier(r['compute_multiplier']):>10}  "
                     f"{format_multiplier_range(r['compute_multiplier_range'] if r['ci95'] > 0 else None):>17}")
    return "\n".join(lines)
