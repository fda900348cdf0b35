"""spec_rejection (Speculative Rejection) offline and in the in-process driver on the sim engines: each
round asks one chunk per surviving response, partial responses are scored, the configured fraction
is stopped, each response grows from exactly its own tokens, the answer is the best finished
response, and every method's tokens are the sum over its rollouts.

References are computed here independently: the survivors by a plain sort per episode, the chunk
schedule from its closed form, the best answer from the sim's own draws of each response's final
reward, token totals from the rollouts the engines returned.
"""

import math

import numpy as np
import pytest

from actors.sim import SimGenerator, SimGroundTruth, SimRewardModel, response_token_ids
from pipeline.distributed.calls import LocalCalls
from pipeline.distributed.config import DriverConfig
from pipeline.distributed.contract import PromptInput, RolloutRequest, ScoreRequest, StatePrefix
from pipeline.distributed.driver import Driver, SearchObserver, derive_seed
from pipeline.errors import ConfigError
from pipeline.jobs.searches import search_grid
from pipeline.offline.episodes import WorldSource, run_episodes
from pipeline.offline.worlds import make_world
from pipeline.search.config import ChunkSchedule, SearchConfig, SpecRejectionConfig, validate_search_config
from pipeline.search.methods import policy_class
from pipeline.search.protocol import NO_NODE, ROOT
from pipeline.search.spec_rejection import chunk_sizes, keep_best

PROMPTS = [PromptInput(f"p{i}", f"prompt {i}") for i in range(6)]


def config_with(**settings) -> SearchConfig:
    return SearchConfig(spec_rejection=SpecRejectionConfig(**settings))


class Recording(WorldSource):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requests, self.results = [], []

    def draw(self, request):
        self.requests.append(request)
        self.results.append(super().draw(request))
        return self.results[-1]


def play(method, budget, batch=64, family="gaussian", config=None, seed=0):
    source = Recording(make_world(family), batch, np.random.default_rng(seed), prefix_rng=np.random.default_rng(seed + 5))
    policy = policy_class(method)(budget, batch, config or SearchConfig(), rng=np.random.default_rng(seed + 1),
                                  true_value=source.true_value)
    return source, run_episodes(policy, source)


# --- the rejection rule and the chunk schedule ----------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.75, 0.99])
def test_keep_best_keeps_all_but_the_floor_alpha_n_lowest_and_at_least_one(alpha):
    rng = np.random.default_rng(1)
    score = np.round(rng.normal(size=(300, 9)), 1)  # ties
    score[rng.random(score.shape) < 0.1] = -np.inf   # dropped scores
    ranked = rng.random(score.shape) < 0.7
    kept = keep_best(score, ranked, alpha)
    for b in range(score.shape[0]):
        pool = [j for j in range(9) if ranked[b, j]]
        order = sorted(pool, key=lambda j: (-score[b, j], j))
        keep = len(pool) - min(math.floor(alpha * len(pool) + 1e-9), max(len(pool) - 1, 0))
        assert sorted(np.flatnonzero(kept[b])) == sorted(order[:keep]), b


@pytest.mark.parametrize("alpha, tau", [(0.5, 128), (0.3, 10), (0.75, 8)])
def test_memory_schedule_rejects_at_tau_times_one_minus_alpha_to_the_minus_k(alpha, tau):
    sizes = chunk_sizes(SpecRejectionConfig(rejection_rate=alpha, chunk_tokens=tau))
    lengths = np.cumsum([next(sizes) for _ in range(8)])
    expected = [max(k + 1, round(tau * (1 - alpha) ** -k)) for k in range(8)]  # at least a token a chunk
    assert list(lengths) == list(np.maximum.accumulate(expected))
    fixed = chunk_sizes(SpecRejectionConfig(chunk_tokens=tau, schedule=ChunkSchedule.fixed))
    assert [next(fixed) for _ in range(5)] == [tau] * 5


