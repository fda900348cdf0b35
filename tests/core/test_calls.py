"""The packed twins of replica methods (``with_packed_calls``): what ``RayCalls`` sends a replica
placed by the session, one pickle a batch each way, must be what the plain method takes and gives."""

import asyncio
import inspect
import pickle

import pytest

from actors.sim import SimGenerator, SimRewardModel
from pipeline.distributed.calls import with_packed_calls
from pipeline.distributed.contract import PromptInput, RolloutRequest, ScoreRequest

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
