"""SLG that shares (``slg_share``, the recommended method): the budget split between the prompt and one
state, where the rewards say a tail cannot be extrapolated or the budget is too small to screen
states; ``slg_adaptive`` elsewhere.

Pure numpy. Every episode starts with the same prompt draws (``slg_adaptive``'s root), each of which
reveals the state it passed through (root rollouts with one prefix are one state) and is scored; the
reward model also scores each revealed state's *prefix alone* (one short read per state, with its
root rollout's score: ``Rollouts.state_score``). The *share rounds* then top the root up to ``share.root_fraction`` of N
(where it is smaller), give one state ``share.state_share`` of what that fraction leaves (or what the
root left, if less) and fresh prompt draws the rest, in two halves: if the state's first half
averages below the root's rewards (a choice that misled), or only repeats the state (none above its
root rollouts, and one reward from 2 rollouts, fewer than 3 from 6; ``share.repeat_check``: a deep
or narrow state whose prefix fixes its response), or, on continuous rewards whose root shows states
narrower than the spread between them (or where the first half is far narrower than the root's
states), is beaten by fresh prompt draws even at its tail fit's upper confidence bounds (from 8
rollouts; ``share.prompt_check``, ``slg_adaptive``'s check of its candidates; from 3 to 7, a first
half that far narrower goes back unfitted), its second half goes to the prompt too.
Which episodes run them, and which state gets the share:

- **Rewards with few levels** (root rewards repeat: a reward model reading the same response gives
  the same score, and short responses repeat): a state's best-of-n stops at its top level, so no
  tail fit says how far it goes, and all-in on one state throws away what fresh prompt draws keep
  finding. The state whose prefix score plus ``share.reward_weight`` times its best root rollout's
  reward ranks first (each in root standard deviations) gets the share if its prefix score is
  ``share.prefix_gap`` root-reward standard deviations above an average prompt draw's, or (off by
  default) ``share.lead_gap`` of them above every other state the root drew, or off a grid it beats
  the average draw's and its root rollouts stayed below the best (``share.below_best_lead``, below),
  and either way no other state the root drew twice or more reads within ``share.rival_gap`` sds of
  it (a common rival, which fresh prompt draws reach as often: ``share_gate.has_a_common_rival``);
  otherwise the rest is best-of-N. The prefix score leads; the reward, at a quarter of its weight, favours a state whose
  rollout already reached a high level (``_best_prefix_state``). On a grid of levels (root
  rewards repeat across states: a verifier's or a judge's score) of narrow states, only the states
  whose root rollout reached the root's best reward are candidates (``share.grid_best_level``),
  unless prefix scores read the states more precisely than rollouts do.
  From N = ``share.full_share_from`` (64) up to ``share.commit_from`` the state gets all that the
  topped-up root leaves, not ``share.state_share`` of it (continuous rewards too, below), and its
  second half goes to the prompt where most of its first half is one reward (``share.modal_check``:
  a deep state; ``_shares_fully``). From N = ``share.commit_from`` (256) off a grid, the root
  (``adaptive.root_fraction`` of N) is not topped up and the state gets all it leaves, in the same
  two halves and with the same modal check (``_commits``). From N = ``share.ungated_from`` (128) off
  a grid the pick needs no prefix gap (``share_gate.off_a_grid_from``); below it, off a grid, it needs
  none where the state's root rollouts all stayed below the root's best reward and its prefix score
  beats the average draw's (``share.below_best_lead``, 0): the best so far is then another state's
  lucky draw, which the picked one has room to beat. At every N the pick gets no share where the
  root drew another state twice or more that reads as well (``share.rival_gap``: a common rival).
  Measured on banks of the toy models' real outputs (docs/results.md): never below best-of-N, and
  above it at most budgets, where winner-takes-all loses to it.
- **Continuous rewards at small budgets** (where ``slg_adaptive``'s plan halves its candidates at most
  once, N = 12-159 with the defaults: at most four candidates to screen), if prefix scores track
  rewards in the root (``prefix_slope`` at least ``share.min_prefix_slope``): the state whose prefix
  score and root reward together predict the highest mean (``best_evidence_state``) gets the share,
  or the state of the best root reward where the root says the states' upper tails fall as prefix
  scores rise (``share.width_check``, ``_evidence_state``).
  A candidate picked on its one reward alone is often a lucky draw of a mediocre state, and two
  candidates' few rollouts cannot tell (simulated worlds, before the full share: 2.05x -> 2.34x best-of-N
  on gaussian at N = 64, and states narrower than the prompt no longer lose to best-of-N; at N =
  97-159, where four candidates' screening round is most of what a narrow world's states cost,
  3.20x -> 3.48x on gaussian at 128, and 0.93x -> 1.49x where states are a fifth as wide). From N =
  ``share.full_share_from`` (64) the state gets all that the topped-up root leaves, as on few levels
  (gaussian at 128: 3.47x -> 3.95x; docs/design-record.md, "All of the half to the state, from N = 64"),
  but where the topped-up root shows narrow states (as ``share.narrow_states`` below): those keep
  ``share.state_share`` (gaussian sigma1 = 0.1 at 64: -0.060 -> -0.035 against best-of-N).
- **Continuous rewards at larger budgets, narrow states** (N >= 160, prefix scores that track
  rewards, and a root whose estimate of a state's own variance, Var(r) - Cov(s, r) over at least 32
  of its rollouts, is below ``share.narrow_states`` times Var(r)): the same share rounds and pick
  (the full share up to ``share.commit_from``, ``share.state_share`` from it).
  Such states' rewards barely spread beyond their means, so ``slg_adaptive``'s screening of several
  candidates only spends what fresh prompt draws would find (gaussian, states a sixth as wide as the
  spread: -0.032 -> +0.075 against best-of-N at N = 256; docs/design-record.md).
- **Continuous rewards otherwise** (larger budgets and states not narrow, or prefix scores that do
  not track rewards): a state's rewards have an upper tail that SLG's normal fit extrapolates, and
  screening then committing pays (21x best-of-N at N = 1000 on gaussian). These episodes run
  ``slg_adaptive``, but where prefix scores track rewards it screens the root rollouts that prefix
  score and reward together rank first, as the share rounds pick, not those of the best rewards
  (``share.evidence_candidates``, ``_pick_states``), unless the root says the states' upper tails
  fall as prefix scores rise (``share.width_check``, ``root_evidence.tails_fall``).

Without prefix scores (a bank that has none, an engine that cannot score them) every episode runs
``slg_adaptive``. Below N = 12 the policy is best-of-N, as ``slg_adaptive``.
"""

