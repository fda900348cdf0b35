"""The packed twins of replica methods (``with_packed_calls``): what ``RayCalls`` sends a replica
placed by the session, one pickle a batch each way, must be what the plain method takes and gives."""

import asyncio
import inspect
import pickle
from types import SimpleNamespace

import pytest

from actors.sim import FreeRewardModel, SimGenerator, SimRewardModel
from pipeline.distributed.calls import RayCalls, with_packed_calls
from pipeline.distributed.contract import PromptInput, RolloutRequest, Score, ScoreRequest, scores_prefixes

PROMPT = PromptInput("p", "a prompt")


def test_a_twin_answers_as_its_method_does_in_one_pickle():
    requests = [RolloutRequest(i, PROMPT, None, seed=100 + i) for i in range(5)]
    packed = with_packed_calls(SimGenerator)()
    answers = pickle.loads(packed.generate_packed(pickle.dumps(requests)))
    assert answers == SimGenerator().generate(requests) and len(answers) == 5
    scores = [ScoreRequest(a.request_id, PROMPT, a.response_text) for a in answers]
    assert pickle.loads(with_packed_calls(SimRewardModel)().score_packed(pickle.dumps(scores))) == SimRewardModel().score(scores)


def test_an_async_method_gets_an_async_twin_and_the_class_keeps_its_name():
    class AsyncEngine:
        max_concurrency = 8

        async def generate(self, requests):
            await asyncio.sleep(0)
            return [r.seed * 2 for r in requests]

    packed = with_packed_calls(AsyncEngine)
    assert inspect.iscoroutinefunction(packed.generate_packed)  # Ray keeps serving it on the actor's event loop
    assert packed.__name__ == "AsyncEngine" and packed.max_concurrency == 8
    requests = [RolloutRequest(i, PROMPT, None, seed=i) for i in range(3)]
    assert pickle.loads(asyncio.run(packed().generate_packed(pickle.dumps(requests)))) == [0, 2, 4]
    assert not hasattr(packed, "score_packed")  # only the methods the class has


def test_a_twin_raises_what_its_method_raises():
    class Broken(SimRewardModel):
        def score(self, requests):
            raise RuntimeError("CUDA out of memory (simulated)")

    with pytest.raises(RuntimeError, match="out of memory"):
        with_packed_calls(Broken)().score_packed(pickle.dumps([]))


def test_answers_plain_pickle_refuses_come_back_through_cloudpickle():
    class Verdict:  # a class defined in a function: plain pickle cannot find it by name
        def __init__(self, text):
            self.text = text

    class Annotating(SimRewardModel):
        def score(self, requests):
            scores = super().score(requests)
            for score in scores:
                score.extra = {"verdict": Verdict("fine"), "weigh": lambda x: 2 * x}
            return scores

    rollout = SimGenerator().generate([RolloutRequest(0, PROMPT, None, seed=5)])[0]
    requests = [ScoreRequest(0, PROMPT, rollout.response_text)]
    scores = pickle.loads(with_packed_calls(Annotating)().score_packed(pickle.dumps(requests)))
    assert scores[0].extra["verdict"].text == "fine" and scores[0].extra["weigh"](3) == 6
    assert scores[0].reward == SimRewardModel().score(requests)[0].reward


class LengthScorer:
    """Scores a text by its length and reads as many tokens; keeps the batches it was handed."""

    def __init__(self):
        self.batches = []

    @scores_prefixes
    def score(self, requests):
        self.batches.append([r.response_text for r in requests])
        return [Score(r.request_id, float(len(r.response_text)), num_tokens=10 * len(r.response_text)) for r in requests]


