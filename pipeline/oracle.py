"""The public import path of the pool oracle (docs/formats.md, "Python API"): ``pipeline.oracle.expected_max_of_pool``.

The exact best-of-n of a finite reward pool; the code lives in :mod:`pipeline.stats.pool`. (Not the
``oracle`` search method, which is :class:`pipeline.search.slg.Oracle`.)
"""

from pipeline.stats.pool import expected_max_of_pool

__all__ = ["expected_max_of_pool"]