from __future__ import annotations

import numpy as np

from pipeline.search import reward_levels
from pipeline.search.adaptive import AdaptiveSLG, adaptive_plan
from pipeline.search.base import top_ranked
from pipeline.search.config import SearchConfig, StateSelection
from pipeline.search.protocol import NO_NODE, ROOT, Request, Rollouts, in_lockstep
from pipeline.search.root_evidence import (
    NARROW_MIN_PAIRS,
    best_evidence_state,
    best_reward_state,
    evidence_rank,
    first_half_far_narrower,
    in_sds,
    prefix_slope,
    root_moments,
    states_look_narrow,
    tails_fall,
    tails_fall_unsquashed,
    top_rollout,
)
from pipeline.search.share_gate import best_root_reward_of, clears_a_gate, off_a_grid_from
from pipeline.stats.quantile_scale import QuantileScale
from pipeline.stats.tail import expected_max_std_normal

# Continuous rewards: the share rounds run where slg_adaptive's plan halves its candidates at most this
# often (N = 12-159 with the defaults). With a second halving (N >= 160) screening pays on gaussian
# rewards; with one it does not (docs/design-record.md, "Up to N = 159").
SCREENING_HALVINGS = 1
# The prompt check also judges a first half whose variance is below this share of the root's estimate
# of a state's own variance, Var(r) - Cov(s, r), where that estimate is Cov(s, r) or more: prefix scores
# can rank first a narrow state of high mean where wide states of lower mean hold the best tails (sds
# 1.5 at mean -0.5 beside 0.2 at 0.5: -0.066 -> -0.0003 against best-of-N at N = 64; docs/design-record.md,
# "A first half far narrower than the root's states"). A state as wide as an exact estimate shows so
# narrow a first half once in 150,000 with 16 rewards (N = 64), once in 400 with 8 (N = 42-46); with
# 3-7 (N = 22-41) the threshold falls to keep that rate, 0.052 at 6 (N = 32: -0.193 -> -0.114; "Fewer
# than 8 rewards").
NARROW_FIRST_HALF = 0.1


