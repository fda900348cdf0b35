"""The ``slg`` command line: one module per group of commands, ``main`` assembles them.

``arguments`` holds what every command shares (the parser, list types, output checks); ``jobs``
the commands that run engines through Ray (run, collect, bench); ``offline`` those on worlds,
banks and reward files (replay, sim-bank, curves, predict); ``models`` the toy and tiny models.
No algorithms live here: each command parses, calls the library, prints.
"""

from pipeline.cli.main import main

__all__ = ["main"]
