"""slg: Scaling-Law Guided search.

``tail``, ``schedule``, ``oracle``: the statistics. ``policy``, ``policies``: the search, pure and
batched. ``worlds``, ``bank``, ``episodes``, ``replay``, ``calibration``: offline evaluation.
``driver``, ``replicas``, ``runner``, ``bench``: the Ray pipeline. ``cli``: the ``slg`` command.
"""
