"""Adaptive SLG (``slg_adaptive``): a large prompt sample, successive halving of its best states,
each step checked against fresh prompt draws, the rest of the budget to the best survivor.

Pure numpy. The split of the budget is :func:`adaptive_plan` (decided before any reward is seen);
the statistics (the predicted final best, the prompt's quantile scale) are in ``pipeline.stats``.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np

from pipeline.search.base import SearchPolicy, _cut_at, _stack_samples
from pipeline.search.config import AdaptiveConfig, Predictor
from pipeline.search.protocol import NO_NODE, ROOT, Request, Rollouts
from pipeline.stats.final_best import expected_final_best
from pipeline.stats.quantile_scale import QuantileScale
from pipeline.stats.tail import fit_tail_full_rows, tail_constants


class AdaptiveSLG(SearchPolicy):
    """Adaptive SLG: a large prompt sample, successive halving of its best states, each step checked
    against fresh prompt draws (``adaptive_plan`` gives the split, ``AdaptiveConfig`` the settings).

    Every node is valued by its predicted *final* best, E[max(b, max of the n rollouts left)], b the
    best reward so far, on the prompt's own quantile scale (``pipeline.stats.quantile_scale``): there the
    prompt is standard normal by construction and a state is normal with the mean and sd of its
    rewards' scores. After each round a state is dropped when the prompt beats it even with its mean
    and sd at their upper confidence bounds (a plan's single round is played in steps of at most
    2 ``min_rollouts``, each followed by this check). The best survivor gets the rest of the budget if
    its value at its estimated mean and sd beats fresh prompt draws; otherwise, as where no state
    is left, the rest is drawn from the prompt (best-of-N). Where the states' own rewards have tails
    heavier than normal (``heavy_tailed_states``), that comparison neither drops a state above an
    average prompt draw nor keeps the rest from it (``heavy_tail_check``).
    """

    name = "slg_adaptive"

    def _search(self):
        budget, batch, settings = self.budget, self.batch_size, self.config.adaptive
        plan = adaptive_plan(budget, settings, self.config.schedule(budget)[1])
        if plan is None:  # too small a budget to learn anything about a state: best-of-N
            yield [Request.uniform(ROOT, budget, batch)]
            return
        (root,) = yield [Request.uniform(ROOT, plan.root_rollouts, batch)]
        yield from self._explore_and_exploit(root, plan, np.zeros(batch, dtype=bool))

    def _explore_and_exploit(self, root: Rollouts, plan: AdaptivePlan, elsewhere: np.ndarray):
        """The rounds after the root: screening and halving of candidate states, then the rest of the
        budget to the best survivor or the prompt. Episodes marked ``elsewhere`` are spent by the
        caller: they get no requests here."""
        if elsewhere.all():  # nothing to screen (the driver's one-episode searches, most of ``slg_share``'s)
            return
        budget, batch, settings = self.budget, self.batch_size, self.config.adaptive
        rewards = np.where(np.isnan(root.rewards), -np.inf, root.rewards)
        best = rewards.max(axis=1)
        scale = QuantileScale(root.rewards, settings.tail_fraction)
        states = self._pick_states(root, plan.num_candidates, stable=False)
        # A best prompt reward reached twice is an atom of a discrete reward: only a new level can
        # beat it, and for "at least one rollout above it" independent prompt draws beat a state's
        # correlated ones unless the state is known to be better, which no tail fit of ties shows.
        alive = (states != NO_NODE) & ~((rewards == best[:, None]).sum(axis=1) >= 2)[:, None] & ~elsewhere[:, None]
        samples = np.full((batch, plan.num_candidates, sum(plan.shares)), np.nan)
        scores = np.full(samples.shape, np.nan)  # the samples on the prompt's quantile scale
        filled = 0
        spent = np.full(batch, plan.root_rollouts)
        value = np.full(alive.shape, -np.inf)
        prompt_value = np.full(alive.shape, np.inf)
        heavy = np.zeros(alive.shape, dtype=bool)
        for round_index, share in enumerate(plan.shares):
            asked = np.nonzero(alive.any(axis=0))[0]  # one request per candidate some episode still keeps
            if asked.size == 0:  # an empty round would end the search (``plan`` returns [] when done)
                break
            results = yield [Request.per_episode(np.where(alive[:, j], states[:, j], NO_NODE), share) for j in asked]
            for j, rollouts in zip(asked, results):
                got = rollouts.rewards[:, :share]
                samples[:, j, filled:filled + got.shape[1]] = np.where(alive[:, j:j + 1], got, np.nan)
            b_idx, j_idx = np.nonzero(alive)
            scores[b_idx, j_idx, filled:filled + share] = scale.scores(samples[b_idx, j_idx, filled:filled + share], b_idx)
            filled += share
            spent += share * alive.sum(axis=1)
            best = np.fmax(best, np.nanmax(samples[:, :, filled - share:filled], axis=(1, 2), initial=-np.inf))
            best_score = scale.scores(best[:, None])[:, 0]
            value, optimistic, prompt_value = self._final_best(scores[:, :, :filled], alive, best_score, budget - spent)
            if settings.heavy_tail_check:  # no normal fit says the prompt beats these (``_beyond_the_normal_fits``)
                heavy = _beyond_the_normal_fits(samples[:, :, :filled], root.rewards)
            alive &= (optimistic >= prompt_value) | heavy  # fresh prompt draws beat it even optimistically
            if plan.halving[round_index]:  # successive halving
                keep = np.ceil(alive.sum(axis=1) * settings.keep_fraction).astype(np.int64)
                rank = np.argsort(np.argsort(np.where(alive, -value, np.inf), axis=1, kind="stable"), axis=1)
                alive &= rank < keep[:, None]
        rows = np.arange(batch)
        pick = np.argmax(np.where(alive, value, -np.inf), axis=1)
        # Optimism keeps a state in the rounds, where its next rollouts still teach something; the
        # rest of the budget goes to it only where its own estimate beats fresh prompt draws, or
        # where heavy tails leave that estimate nothing to say.
        use_state = (alive[rows, pick] & ((value[rows, pick] >= prompt_value[rows, pick]) | heavy[rows, pick])
                     & self._shows_next_level(root.rewards, samples[rows, pick], best))
        # episodes spent elsewhere keep what their caller selected and predicted (its rounds may end before these)
        self.selected = np.where(elsewhere, self.selected, np.where(use_state, states[rows, pick], ROOT))
        left = np.where(elsewhere, 0, budget - spent)
        self.selected_prediction = np.where(elsewhere, self.selected_prediction,
                                            self._predicted_best(root.rewards, samples[rows, pick], scale.tail_fit, use_state, left))
        if (left > 0).any():
            yield [Request.per_episode(np.where(left > 0, self.selected, NO_NODE), left)]

    def _final_best(self, scores, alive, best_score, left):
        """(value, optimistic, prompt value), each (B, C): the predicted final best of sending the
        ``left`` rollouts to each alive state, the same with the state's mean and sd at their upper
        ``confidence`` bounds, and that of sending them to the prompt; all on the prompt's quantile
        scale, where the prompt is N(0, 1) and a state the normal fitted to the upper tail of its
        rewards' scores. -inf where a state is not alive."""
        z = self.config.adaptive.confidence
        value = np.full(alive.shape, -np.inf)
        optimistic = np.full(alive.shape, -np.inf)
        prompt_value = np.full(alive.shape, np.inf)
        b_idx, j_idx = np.nonzero(alive)
        if b_idx.size == 0:
            return value, optimistic, prompt_value
        if (left[b_idx] < 1).all():  # nothing left to send (N = 12-20 with the defaults): every final best is the best so far
            value[b_idx, j_idx] = optimistic[b_idx, j_idx] = prompt_value[b_idx, j_idx] = best_score[b_idx]
            return value, optimistic, prompt_value
        # SLG's own estimator on the prompt's scale: the normal fitted to the upper tail of a state's
        # scores (what its maximum depends on), its moments' standard errors from the tail's size.
        q = self.config.adaptive.tail_fraction
        _, lam, delta = tail_constants(q)
        mu, sigma, n_tail = self._fit_scores(scores[b_idx, j_idx], q)
        n_tail = np.maximum(n_tail, 2)
        upper_sigma = sigma * (1.0 + z / np.sqrt(2.0 * (n_tail - 1)))  # sd of an sd: sd / sqrt(2(k-1))
        upper_mu = mu + sigma * lam + z * sigma * np.sqrt(delta / n_tail) - upper_sigma * lam  # tail mean + z se
        k = b_idx.size
        u = expected_final_best(np.concatenate([mu, upper_mu, np.zeros(k)]),
                                np.concatenate([sigma, upper_sigma, np.ones(k)]),
                                np.tile(best_score[b_idx], 3), np.tile(left[b_idx], 3))
        value[b_idx, j_idx], optimistic[b_idx, j_idx], prompt_value[b_idx, j_idx] = u[:k], u[k:2 * k], u[2 * k:]
        return value, optimistic, prompt_value

    @staticmethod
    def _fit_scores(scores, tail_fraction):
        """(mu, sigma, n_tail) of each row's tail fit; a row holding NaN (a dropped score) is fitted on
        the values it has, alone (sigma 0 where it has none). So each row's fit is the same to the
        bit whatever the other rows hold and however wide they are: the driver plays several
        searches' episodes in one policy, and a sum over a row's padding rounds by its length."""
        missing = np.isnan(scores).any(axis=1)
        if not missing.any():
            return fit_tail_full_rows(scores, tail_fraction)
        mu, sigma, n_tail = np.empty(len(scores)), np.empty(len(scores)), np.empty(len(scores), dtype=np.int64)
        if not missing.all():
            mu[~missing], sigma[~missing], n_tail[~missing] = fit_tail_full_rows(scores[~missing], tail_fraction)
        for row in np.flatnonzero(missing):  # (rare: a dropped score)
            values = scores[row][~np.isnan(scores[row])]
            (mu[row],), (sigma[row],), (n_tail[row],) = fit_tail_full_rows(values[None, :], tail_fraction)
        sigma[missing] = np.nan_to_num(sigma[missing])
        return mu, sigma, n_tail

    @staticmethod
    def _shows_next_level(root_rewards, state_rewards, best):
        """False where the best reward is tied (an atom of a discrete reward) and the state never beat
        every prompt rollout: no tail model can tell whether it reaches the next level, fresh draws
        can. Continuous rewards are never tied, so this only ever concerns discrete ones."""
        tied = ((root_rewards == best[:, None]).sum(axis=1) + (state_rewards == best[:, None]).sum(axis=1)) >= 2
        state_top = np.max(np.where(np.isnan(state_rewards), -np.inf, state_rewards), axis=1)
        return ~tied | (state_top > np.nanmax(root_rewards, axis=1))

    def _predicted_best(self, root_rewards, state_rewards, root_fit, use_state, left):
        """Predicted V_n (reward units, n = the rollouts left) of the selected node, for the results:
        mu + sigma E(n) from its tail fit (the same q as the prompt's); with ``reported_predictor=blended``,
        the shared predictor's from the node's rewards (the prompt's root sample, or the state's)."""
        both = _stack_samples([root_rewards, state_rewards], max(root_rewards.shape[1], state_rewards.shape[1]))
        if self.config.reported_predictor == Predictor.blended:
            chosen = both[np.arange(len(use_state)), use_state.astype(np.int64)]  # column 1: the state's
            return self._predict_blended(chosen[:, None, :], left).value[:, 0]
        mu, sigma, _ = root_fit
        if use_state.any():
            chosen = state_rewards[use_state]
            width = int(np.flatnonzero(~np.isnan(chosen).all(axis=0)).max(initial=-1)) + 1  # past it: rounds not run
            state_mu, state_sigma, _ = self._fit_scores(chosen[:, :width], self.config.adaptive.tail_fraction)
            mu, sigma = np.where(use_state, 0.0, mu), np.where(use_state, 0.0, sigma)
            mu[use_state], sigma[use_state] = state_mu, state_sigma
        values = expected_final_best(mu, sigma, np.full(mu.shape, -np.inf), np.maximum(left, 1))  # mu + sigma E(n)
        return _cut_at(values[:, None], self._episode_bounds(both))[:, 0]


