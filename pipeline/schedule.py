"""The public import path of the reference schedule (docs/api.md): ``pipeline.schedule.default_schedule``.

The code lives in :mod:`pipeline.stats.schedule`.
"""

from pipeline.stats.schedule import default_schedule

__all__ = ["default_schedule"]