class SharedSLG(AdaptiveSLG):
    name = "slg_share"

    def _search(self):
        budget, batch = self.budget, self.batch_size
        plan = adaptive_plan(budget, self.config.adaptive, self.config.schedule(budget)[1])
        if plan is None:  # too small a budget to learn anything about a state: best-of-N
            yield [Request.uniform(ROOT, budget, batch)]
            return
        # the root's prefixes are scored (and the top-up's): every pick reads them, nothing after does
        (root,) = yield [Request.uniform(ROOT, plan.root_rollouts, batch, score_prefixes=True)]
        few_levels = reward_levels.few_levels(root)
        moments = root_moments(root) if root.state_score is not None and root.state_index is not None else None
        by_evidence = ~few_levels & self._prefix_tracks(root, moments)
        screening_pays = sum(plan.halving) > SCREENING_HALVINGS
        if screening_pays and by_evidence.any():  # unless the states are narrow
            by_evidence &= states_look_narrow(root, self.config.share.narrow_states, moments)
        shared = few_levels | by_evidence
        yield from in_lockstep(self._share_rounds(root, moments, shared, by_evidence, small_budget=not screening_pays),
                               self._explore_and_exploit(root, plan, shared))

    def _share_rounds(self, root: Rollouts, moments: tuple, mine: np.ndarray, by_evidence: np.ndarray,
                      small_budget: bool):
        """The episodes ``mine``: more prompt draws up to ``share.root_fraction`` of N, then one
        state's share and fresh prompt draws, in two halves (the second only if the state's first
        half held up against the root and did not only repeat itself). The state is the best-prefix
        one, or in the episodes ``by_evidence`` the one that prefix score and root reward together
        rank first (``_evidence_state``). ``moments``: ``root_moments(root)``. ``small_budget``: N below where
        ``slg_adaptive``'s plan halves twice (160)."""
        if not mine.any():
            return
        settings, budget = self.config.share, self.budget
        drawn = root.rewards.shape[1]  # the root request's count (a dropped score leaves a NaN, not a gap)
        committed = self._commits(root, mine & ~by_evidence)
        full = self._shares_fully(mine & ~committed)
        more = np.where(mine & ~committed, max(0, min(budget, round(settings.root_fraction * budget)) - drawn), 0)
        if more.any():
            (extra,) = yield [Request.per_episode(np.where(more > 0, ROOT, NO_NODE), more, score_prefixes=True)]
            root = _joined(root, extra)
            moments = root_moments(root)  # of the root as topped up: both picks and the prompt check read them
        if small_budget and (full & by_evidence).any():
            # below N = 160 narrow continuous states keep state_share: a root of N / 2 often picks an
            # ordinary one, whose rewards go little past its mean, and the prompt draws after it hedge
            # that (docs/design-record.md, "Narrow states keep a hedge below N = 160")
            full &= ~(by_evidence & states_look_narrow(root, settings.narrow_states, moments))
        state = np.full(len(mine), NO_NODE)
        by_prefix = mine & ~by_evidence
        if by_evidence.any():  # each pick only where it is used: the driver's searches are one episode each
            state = np.where(by_evidence, _evidence_state(root, by_evidence, moments, budget, self.config), state)
        if by_prefix.any():
            ungated = off_a_grid_from(settings.ungated_from, budget, root, by_prefix)  # no prefix gap needed
            state = np.where(by_prefix, self._best_prefix_state(root, by_prefix, moments, ungated), state)
        spent = np.where(mine, drawn + more, 0)
        to_state = np.where(state != NO_NODE, round(settings.state_share * (1.0 - settings.root_fraction) * budget), 0)
        # committed and fully shared states get all that is left, the others state_share of the half
        to_state = np.where((committed | full) & (state != NO_NODE), budget - spent, np.minimum(to_state, budget - spent))
        to_root = np.where(mine, budget - spent - to_state, 0)
        # in two halves: the first checks that the state's rollouts are no worse than the root's, nor mere repeats
        first_state, first_root = to_state // 2, to_root // 2
        (prompt_part, state_part) = yield [Request.per_episode(np.where(first_root > 0, ROOT, NO_NODE), first_root),
                                           Request.per_episode(np.where(first_state > 0, state, NO_NODE), first_state)]
        state_mean, root_mean = reward_levels.mean_of_finite(state_part.rewards), reward_levels.mean_of_finite(root.rewards)
        keep = (first_state > 0) & ~(state_mean < root_mean)
        # each check only where a state is still kept (the driver's searches are one episode each)
        if settings.repeat_check and keep.any():
            keep &= ~reward_levels.repeats_itself(state_part.rewards, best_root_reward_of(root, state))
        # the modal check on full shares and commitments only: below N = 64 a first half says too little,
        # and the episodes that keep state_share from 64 on (narrow, a grid) were not measured with it
        if settings.modal_check is not None and (keep & (full | committed)).any():
            keep &= ~((full | committed) & (reward_levels.modal_share(state_part.rewards) >= settings.modal_check))
        if settings.prompt_check and (keep & by_evidence).any():
            drawn_so_far = np.concatenate([root.rewards, prompt_part.rewards, state_part.rewards], axis=1)
            best = reward_levels.best_of_finite(drawn_so_far)  # the best so far, a dropped score left out
            keep &= ~self._prompt_beats_state(root, moments, state_part.rewards, best, to_state - first_state,
                                              keep & by_evidence)
        rest_state = np.where(keep, to_state - first_state, 0)
        rest_root = np.where(mine, to_root - first_root + (to_state - first_state) - rest_state, 0)
        self.selected = np.where(keep, state, self.selected)
        if (rest_root + rest_state > 0).any():
            yield [Request.per_episode(np.where(rest_root > 0, ROOT, NO_NODE), rest_root),
                   Request.per_episode(np.where(rest_state > 0, state, NO_NODE), rest_state)]

    def _pick_states(self, root: Rollouts, num_states: int, stable: bool = True) -> np.ndarray:
        """``slg_adaptive``'s candidates (the continuous episodes that do not run the share rounds: N
        >= 160 and states not narrow, or prefix scores that do not track rewards). Where prefix scores
        track rewards (``_prefix_tracks``) and
        ``share.evidence_candidates`` is on, the root rollouts that rank first by the share rounds'
        pick (``evidence_rank``: prefix score and reward together) rather than by reward alone; a rollout
        whose state or prefix score is unknown is none. A candidate picked on its one reward is often
        a lucky draw of a mediocre state (gaussian at N = 1000: 18.2x -> 21.2x best-of-N; the toy
        models' bank toy_t8_temp15 at 160: 1.33x -> 1.93x, 1.83x with the width check below;
        docs/design-record.md, "Candidates by evidence, from N = 160"). Each root rollout ranks on
        its own: a state the root drew again can be several candidates, as by reward. Where the root
        says the states' upper tails fall as prefix scores rise (``share.width_check``,
        ``root_evidence.tails_fall``), by reward: the best tails are then in wide states of low mean,
        which a rank by mean puts last."""
        scores = self._branch_scores(root)
        by_reward = self.config.state_selection == StateSelection.top_reward  # (random: the reference's option)
        if self.config.share.evidence_candidates and by_reward and root.state_score is not None and root.state_index is not None:
            moments = root_moments(root)
            use_evidence = self._prefix_tracks(root, moments)
            if self.config.share.width_check:
                use_evidence &= ~tails_fall(root, moments, expected_max_std_normal(self.budget, self.config.expected_max_rule.value))
            # finite where known: a slope that passes needs scores and rewards that spread
            by_evidence = np.where(moments[0] & root.can_branch, evidence_rank(root, moments), -np.inf)
            scores = np.where(use_evidence[:, None], by_evidence, scores)
        return top_ranked(scores, num_states, stable)

    def _prefix_tracks(self, root: Rollouts, moments: tuple | None) -> np.ndarray:
        """Per episode, whether the root's prefix scores track its rewards: its slope of reward on
        prefix score (``prefix_slope``) at least ``share.min_prefix_slope``. ``moments``:
        ``root_moments(root)``, or None where the prefixes were not scored."""
        return prefix_slope(root, moments) >= self.config.share.min_prefix_slope

    def _commits(self, root: Rollouts, few_levels: np.ndarray) -> np.ndarray:
        """The episodes of ``few_levels`` whose state gets all the root leaves, not ``share.state_share``
        of it: from N = ``share.commit_from``, off a grid of levels. There the root (0.3 N, 77 draws at
        256) has seen each of a bank prompt's 16 states about five times, so the pick is reliable, and
        fresh prompt draws, whose best-of-N has flattened, add less than the best state's tail (the
        clairvoyant allocation puts 91-97.5% of N = 256 on one state of toy_t12 and toy_t16). On a grid
        a state's best stops at its level: committing there halved a discrete world's gain over
        best-of-N. Where most of its first half is one reward (``share.modal_check``), its second half
        goes to the prompt: a deep state at a low temperature mostly repeats one response
        (toy_t18_temp08 at N = 256: -0.0006 -> +0.0001 against best-of-N; docs/design-record.md)."""
        return off_a_grid_from(self.config.share.commit_from, self.budget, root, few_levels)

    def _shares_fully(self, shared: np.ndarray) -> np.ndarray:
        """The episodes of ``shared`` (not committed) whose state gets all that a root of
        ``share.root_fraction`` N leaves, not ``share.state_share`` of it: from N =
        ``share.full_share_from``. Where a discovery leaves room above the best, the paid-discovery
        ceiling puts more than 90% of what is left on one state in 86-94% of them (toy_t12, N =
        64-256); on continuous rewards a state picked on prefix score and root reward has a tail
        beyond its mean that fresh prompt draws do not match (gaussian at 128: 3.47x -> 3.95x). Below
        N = 64 a first half is too small to tell a deep state that mostly repeats one response
        (``share.modal_check``), and the full share cost toy_t24 there, and toy_t20 and toy_t12 at 48
        on continuous episodes (docs/design-record.md, "All of the half to the state, from N = 64"). From N =
        ``share.commit_from`` the commitment takes over off a grid, and the rest keep ``state_share``:
        on a grid the full share was measured to gain on one discrete world and lose on another."""
        settings = self.config.share
        beyond = settings.commit_from is not None and self.budget >= settings.commit_from
        if settings.full_share_from is None or self.budget < settings.full_share_from or beyond:
            return np.zeros_like(shared)
        return shared

    def _prompt_beats_state(self, root: Rollouts, moments: tuple, first_half: np.ndarray, best: np.ndarray,
                            left: np.ndarray, mine: np.ndarray) -> np.ndarray:
        """Per episode of ``mine`` (continuous rewards): whether fresh prompt draws beat the state for its
        ``left`` rollouts even with its first half's tail fit at its upper ``adaptive.confidence`` bounds,
        ``best`` the best reward so far: ``slg_adaptive``'s check of its candidates, on the prompt's quantile
        scale (``_final_best``). Only where the first half holds 2 ``adaptive.min_rollouts`` (N >= 42;
        fewer are too few for a tail fit), and either the root's Var(r) - Cov(s, r), a state's own variance, is
        below Cov(s, r), that between states (such a state gets little past its mean, which its root
        rollout shows; a wide state's few rewards can look narrow), or the first half is far narrower than
        that estimate and its best below ``best`` (``first_half_far_narrower``: a narrow state holding the
        best so far is the prompt's top, whose tail its normal quantile scale cannot see); one of 3-7
        rewards (N = 22-41) that far narrower is beaten without a fit. ``moments``: ``root_moments``."""
        count, fit_from = (~np.isnan(first_half)).sum(axis=1), 2 * self.config.adaptive.min_rollouts  # a fit's (N >= 42)
        if not (mine & (count >= 3)).any():  # 2 rewards say nothing of a width (below N = 22: the driver's searches stop here)
            return np.zeros_like(mine)
        own, covariance = moments[4] - moments[5], moments[5]  # Var(r) - Cov(s, r), and Cov(s, r)
        far_narrower = mine & first_half_far_narrower(first_half, own, best, NARROW_FIRST_HALF, fit_from)
        unfitted, checked = far_narrower & (count < fit_from), mine & (count >= fit_from) & ((own < covariance) | far_narrower)
        if not checked.any():  # (N = 22-41: the driver's searches stop here, narrowness alone deciding)
            return unfitted
        scale = QuantileScale(root.rewards, self.config.adaptive.tail_fraction)
        _, optimistic, prompt_value = self._final_best(scale.scores(first_half)[:, None, :], checked[:, None],
                                                       scale.scores(best[:, None])[:, 0], np.maximum(left, 1))
        return unfitted | (checked & (optimistic[:, 0] < prompt_value[:, 0]))

    def _best_prefix_state(self, root: Rollouts, mine: np.ndarray, moments: tuple | None = None,
                           ungated: np.ndarray | None = None) -> np.ndarray:
        """Per episode of ``mine``, the state of the root rollout that ranks first by its state's prefix
        score plus ``share.reward_weight`` times its own reward (each in sds from the mean of the root
        rollouts whose state, score and reward are known; a state with several root rollouts ranks by
        its best), where that prefix scores ``share.prefix_gap`` root-reward sds above an average
        prompt draw's or ``share.lead_gap`` above every other state's the root drew, or the episode is
        ``ungated`` (from N = ``share.ungated_from``, off a grid), or off a grid its state's root rollouts
        all stayed below the root's best reward and its prefix leads by ``share.below_best_lead``, and
        no common rival reads as well (``share.rival_gap``; ``share_gate.clears_a_gate``); else NO_NODE. On a
        grid of levels (``reward_levels.on_a_grid``) of states narrower than the spread between them
        (``NARROW_GRID``) only the rollouts at the root's best reward are candidates
        (``share.grid_best_level``): a rollout pays there only by reaching a level above the best so far,
        one step from a state already at it and two or more from the others. A state as wide as the
        spread can jump two levels, and its one root reward says little of where it sits; a prefix
        score that reads states more precisely than a rollout does already names the best one.
        ``moments``: ``root_moments(root)`` where the caller has it."""
        known, mean_score, mean_reward, var_score, var_reward, covariance = moments or root_moments(root)
        known = candidates = known & mine[:, None]  # a new array: ``moments`` may be the caller's
        if self.config.share.grid_best_level:
            # as in best_evidence_state: Cov(s, r) is the states' spread, Var(r) - Cov(s, r) their own
            # width, Var(s) - Cov(s, r) the prefix score's noise (the rule needs it above the width)
            narrow = (var_reward - covariance < NARROW_GRID * covariance) & (var_reward < var_score)
            at_best = root.rewards == reward_levels.best_of_finite(root.rewards)[:, None]
            candidates = known & (~(reward_levels.on_a_grid(root) & narrow)[:, None] | at_best)
        rank = (in_sds(root.state_score, mean_score, var_score)
                + self.config.share.reward_weight * in_sds(root.rewards, mean_reward, var_reward))
        rows, top, found = top_rollout(rank, candidates)
        clears = clears_a_gate(root, known, top, mean_score, self.config.share, ungated)
        return np.where(found & clears, root.state_index[rows, top], NO_NODE)