HEAVY_TAIL_SDS = 4.0           # "far above its state": this many robust sds above the state's median
HEAVY_TAIL_RATE = 0.005        # heavy where at least this share of the states' rewards lie that far
HEAVY_TAIL_MIN_FAR = 2         # ... and at least this many of them (one is an outlier)
HEAVY_TAIL_MIN_REWARDS = 100   # ... of at least this many rewards, pooled over the states
HEAVY_TAIL_MIN_PER_STATE = 16  # the states with at least this many rewards (a median and quartiles worth the name)


def heavy_tailed_states(samples: np.ndarray) -> np.ndarray:
    """(B,) whether the states' own rewards have upper tails heavier than normal, from their samples
    (B, C, S) (NaN where none): over the states with ``HEAVY_TAIL_MIN_PER_STATE`` rewards or more
    and a positive interquartile range (at least ``HEAVY_TAIL_MIN_REWARDS`` rewards in all), at
    least ``HEAVY_TAIL_MIN_FAR`` of those rewards, and ``HEAVY_TAIL_RATE`` of them, lie more than
    ``HEAVY_TAIL_SDS`` robust sds above their own state's median. A state's robust sd is its
    interquartile range / 1.349, or the median of those over the states where that is larger (a
    state's few rewards can have a tiny range; a saturating reward's states near the bound have
    one, and the typical one alone would make the others' rewards look far). A Student-t noise with
    df = 3 puts 1.0% of its draws that far, a normal one 3e-5: rows of 8-40 normal states with
    16-32 rewards each are flagged in at most 0.4% of cases, Student-t ones in 34-83%
    (docs/design-record.md, "slg_adaptive's heavy-tail check"). A heavy noise common to every state makes any state above an
    average prompt draw beat fresh prompt draws in the far tail, where a normal fit of its rewards
    sees a narrow state that the prompt's spread beats."""
    return _heavy_tails(samples)[0]


