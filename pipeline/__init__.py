"""slg: Scaling-Law Guided search. ``tail``, ``schedule``, ``oracle``: the statistics; ``policies``:
the search; ``worlds``, ``bank``, ``episodes``, ``replay``: offline evaluation; ``cli``: the ``slg`` command."""
