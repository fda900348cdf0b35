"""The public import path of the reference schedule (docs/formats.md, "Python API"): ``pipeline.schedule.default_schedule``.

The code lives in :mod:`pipeline.stats.schedule`.
"""

from pipeline.stats.schedule import default_schedule

__all__ = ["default_schedule"]
