"""Where a job's files go: the output folder (resume, config check), JSONL sinks, whole-file writes.

A results file grows by one line per finished search, each line flushed and fsynced at once, so a
kill loses at most the line being written; a torn last line is cut off when a job resumes (and
only then: reading never writes). Whole files (summary, config, a rewritten side file) go to a
temporary file in the same folder and are renamed over the old one, so a reader never sees half
a file.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.errors import ConfigError


def json_text(value, indent: int | None = None) -> str:
    """``value`` as strict JSON: a float that is not finite (an interval from one episode, say) is
    null, since ``NaN`` and ``Infinity`` are not JSON and strict parsers refuse them."""
    return json.dumps(_finite(value), indent=indent, allow_nan=False)


def _finite(value):
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def atomic_write_text(path: Path, text: str | Iterable[str]) -> None:
    """Write a whole file through a temporary file in the same folder and a rename; ``text`` may come
    in pieces (a bank's lines, drawn as they are written), which are never held together.

    The file keeps the mode it had (a new one gets the umask's, as ``open`` would give it), and a
    symbolic link keeps pointing at it: the file it names is the one replaced. A device, a pipe or
    anything under /dev or /proc (``/dev/null``, ``/dev/fd/3``) is written in place: renaming over
    it would replace the device, or the file a descriptor was redirected to."""
    path = Path(path)
    pieces = [text] if isinstance(text, str) else text
    if written_in_place(path):
        with path.open("w") as out:
            out.writelines(pieces)
        return
    path = Path(os.path.realpath(path))
    with parents_made(path):
        mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o666 & ~_umask()
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as out:
                out.writelines(pieces)
            os.chmod(temporary, mode)  # mkstemp makes it 0600
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


@contextmanager
def parents_made(path: Path) -> Iterator[None]:
    """Make the folders ``path`` needs, and take those it made away again (while empty) if the body
    fails: a whole-file write whose rows turn out bad midway leaves no trace, not even its folder."""
    made = []  # the missing folders, deepest first
    for folder in Path(path).parents:
        if folder.exists():
            break
        made.append(folder)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # no longer empty (another writer's file), or gone
                break
        raise


def written_in_place(path: Path) -> bool:
    """A path that is not a file to replace: under /dev or /proc, or an existing device or pipe."""
    path = Path(path)
    special = str(path.absolute()).startswith(("/dev/", "/proc/"))
    return special or (path.exists() and not path.is_file() and not path.is_dir())


def _umask() -> int:
    """The process's umask, read without setting it (os.umask sets it, for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_jsonl(path: Path, keys: tuple[str, ...]) -> list[dict]:
    """The complete lines of a JSONL file (a torn last line, from a killed writer, is left out), each
    a JSON object holding ``keys``; ``ConfigError`` naming the first line that is not (a file mended by
    hand, or hit by a disk error, is refused rather than read half right)."""
    data = Path(path).read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    rows = []
    for number, line in enumerate(complete.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            why = error.msg if isinstance(error, json.JSONDecodeError) else f"not UTF-8: {error.reason}"
            raise ConfigError(f"{str(path)!r} line {number} is not JSON ({why}): mend or remove that line to resume") from None
        if not isinstance(row, dict) or not all(key in row for key in keys):
            raise ConfigError(f"{str(path)!r} line {number} is not an object with {', '.join(keys)}: "
                              "mend or remove that line to resume")
        rows.append(row)
    return rows


def drop_torn_line(path: Path) -> None:
    """Cut a torn last line off ``path`` before appending to it again (resuming after a kill)."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete != len(data):
        with path.open("r+b") as handle:
            handle.truncate(complete)


class JsonlSink:
    """Appends rows to a JSONL file, flushed and fsynced after each batch (``None`` rows are skipped)."""

    def __init__(self, path: Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._out = Path(path).open("a")

    def write(self, rows: Iterable[dict | None]) -> None:
        text = "".join(json.dumps(row) + "\n" for row in rows if row is not None)
        if text:
            self._out.write(text)
            self._out.flush()
            os.fsync(self._out.fileno())

    def close(self) -> None:
        self._out.close()

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def resume_from(output: Path, config_as_dict: dict, overwrite: bool, resumable_prefixes: tuple[str, ...]) -> list[dict]:
    """The results already in ``output`` (to resume; none with ``overwrite``), after checking they came
    from this config; keys starting with ``resumable_prefixes`` may differ. Changes nothing in
    ``output`` but a torn last line of ``results.jsonl``: a run refused later loses nothing."""
    results_path, config_path = output / "results.jsonl", output / "config.yaml"
    if overwrite or not results_path.exists():
        return []
    if config_path.exists():
        changed = changed_keys(OmegaConf.to_container(OmegaConf.load(config_path)) or {}, config_as_dict, resumable_prefixes)
        if changed:
            raise ConfigError(f"output_dir {str(output)!r} holds a run with a different config (changed: "
                              f"{', '.join(changed)}); use another output_dir or overwrite=true")
        drop_torn_line(results_path)
        return read_jsonl(results_path, ("prompt_id", "method", "budget"))
    if results_path.stat().st_size > 0:
        raise ConfigError(f"output_dir {str(output)!r} has results.jsonl but no config.yaml; "
                          "use another output_dir or overwrite=true")
    return []


def changed_keys(old: dict, new: dict, resumable_prefixes: tuple[str, ...]) -> list[str]:
    """The dotted keys whose values differ between two nested configs, leaving out the resumable ones."""
    old, new = _flatten(old), _flatten(new)
    return [k for k in sorted(set(old) | set(new)) if not k.startswith(resumable_prefixes) and old.get(k) != new.get(k)]


def _flatten(tree, prefix: str = "") -> dict:
    flat = {}
    for key, value in (tree or {}).items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