WIDE_STATES = 4.0  # the share rounds' width check: wide states, within-state variance this many times that between ...
WIDE_MARGIN = 1.5  # ... where the width slope must fall this many of its standard errors past the check's line


def _evidence_state(root: Rollouts, mine: np.ndarray, moments: tuple, budget: int, config: SearchConfig) -> np.ndarray:
    """Per episode of ``mine``, the share rounds' state on continuous rewards: the one that prefix
    score and root reward together rank first (``best_evidence_state``), but the state of the best
    root reward where the root, of at least ``NARROW_MIN_PAIRS`` rollouts (fewer read a slope of widths
    too noisily), says the states' upper tails fall as prefix scores rise (``share.width_check``): the
    best tails are then in wide states of low mean, which a rank by mean puts last, and one root
    reward of such a state is the best sign of its tail. Here a false alarm gives up the share's
    gain, not only the evidence's over the reward's rank (as for ``slg_adaptive``'s candidates), so
    the check reads a squashed reward on the prompt's quantile scale (``tails_fall_unsquashed``),
    and where the root's estimate of a state's own variance, Var(r) - Cov(s, r), is ``WIDE_STATES``
    times the variance between states, Cov(s, r), or more, it fires only where the tails fall by
    ``WIDE_MARGIN`` standard errors of the width slope: there one reward says little of its state, a
    slope of widths from a few dozen rollouts is mostly noise, and the check's false alarms cost most
    (gaussian states five times as wide as the spread: 1.48x -> 1.38x best-of-N at N = 159 with a
    margin of 0); states of two kinds, wide ones of low mean beside narrow high ones, show a slope well
    beyond its noise (docs/design-record.md, "Wide states whose tails fall"). ``moments``: ``root_moments(root)``."""
    state = best_evidence_state(root, mine, moments)
    if not config.share.width_check:
        return state
    known, _, _, _, var_reward, covariance = moments
    readable = mine & (known.sum(axis=1) >= NARROW_MIN_PAIRS)
    if readable.any():  # (none below N = 63, whose root is topped up to 32: the driver's searches skip the check)
        expected_max = expected_max_std_normal(budget, config.expected_max_rule.value)
        margin = np.where(var_reward - covariance < WIDE_STATES * covariance, 0.0, WIDE_MARGIN)
        by_reward = readable & tails_fall_unsquashed(root, moments, expected_max, config.adaptive.tail_fraction, margin)
        if by_reward.any():
            state = np.where(by_reward, best_reward_state(root, by_reward, moments), state)
    return state


NARROW_GRID = 0.5  # the grid rule's states: within-state variance below this share of the variance between states


def _joined(first: Rollouts, second: Rollouts) -> Rollouts:
    """Two requests' root rollouts as one (root-rollout indices run on from the first to the second)."""
    def both(a, b):
        return None if a is None or b is None else np.concatenate([a, b], axis=1)
    return Rollouts(np.concatenate([first.rewards, second.rewards], axis=1),
                    np.concatenate([first.can_branch, second.can_branch], axis=1),
                    both(first.correct, second.correct), both(first.state_index, second.state_index),
                    both(first.state_score, second.state_score))