def test_bad_settings_are_refused_before_any_work():
    for bad in ({"rejection_rate": 1.0}, {"rejection_rate": -0.1}, {"rejection_rate": float("nan")}, {"chunk_tokens": 0}):
        with pytest.raises(ConfigError, match="spec_rejection"):
            validate_search_config(config_with(**bad), [16])


# --- the rounds, offline -------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha, schedule", [(0.5, ChunkSchedule.memory), (0.3, ChunkSchedule.fixed), (0.8, ChunkSchedule.memory)])
def test_each_round_scores_partial_responses_stops_the_configured_fraction_and_grows_the_rest(alpha, schedule):
    budget, batch, tau = 24, 64, 40
    config = config_with(rejection_rate=alpha, chunk_tokens=tau, schedule=schedule)
    source, ledger = play("spec_rejection", budget, batch, config=config)
    first, first_result = source.requests[0], source.results[0]
    assert (first.node == ROOT).all() and (first.count == budget).all() and first.max_new_tokens == tau
    assert (first_result.num_tokens <= tau).all() and (~first_result.finished).any()
    sizes = chunk_sizes(config.spec_rejection)
    next(sizes)
    score, finished = first_result.rewards.copy(), first_result.finished.copy()
    ranked, position, rounds = np.ones((batch, budget), bool), 1, 0
    while True:
        kept = np.zeros_like(ranked)
        for b in range(batch):  # the survivors, by a plain sort of this round's ranking
            pool = sorted(np.flatnonzero(ranked[b]), key=lambda j: (-score[b, j], j))
            kept[b, pool[:len(pool) - min(math.floor(alpha * len(pool) + 1e-9), len(pool) - 1)]] = True
        growing = kept & ~finished
        if not growing.any():
            break
        size, width = next(sizes), int(growing.sum(axis=1).max())
        asked = source.requests[position:position + width]
        answers = source.results[position:position + width]
        assert len(asked) == width and all(q.grow and q.max_new_tokens == size and (q.count <= 1).all() for q in asked)
        nodes = np.stack([q.node for q in asked], axis=1)
        for b in range(batch):  # one request per surviving response, each survivor once
            assert sorted(nodes[b][nodes[b] != NO_NODE]) == list(np.flatnonzero(growing[b]))
        for q, a in zip(asked, answers):
            rows = np.flatnonzero(q.node >= 0)
            assert (a.num_tokens[rows, 0] <= size).all() and (a.num_tokens[rows, 0] >= 1).all()
            score[rows, q.node[rows]], finished[rows, q.node[rows]] = a.rewards[rows, 0], a.finished[rows, 0]
        ranked, position, rounds = kept, position + width, rounds + 1
    assert position == len(source.requests) and rounds >= 2
    assert (ledger.spent == budget).all()
    # the answer: the best finished response (final rewards from the source's own record)
    finals, done = source.responses.final, source.responses.grown == source.responses.length
    assert np.array_equal(ledger.best_reward, np.where(done, finals, -np.inf).max(axis=1))


def test_without_the_rejection_step_it_is_best_of_n_and_costs_as_much():
    """The same responses as best-of-N (common streams): rejection can only lose reward, and must save tokens.
    (alpha = 0 is the policy with its rejection step removed: it must equal best-of-N exactly.)"""
    bon_source, bon = play("bon", 64, batch=400, seed=3)
    _, spr = play("spec_rejection", 64, batch=400, seed=3)
    _, none = play("spec_rejection", 64, batch=400, seed=3, config=config_with(rejection_rate=0.0))
    assert np.array_equal(none.best_reward, bon.best_reward) and np.array_equal(none.tokens, bon.tokens)
    assert (spr.best_reward <= bon.best_reward).all() and (spr.best_reward < bon.best_reward).any()
    assert spr.tokens.mean() < 0.7 * bon.tokens.mean()
    assert spr.best_reward.mean() > bon.best_reward.mean() - 0.1  # it keeps most of best-of-N's value