def _heavy_tails(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``heavy_tailed_states`` and each state's median reward (B, C), NaN where a state has none;
    None where no state has ``HEAVY_TAIL_MIN_PER_STATE`` rewards (then no episode is heavy)."""
    batch, _, width = samples.shape
    if width < HEAVY_TAIL_MIN_PER_STATE:
        return np.zeros(batch, dtype=bool), None
    counts = (~np.isnan(samples)).sum(axis=2)
    if not (counts >= HEAVY_TAIL_MIN_PER_STATE).any():
        return np.zeros(batch, dtype=bool), None
    ordered = np.sort(samples, axis=2)  # NaN sorts last: each state's rewards lead its row
    low, median, high = (_quantile_of_sorted(ordered, counts, q) for q in (0.25, 0.5, 0.75))
    usable = (counts >= HEAVY_TAIL_MIN_PER_STATE) & (high > low)  # a state that repeats one reward has no width
    own_sd = np.where(usable, (high - low) / 1.349, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows without a usable state
        # a state's own robust sd, or the states' median one where its own few rewards give less
        robust_sd = np.fmax(own_sd, np.nanmedian(own_sd, axis=1)[:, None])
        far = (samples - median[..., None] > HEAVY_TAIL_SDS * robust_sd[..., None]) & usable[..., None]
    pooled = np.where(usable, counts, 0).sum(axis=1)
    count = far.sum(axis=(1, 2))
    heavy = (pooled >= HEAVY_TAIL_MIN_REWARDS) & (count >= HEAVY_TAIL_MIN_FAR) & (count >= HEAVY_TAIL_RATE * pooled)
    return heavy, median


def _quantile_of_sorted(ordered: np.ndarray, counts: np.ndarray, q: float) -> np.ndarray:
    """The q-quantile of each row's first ``counts`` values of ``ordered`` (sorted along the last axis),
    interpolated linearly as numpy's default (``np.percentile``); NaN where a row has none. A
    vectorised ``np.nanpercentile``, which loops in Python over the rows that hold NaN."""
    position = np.maximum(counts - 1, 0) * q
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, np.maximum(counts - 1, 0))
    low = np.take_along_axis(ordered, below[..., None], axis=-1)[..., 0]
    high = np.take_along_axis(ordered, above[..., None], axis=-1)[..., 0]
    with np.errstate(invalid="ignore"):
        return np.where(counts > 0, low + (high - low) * (position - below), np.nan)


def _beyond_the_normal_fits(samples: np.ndarray, root_rewards: np.ndarray) -> np.ndarray:
    """(B, C): the states (samples (B, C, S), NaN where none) that no normal fit can show fresh prompt
    draws to beat: in an episode whose states' own tails are heavier than normal
    (``heavy_tailed_states``), those whose median reward lies above the root's, an average prompt
    draw's."""
    heavy, state_median = _heavy_tails(samples)
    if not heavy.any():  # the usual case: no root median to take
        return np.zeros(samples.shape[:2], dtype=bool)
    root_median = _quantile_of_sorted(np.sort(root_rewards, axis=1), (~np.isnan(root_rewards)).sum(axis=1), 0.5)
    with np.errstate(invalid="ignore"):  # NaN: a state with no rewards is not above
        return heavy[:, None] & (state_median > root_median[:, None])


@dataclass(frozen=True)
class AdaptivePlan:
    """How ``slg_adaptive`` splits budget N before it sees any reward."""

    root_rollouts: int        # drawn from the prompt first
    num_candidates: int       # the best root rollouts, screened as states
    shares: tuple[int, ...]   # rollouts per surviving candidate in each round
    halving: tuple[bool, ...]  # per round: whether the best half of the survivors is kept after it


@functools.lru_cache(maxsize=4096)
def _cached_plan(budget: int, root_fraction: float, min_root_rollouts: int, explore_fraction: float,
                 screening_fraction: float, keep_fraction: float, min_rollouts: int, num_candidates: int) -> AdaptivePlan | None:
    root = max(round(root_fraction * budget), min(budget - min_rollouts, min_root_rollouts))
    if root < 2 * min_rollouts or budget - root < min_rollouts:
        return None
    explore = max(int(explore_fraction * budget) - root, min_rollouts)
    most = max(1, min(num_candidates, root // 2))  # from the root's upper half
    # The most candidates whose screening samples hold 2 min_rollouts (a state's first fit then has
    # 8 points with the defaults); failing that, two with min_rollouts each rather than one with more (the
    # rollouts of one state are correlated, so one state's many rollouts risk more than two's few).
    for screening_minimum in (2 * min_rollouts, min_rollouts):
        for candidates in range(most, 1, -1):
            shares = _halving_shares(candidates, explore, screening_fraction, keep_fraction)
            if shares[0] >= screening_minimum and min(shares) >= min_rollouts:
                return _with_checks(root, candidates, shares, min_rollouts)
    return _with_checks(root, 1, (explore,), min_rollouts)


def _with_checks(root: int, candidates: int, shares: tuple[int, ...], min_rollouts: int) -> AdaptivePlan:
    """The plan, with a single round cut into near-equal steps of at most 2 ``min_rollouts`` (the
    sample of a state's first fit) and no halving between them: the prompt check after each step
    drops a state the prompt beats before it has spent the whole round (N = 12..94 and 96 with the
    defaults: one or two candidates, up to 23 rollouts each). Several rounds already check after
    each. Steps of ``min_rollouts`` cost the driver about half as much again per rollout at N = 64
    (``slg bench``) and gave up some of gaussian's gain for a little in a world of narrow states."""
    if len(shares) > 1:
        return AdaptivePlan(root, candidates, shares, (True,) * (len(shares) - 1) + (False,))
    steps = max(1, -(-shares[0] // (2 * min_rollouts)))
    split = tuple(shares[0] // steps + (i < shares[0] % steps) for i in range(steps))
    return AdaptivePlan(root, candidates, split, (False,) * steps)


def _halving_shares(candidates: int, explore: int, screening_fraction: float, keep_fraction: float) -> tuple[int, ...]:
    rounds = math.ceil(math.log(candidates) / -math.log(keep_fraction))
    if rounds == 1:
        return (explore // candidates,)
    survivors = [candidates]
    for _ in range(rounds - 1):
        survivors.append(max(1, math.ceil(survivors[-1] * keep_fraction)))
    screening = int(screening_fraction * explore)
    return (screening // candidates,) + tuple((explore - screening) // ((rounds - 1) * s) for s in survivors[1:])


def adaptive_plan(budget: int, settings: AdaptiveConfig, default_states: int) -> AdaptivePlan | None:
    """The split of ``slg_adaptive`` at budget N; None where it is plain best-of-N.

    Root: ``root_fraction`` of N, but at least ``min_root_rollouts`` (the sample the prompt's
    quantile scale is built from) where N leaves ``min_rollouts`` besides. Best-of-N when the root
    would hold fewer than 2 ``min_rollouts`` or leave fewer than ``min_rollouts`` (N < 12 with the
    defaults): no state could get a sample worth comparing with the prompt's. Candidates: the best
    root rollouts, at most ``num_candidates`` (2K) and no more than the root's upper half holds.
    Halving: R = ceil(log_{1/keep} C) rounds share the exploration budget (``explore_fraction`` of N
    minus the root); the first round (screening every candidate) gets ``screening_fraction`` of it,
    the others share the rest equally, each round's survivors getting equal shares; fewer
    candidates are tried until the screening share holds 2 ``min_rollouts`` (a state's tail fit
    then has ``min_rollouts`` points) and every later share ``min_rollouts``; where no two can,
    two with ``min_rollouts`` each, else one with the whole exploration budget. A single round is
    played in steps of at most 2 ``min_rollouts``, each followed by the prompt check. The rest is
    exploited.
    """
    wanted = settings.num_candidates or 2 * max(default_states, 1)
    return _cached_plan(int(budget), settings.root_fraction, settings.min_root_rollouts, settings.explore_fraction,
                        settings.screening_fraction, settings.keep_fraction, settings.min_rollouts, int(wanted))
