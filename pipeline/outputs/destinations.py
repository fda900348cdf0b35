"""Files at a local path or a URL (``s3://``, ``gs://``, ``file://``, ...): staged locally, uploaded whole.

A job writes every output file to a local staging copy and calls :meth:`Destination.push` at each
checkpoint: the whole file is uploaded in one request, which an object store applies atomically
(a reader sees the old object or the new one, never half of it; other file systems get a
temporary name and a rename). On start, :meth:`Destination.pull` fetches the remote copy, so a
rerun resumes from what the last checkpoint uploaded. A local path (or ``file://``) is written in
place and needs no upload. Remote file systems come from ``fsspec`` (``s3fs`` for ``s3://``,
``gcsfs`` for ``gs://``); credentials and endpoints come from their standard places
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for an S3-compatible
server, ``GOOGLE_APPLICATION_CREDENTIALS``, ...), nothing slg-specific.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.outputs.files import atomic_write_text, written_in_place

STANDARD_OUTPUT = ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")  # opened anew, a redirected file would be truncated
OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss")  # whole-object writes are atomic


def is_url(target: str) -> bool:
    return "://" in str(target)


def local_path(target: str) -> Path | None:
    """The local path a target names (a plain path or ``file://``), or None for a remote URL."""
    target = str(target)
    if target.startswith("file://"):
        return Path(target[len("file://"):])
    return None if is_url(target) else Path(target)


class Destination:
    """One output file: ``local`` is where the job writes it; ``push`` puts it at its target."""

    def __init__(self, target: str, staging: Path):
        self.target = str(target)
        path = local_path(self.target)
        self.remote = path is None
        if self.remote:
            self.fs, self.remote_path = _filesystem(self.target)
            self.local = staging / Path(self.remote_path).name
        else:
            self.local = path

    def pull(self) -> bool:
        """Fetch the remote copy into the staging copy (resuming); True when there was one."""
        if not self.remote:
            return self.local.exists()
        try:
            if not self.fs.exists(self.remote_path):
                return False
            self.fs.get_file(self.remote_path, str(self.local))
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read {self.target!r}: {_first_line(error)}") from None
        return True

    def remove(self) -> None:
        """Delete the file, here and at its target (starting over)."""
        self.local.unlink(missing_ok=True)
        if self.remote and self.fs.exists(self.remote_path):
            self.fs.rm(self.remote_path)

    def push(self) -> None:
        """Upload the staging copy whole (nothing to do for a local target, or before the file exists)."""
        if not self.remote or not self.local.exists():
            return
        protocol = self.target.split("://", 1)[0]
        if protocol in OBJECT_STORES:
            self.fs.put_file(str(self.local), self.remote_path)
        else:
            temporary = f"{self.remote_path}.uploading"
            self.fs.put_file(str(self.local), temporary)
            self.fs.mv(temporary, self.remote_path)


class OutputDir:
    """A job's output folder at a path or a URL; ``file(name)`` is one of its files."""

    def __init__(self, target: str, option: str = "output_dir"):
        self.target = str(target).rstrip("/")
        path = local_path(self.target)
        if path is None:
            _filesystem(self.target)  # an unknown protocol or a missing package fails here, before any work
            self.staging = Path(tempfile.mkdtemp(prefix="slg-staging-"))
        else:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as error:  # a file in the way, no permission: before any work
                raise ConfigError(f"{option} {self.target!r} cannot be made a folder: {error.strerror or error}") from None
            self.staging = path
        self.files: dict[str, Destination] = {}

    def file(self, name: str) -> Destination:
        if name not in self.files:
            self.files[name] = Destination(f"{self.target}/{name}", self.staging)
        return self.files[name]

    def names(self, pattern: str) -> list[str]:
        """The names of the files at the target (uploaded ones, for a URL) that match a glob ``pattern``, sorted."""
        path = local_path(self.target)
        if path is not None:
            return sorted(p.name for p in path.glob(pattern))
        fs, remote = _filesystem(self.target)
        try:
            return sorted(Path(p).name for p in fs.glob(f"{remote}/{pattern}"))
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot list {self.target!r}: {_first_line(error)}") from None

    def open(self, name: str):
        """A file at the target, opened for reading in binary (from the object store, for a URL)."""
        path = local_path(self.target)
        if path is not None:
            return (path / name).open("rb")
        fs, remote = _filesystem(self.target)
        return fs.open(f"{remote}/{name}", "rb")

    def push(self, names: list[str] | None = None) -> None:
        """Upload the named files (all known ones by default), in that order."""
        for name in names or list(self.files):
            self.files[name].push()

    def close(self) -> None:
        """Forget the staging folder of a remote target (after the last push)."""
        if local_path(self.target) is None:
            shutil.rmtree(self.staging, ignore_errors=True)


class Checkpoints:
    """Calls ``push`` at most every ``interval_s`` seconds: ``due()`` after each batch of new lines."""

    def __init__(self, push, interval_s: float):
        self.push, self.interval_s = push, interval_s
        self.last = time.perf_counter()

    def due(self) -> None:
        if time.perf_counter() - self.last >= self.interval_s:
            self.push()
            self.last = time.perf_counter()


def check_output_target(target: str, option: str) -> None:
    """Refuse, before any work, an output that cannot be written (``ConfigError``): no name (``""``,
    or ``-``, which names a file here: standard output is ``/dev/stdout``), a folder, a path under a
    file, a name the file system refuses, a device this process may not write, a folder that refuses
    it a new file, a URL of an unknown scheme or of a store this process cannot reach."""
    if target in ("", "-"):
        raise ConfigError(f"{option} {target!r} names no file (standard output is /dev/stdout)")
    if target.endswith("/"):  # a folder by its name: writing a file of that name would surprise
        raise ConfigError(f"{option} {target!r} ends in '/', a folder; expected a file path")
    path = local_path(target)
    if path is None:
        _check_reachable(target, option)
        return
    if target in STANDARD_OUTPUT:
        return
    try:
        _check_local_output(path, f"{option} {target!r}")
    except OSError as error:  # a name too long, say: the file system's own word
        raise ConfigError(f"{option} {target!r}: {error.strerror or error}") from None


def _check_local_output(path: Path, what: str) -> None:
    if path.is_dir():
        raise ConfigError(f"{what} is a folder; expected a file path")
    if path.exists() and written_in_place(path):  # a device or pipe: written itself, not its folder
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{what}: no permission to write it")
        return
    parent = Path(os.path.realpath(path)).parent  # a link's target is the file written (atomic_write_text)
    while not parent.exists() and parent != parent.parent:  # the folders that do not exist yet are made
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what} lies under {str(parent)!r}, which is a file")
    _check_creates_files(parent, what)