def test_a_prefix_asked_for_is_scored_in_the_same_batch_and_answered_with_its_response():
    scorer = LengthScorer()
    requests = [ScoreRequest(0, PROMPT, "abcdef", "ab"), ScoreRequest(1, PROMPT, "xyz"),
                ScoreRequest(2, PROMPT, "pqrstuvw", "pqrs")]
    scores = scorer.score(requests)
    assert scorer.batches == [["abcdef", "xyz", "pqrstuvw", "ab", "pqrs"]]  # one call of the wrapped method
    assert [(s.request_id, s.reward, s.num_tokens) for s in scores] == [(0, 6.0, 60), (1, 3.0, 30), (2, 8.0, 80)]
    assert [(s.prefix_reward, s.prefix_num_tokens) for s in scores] == [(2.0, 20), (None, 0), (4.0, 40)]
    assert scorer.score([ScoreRequest(3, PROMPT, "q")])[0].prefix_reward is None and scorer.batches[-1] == ["q"]


@pytest.mark.parametrize("backend", [SimRewardModel, FreeRewardModel])
def test_the_simulated_reward_models_score_a_prefix_asked_for_as_they_score_it_alone(backend):
    """(The engines' own, vLLM's and transformers', are checked in tests/vllm/test_toy_engines.py.)"""
    rollout = SimGenerator().generate([RolloutRequest(0, PROMPT, None, seed=5)])[0]
    score, = backend().score([ScoreRequest(0, PROMPT, rollout.response_text, rollout.state.text)])
    alone, = backend().score([ScoreRequest(0, PROMPT, rollout.state.text)])
    assert (score.prefix_reward, score.prefix_num_tokens) == (alone.reward, alone.num_tokens)
    assert score.reward == backend().score([ScoreRequest(0, PROMPT, rollout.response_text)])[0].reward


class FakeRay:
    """What ``RayCalls`` uses of Ray: ``wait`` hands back every finished call, ``get`` its answer or
    raises its error. A call is an ``ObjectRef`` stand-in that already holds its outcome."""

    def wait(self, refs, num_returns, timeout):
        return list(refs), []

    def get(self, ref):
        if isinstance(ref.outcome, BaseException):
            raise ref.outcome
        return ref.outcome


class FakeRef:
    def __init__(self, outcome):
        self.outcome = outcome


class FakeMethod:
    """An actor method handle: ``.remote(payload)`` runs ``function`` at once and records the payload."""

    def __init__(self, function):
        self.function, self.payloads = function, []

    def remote(self, payload):
        self.payloads.append(payload)
        try:
            return FakeRef(self.function(payload))
        except Exception as error:
            return FakeRef(error)


class OfflineRayCalls(RayCalls):
    @property
    def _ray(self):
        return FakeRay()


def test_ray_calls_send_a_replica_with_a_twin_one_pickle_and_decode_its_answer():
    replica = with_packed_calls(SimGenerator)()
    handle = SimpleNamespace(generate=FakeMethod(replica.generate), generate_packed=FakeMethod(replica.generate_packed))
    requests = [RolloutRequest(i, PROMPT, None, seed=7 + i) for i in range(3)]
    calls = OfflineRayCalls()
    token = calls.submit(handle, "generate", requests)
    assert handle.generate.payloads == [] and isinstance(handle.generate_packed.payloads[0], bytes)
    ((ref, answers, error),) = calls.wait([token], timeout_s=1.0)
    assert ref is token and error is None and answers == SimGenerator().generate(requests)


def test_ray_calls_send_a_hand_made_actor_its_list_and_hand_back_errors():
    handle = SimpleNamespace(score=FakeMethod(SimRewardModel().score))  # ray.remote(cls) by hand: no twin
    rollout = SimGenerator().generate([RolloutRequest(0, PROMPT, None, seed=5)])[0]
    requests = [ScoreRequest(0, PROMPT, rollout.response_text)]
    calls = OfflineRayCalls()
    token = calls.submit(handle, "score", requests)
    assert handle.score.payloads == [requests]
    broken = SimpleNamespace(score=FakeMethod(lambda batch: 1 / 0))
    failed = calls.submit(broken, "score", requests)
    outcomes = {id(ref): (answers, error) for ref, answers, error in calls.wait([token, failed], timeout_s=1.0)}
    assert outcomes[id(token)] == (SimRewardModel().score(requests), None)
    assert outcomes[id(failed)][0] is None and isinstance(outcomes[id(failed)][1], ZeroDivisionError)
    assert calls.wait([], timeout_s=1.0) == []
