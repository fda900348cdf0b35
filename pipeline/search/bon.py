"""Best-of-N: N rollouts from the prompt, the highest-reward one is the answer."""

from __future__ import annotations

from pipeline.search.base import SearchPolicy
from pipeline.search.protocol import ROOT, Request


class BestOfN(SearchPolicy):
    """N rollouts from the prompt; the answer is the highest-reward one."""

    name = "bon"

    def _search(self):
        yield [Request.uniform(ROOT, self.budget, self.batch_size)]