def _check_reachable(target: str, option: str) -> None:
    """A remote output's store answers (credentials, endpoint, network) and holds its bucket, so that
    these fail before the work rather than at the upload after it."""
    fs, remote = _filesystem(target)
    bucket = remote.split("/", 1)[0]  # an object store's bucket; empty for a remote file system's absolute path
    try:
        if bucket:
            fs.info(bucket)
        else:
            fs.exists(remote)
    except FileNotFoundError:
        raise ConfigError(f"{option} {target!r}: {bucket!r} does not exist there") from None
    except PermissionError:  # credentials that may write but not look: the upload will tell
        pass
    except Exception as error:  # noqa: BLE001 - each store has its own errors (botocore's are not OSError)
        raise ConfigError(f"{option} {target!r}: cannot reach it: {type(error).__name__}: {_first_line(error)}") from None


def _check_creates_files(folder: Path, what: str) -> None:
    """Create and remove a file in ``folder``, as the write will: permission bits do not show that a
    read-only mount, /sys or /proc refuses new files, even to root."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".slg-probe-"):
            pass
    except OSError as error:
        raise ConfigError(f"{what}: cannot write in {str(folder)!r} ({error.strerror or error})") from None


def check_room(target: str, needed: int, option: str) -> None:
    """Refuse (``OSError``, exit 1) a file of at least ``needed`` bytes where the file system it is
    written to has less free, before the work that would fill it: the write would fail only at its
    end. A URL's file is written whole in the temporary folder first (``write_text``), so that is the
    folder checked; standard output or a device is not checked."""
    path = local_path(target)
    if path is not None and (target in STANDARD_OUTPUT or written_in_place(path)):
        return
    folder = Path(tempfile.gettempdir()) if path is None else Path(os.path.realpath(path)).parent
    while not folder.exists() and folder != folder.parent:  # the folders not made yet
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise OSError(errno.ENOSPC, f"{option} {target!r} needs at least {_bytes(needed)} of disk, "
                                    f"{_bytes(free)} are free in {folder}")


def _bytes(count: int) -> str:
    """A size in the unit that shows it: 12 kB, 3.4 MB, 7,194.4 GB."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:,.1f} {unit}"
    return f"{count} bytes"