@pytest.mark.parametrize("method", sorted(["bon", "slg", "slg_adaptive", "slg_share", "oracle", "spec_rejection"]))
def test_every_methods_tokens_are_the_sum_over_its_rollouts(method):
    source, ledger = play(method, 50, batch=32, family="discrete")
    assert np.array_equal(ledger.tokens, sum(r.num_tokens.sum(axis=1) for r in source.results))
    assert np.array_equal(ledger.rm_tokens, sum(r.rm_tokens.sum(axis=1) for r in source.results))
    # and each response's tokens, independently: whole responses (bon), or as far as each grew (spec_rejection)
    if method == "bon":
        assert np.array_equal(ledger.tokens, source.responses.length.sum(axis=1))
    if method == "spec_rejection":
        assert np.array_equal(ledger.tokens, source.responses.grown.sum(axis=1))
        assert (source.responses.grown <= source.responses.length).all()


# --- the sim engine --------------------------------------------------------------------------------------------


def grow(generator, prompt, seed, chunk):
    """Grow the sim response with ``seed`` chunk by chunk from its own tokens: (chunks, whole token ids)."""
    chunks, ids = [], []
    while not chunks or not chunks[-1].finished:
        state = StatePrefix(tuple(ids), "") if ids else None
        # the first chunk's seed names the response; a continuation's changes nothing in the sim
        (chunk_rollout,) = generator.generate([RolloutRequest(len(chunks), prompt, state, seed if not ids else 1000, chunk)])
        chunks.append(chunk_rollout)
        ids += chunk_rollout.token_ids
    return chunks, ids


def test_the_sim_grows_a_response_from_exactly_its_own_tokens_and_ends_as_best_of_n_draws_it():
    generator, reward_model, prompt = SimGenerator(), SimRewardModel(), PromptInput("p", "x")
    for seed in (11, 12, 13):
        chunks, ids = grow(generator, prompt, seed, chunk=37)
        (whole,) = generator.generate([RolloutRequest(0, prompt, None, seed)])
        assert ids == response_token_ids(seed, 0, whole.num_generated_tokens)  # every token, in order
        assert len(ids) == sum(c.num_generated_tokens for c in chunks) == whole.num_generated_tokens
        assert all(c.num_generated_tokens == 37 and not c.finished for c in chunks[:-1])
        assert [c.num_prompt_tokens - chunks[0].num_prompt_tokens for c in chunks] == [37 * k for k in range(len(chunks))]
        final, best_of_n = reward_model.score([ScoreRequest(0, prompt, chunks[-1].response_text),
                                               ScoreRequest(1, prompt, whole.response_text)])
        assert final.reward == best_of_n.reward  # the same response: the reward best-of-N's rollout gets
    with pytest.raises(ValueError, match="not a partial response"):  # a prefix that is not the response's own
        generator.generate([RolloutRequest(0, prompt, StatePrefix((11, 5, 6), ""), 1, 10)])


def test_sim_partial_scores_read_the_final_reward_more_closely_as_the_response_grows():
    world = make_world("gaussian")
    assert world.reward_scale() == pytest.approx(math.hypot(1.0, 1.0), rel=0.01)  # a normal's IQR / 1.349 is its sd
    rng = np.random.default_rng(0)
    final = rng.normal(size=200_000)
    for fraction in (0.0, 0.75):
        error = world.partial_score(rng, final, np.full(final.shape, fraction)) - final
        assert error.std() == pytest.approx(math.sqrt(2.0) * math.sqrt(1 - fraction), rel=0.01)
    assert np.array_equal(world.partial_score(rng, final, np.ones(final.shape)), final)
    reward_model, prompt = SimRewardModel(), PromptInput("p", "")
    texts = [f"<sim response 77 {g}/400>" for g in (10, 390, 400)]
    first, again = reward_model.score([ScoreRequest(i, prompt, t) for i, t in enumerate(texts)]), reward_model.score(
        [ScoreRequest(0, prompt, texts[0])])
    assert first[0].reward == again[0].reward  # deterministic from seeds
    assert [s.num_tokens for s in first] == [32 + 10, 32 + 390, 32 + 400]  # the prompt and the response so far


# --- the driver -----------------------------------------------------------------------------------------------


