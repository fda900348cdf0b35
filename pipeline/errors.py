"""The errors that decide an exit code: ``ConfigError`` is bad input (exit 2); anything else is 1.

Only validation raises ``ConfigError``: config loading, argument checks, data and bank readers, and
the checks at the edges of public functions, all before expensive work starts. A failure in the
middle of a run (a NaN reward, a lost replica, a bug) is not the user's input and exits 1.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input or configuration; the message names the bad value and what was expected.

    A ``ValueError`` so that it survives Ray's wrapping and reads as one to library callers.
    """


def json_value(text: str, where: str):
    """The JSON value of one line of an input, or ``ConfigError`` naming ``where`` (a value nested
    too deeply for the parser, whose recursion runs out, is not valid JSON either)."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{where}: not valid JSON ({error.msg})") from None
    except RecursionError:
        raise ConfigError(f"{where}: not valid JSON (nested too deeply)") from None
