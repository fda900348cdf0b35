"""The public import path of the tail fit (docs/formats.md, "Python API"): ``pipeline.tail.fit_tail`` and friends.

The code lives in :mod:`pipeline.stats.tail`; this module keeps the documented names importable
from where users and outside scripts have always found them.
"""

from pipeline.stats.tail import TailFit, expected_max_std_normal, fit_tail, predict_best_of_n

__all__ = ["TailFit", "expected_max_std_normal", "fit_tail", "predict_best_of_n"]