class Log(SearchObserver):
    def __init__(self):
        self.requests, self.scored = [], []

    def rollout_requested(self, search, request):
        self.requests.append((search.method, search.budget, search.prompt.prompt_id, request))

    def rollout_scored(self, search, slot, position, rollout, reward, sequence):
        self.scored.append((search.method, search.budget, search.prompt.prompt_id, slot, rollout, reward))


def drive(methods, budgets, config=None):
    log = Log()
    driver = Driver(search_grid(PROMPTS, methods, budgets, config or SearchConfig()), [SimGenerator()], [SimRewardModel()],
                    DriverConfig(max_batch_rollouts=7), 0, ground_truth=SimGroundTruth("gaussian"), observer=log,
                    calls=LocalCalls())
    rows, progress = driver.step(None)
    assert progress["done"]
    return {(r["prompt_id"], r["method"], r["budget"]): r for r in rows}, log, progress


def test_the_driver_grows_each_response_from_its_own_tokens_and_answers_with_the_best_finished_one():
    rows, log, _ = drive(["bon", "spec_rejection"], [16, 64], config_with(chunk_tokens=50))
    sim = SimGenerator().sim
    for (prompt_id, method, budget), row in rows.items():
        if method != "spec_rejection":
            continue
        tokens: dict[int, list] = {}  # response seed -> its token ids so far, from the rollouts returned
        finished = []
        for m, b, p, slot, rollout, _ in log.scored:
            if (m, b, p) == (method, budget, prompt_id):
                seed = rollout.token_ids[0] if not slot.grow else int(rollout.response_text.split()[2])
                tokens.setdefault(seed, []).extend(rollout.token_ids)
                if rollout.finished:
                    finished.append(seed)
        asked = [q for m, b, p, q in log.requests if (m, b, p) == (method, budget, prompt_id)]
        roots = [q for q in asked if q.state is None]
        assert [q.seed for q in roots] == [derive_seed(0, prompt_id, "root", k) for k in range(budget)]  # best-of-N's
        for q in asked:
            if q.state is not None:  # a continuation: exactly the response's tokens so far (its first is its seed)
                seed = q.state.token_ids[0]
                assert list(q.state.token_ids) == response_token_ids(seed, 0, len(q.state.token_ids))
        assert row["rollouts"] == budget and len(set(finished)) < budget  # responses started; some stopped
        assert row["best_reward"] == max(sim.response(seed)[0] for seed in finished)
        # tokens: the sum over its rollouts, each response as far as it grew
        assert row["tokens_generated"] == sum(len(ids) for ids in tokens.values())
        bon = rows[(prompt_id, "bon", budget)]
        assert row["best_reward"] <= bon["best_reward"] and row["tokens_generated"] < bon["tokens_generated"]


def test_the_driver_counts_every_methods_tokens_as_the_sum_over_its_rollouts():
    methods = ["bon", "slg", "slg_adaptive", "slg_share", "oracle", "spec_rejection"]
    rows, log, progress = drive(methods, [32])
    for (prompt_id, method, budget), row in rows.items():
        mine = [r for m, b, p, _, r, _ in log.scored if (m, b, p) == (method, budget, prompt_id)]
        assert row["tokens_generated"] == sum(r.num_generated_tokens for r in mine)
        assert row["rollouts"] == budget
    assert progress["rollouts_scored"] == len(log.scored) > progress["rollouts_generated"] == 32 * len(PROMPTS) * len(methods)


def test_the_answers_grade_is_that_of_the_best_finished_response():
    """Graded worlds: the episode's accuracy is the grade of its best finished response, wherever it finished
    (in the first chunk or in a later one)."""
    source, ledger = play("spec_rejection", 32, batch=200, family="bimodal", config=config_with(chunk_tokens=60))
    responses = source.responses
    done = responses.grown == responses.length
    best = np.where(done, responses.final, -np.inf).argmax(axis=1)
    rows = np.arange(len(best))
    assert ledger.has_correct and np.array_equal(ledger.best_correct, responses.correct[rows, best])
    assert (responses.grown[rows, best] > 60).any()  # some answers finished after the first chunk