def check_plot_target(target: str, option: str = "--plot") -> None:
    """Refuse, before any work, a plot path that cannot be written (``check_output_target``), a URL
    (plots are written locally), or a name whose extension matplotlib cannot write."""
    from matplotlib.backend_bases import FigureCanvasBase

    if local_path(target) is None:
        raise ConfigError(f"{option} {target!r} must be a local path (plots are not uploaded)")
    check_output_target(target, option)
    formats = FigureCanvasBase.get_supported_filetypes()
    if Path(target).suffix.lstrip(".").lower() not in formats:
        raise ConfigError(f"{option} {target!r} must end in one of " + ", ".join(f".{name}" for name in sorted(formats)))


def write_text(target: str, text: str | Iterable[str]) -> None:
    """Write a whole text file at a path or a URL (``--out`` of the offline commands), from one string
    or from pieces written as they come; to ``/dev/stdout`` through this process's own stdout, after
    what it printed before."""
    pieces = [text] if isinstance(text, str) else text
    if target in STANDARD_OUTPUT:
        sys.stdout.writelines(pieces)
        sys.stdout.flush()
        return
    path = local_path(target)
    if path is not None:
        atomic_write_text(path, pieces)
        return
    staging = Path(tempfile.mkdtemp(prefix="slg-staging-"))
    try:
        destination = Destination(target, staging)
        with destination.local.open("w") as out:
            out.writelines(pieces)
        destination.push()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def fetched(target: str, what: str) -> Iterator[Path]:
    """A local path for a file, or a folder of files, at a path or a URL (an input such as a bank
    that ``slg collect`` wrote to a bucket). A remote one is downloaded first, a file at a time,
    into a temporary folder that is removed on leaving; a local one is used where it is."""
    path = local_path(target)
    if path is not None:
        yield path
        return
    fs, remote = _filesystem(target)
    staging = Path(tempfile.mkdtemp(prefix="slg-fetched-"))
    try:
        try:
            if fs.isdir(remote):
                local = staging / (Path(remote.rstrip("/")).name or "bank")
                local.mkdir()
                for entry in fs.ls(remote, detail=True):
                    if entry["type"] == "file":
                        fs.get_file(entry["name"], str(local / Path(entry["name"]).name))
            elif fs.isfile(remote):
                local = staging / Path(remote).name
                fs.get_file(remote, str(local))
            else:
                raise ConfigError(f"{what} {target!r} does not exist")
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001 - each store has its own errors (botocore's are not OSError)
            raise ConfigError(f"cannot read {what} {target!r}: {type(error).__name__}: {_first_line(error)}") from None
        try:
            yield local
        except ConfigError as error:  # a reader's complaint names the copy, gone once this ends: name the URL
            raise ConfigError(str(error).replace(str(local), target)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _filesystem(url: str):
    """(fsspec file system, path within it) of a URL; ``ConfigError`` when it cannot be opened."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as error:
        raise ConfigError(f"{url!r} needs a package that is not installed ({_first_line(error)}); for s3:// "
                          "install s3fs (pip install 'slg[s3]'), for gs:// gcsfs") from None
    except (ValueError, OSError) as error:
        raise ConfigError(f"cannot open {url!r}: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
