"""Logging of the ``slg`` command: set up once, progress lines to stderr, tracebacks to a log file.

Users read one line per failure on stderr; the traceback behind it goes to the job's log file
(``OUTPUT_DIR/slg.log`` for jobs with an output folder, which also keeps the progress lines), or to
a temporary file for commands without one, and the one line says where.
"""

from __future__ import annotations

import logging
import tempfile
import traceback
from pathlib import Path

LOGGER = "slg"
_FORMAT = "%(asctime)s slg %(message)s"
_log_file: Path | None = None


def configure_logging() -> None:
    """Progress and warnings of the ``slg`` logger to stderr (once per process)."""
    logger = logging.getLogger(LOGGER)
    if not any(getattr(h, "_slg_stderr", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler._slg_stderr = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def log_to_file(path: Path) -> None:
    """Also keep the log in ``path`` (appended: a resumed job adds to it)."""
    global _log_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger(LOGGER).addHandler(handler)
    _log_file = path


def record_traceback(error: BaseException) -> Path:
    """Write ``error``'s traceback to the log file (a temporary one if the command has none); its path."""
    global _log_file
    if _log_file is None:
        with tempfile.NamedTemporaryFile(prefix="slg-error-", suffix=".log", delete=False) as handle:
            _log_file = Path(handle.name)
    with _log_file.open("a") as out:
        out.write("".join(traceback.format_exception(type(error), error, error.__traceback__)))
    return _log_file
