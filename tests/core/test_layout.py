"""The shape of the code: the maths imports no engine, nothing imports upward, no module, class or
function grows past its size, and no file points at documents outside the repository.

Read from the source files (``ast``) and from a fresh interpreter, never from the package's own
account of itself. The layer order is the README's: the statistics and search are plain numpy,
the distributed machinery drives them, jobs and the CLI sit on top.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
PACKAGE = REPOSITORY / "pipeline"

# Lowest first; a module may import its own layer and those below it. The top-level shims
# (pipeline/tail.py, schedule.py, oracle.py) re-export pipeline.stats, so they sit in its layer;
# pipeline/run.py is the ``python -m pipeline.run`` entry point, above the CLI it starts.
LAYERS = [("errors", "logs", "signals"), ("outputs",), ("stats", "tail", "schedule", "oracle"), ("search",), ("offline",),
          ("distributed",), ("jobs",), ("toy",), ("cli",), ("run",)]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}

# (importing module, imported module) pairs allowed against the order, each with its reason.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    ("pipeline.offline.replay", "pipeline.distributed.replay_executor"):
        "replay places its tasks on Ray when asked (workers > 1 or $RAY_ADDRESS): one import inside a function, "
        "so that the offline engine stays importable and usable without Ray",
}

MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES = 400, 200, 60
# (path relative to the repository, name or None for the module) -> reason; empty: nothing is over its size.
ALLOWED_OVERSIZE: dict[tuple[str, str | None], str] = {}

ENGINES = ("ray", "vllm", "torch", "transformers")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPOSITORY).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_under(*packages: str) -> list[str]:
    return sorted(module_name(p) for package in packages for p in (REPOSITORY / package.replace(".", "/")).rglob("*.py"))


def pipeline_imports(source: str, module: str, is_package: bool = False):
    """(line, imported module) for every import of a ``pipeline`` module in ``source`` (the text of
    ``module``), those inside functions included; relative imports resolved against its package."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names = [".".join(base + ([node.module] if node.module else []))]
        else:
            continue
        for name in names:
            if name == "pipeline" or name.startswith("pipeline."):
                yield node.lineno, name


def file_imports(path: Path):
    return pipeline_imports(path.read_text(), module_name(path), path.name == "__init__.py")


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return None if len(parts) == 1 else RANK.get(parts[1])


def test_the_statistics_search_and_offline_evaluation_import_no_engine():
    """Every module of pipeline.stats, pipeline.search and pipeline.offline, imported in a fresh
    interpreter, leaves none of ray, vllm, torch, transformers in ``sys.modules``."""
    modules = modules_under("pipeline.stats", "pipeline.search", "pipeline.offline")
    assert len(modules) >= 20  # the walk found the packages
    code = (f"import importlib, sys\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
            f"print(sorted(m for m in {ENGINES!r} if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPOSITORY, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_no_module_imports_from_a_higher_layer():
    upward, unplaced = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        own = layer_of(importer)
        if own is None and importer != "pipeline":
            unplaced.append(importer)
        for line, imported in file_imports(path):
            theirs = layer_of(imported)
            if theirs is None and imported != "pipeline":
                unplaced.append(imported)
            elif own is not None and theirs is not None and theirs > own and (importer, imported) not in ALLOWED_UPWARD:
                upward.append(f"{path.relative_to(REPOSITORY)}:{line} imports {imported}")
    assert not unplaced, f"modules outside the layer order (add their sub-package to LAYERS): {sorted(set(unplaced))}"
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_the_layer_check_sees_imports_inside_functions_and_relative_ones():
    """The checker itself, on a text written here: a function-level import and relative ones count."""
    source = "import os\n\ndef f():\n    from pipeline.distributed import driver\n\nfrom ..jobs import config\nfrom . import tail\n"
    found = sorted(pipeline_imports(source, "pipeline.stats.probe"))
    assert found == [(4, "pipeline.distributed"), (6, "pipeline.jobs"), (7, "pipeline.stats")]
    assert [layer_of(name) for _, name in found] == [RANK["distributed"], RANK["jobs"], RANK["stats"]]


def test_no_module_class_or_function_is_over_its_size():
    over = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = str(path.relative_to(REPOSITORY))
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES and (relative, None) not in ALLOWED_OVERSIZE:
            over.append(f"{relative}: {lines} lines (module, at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text, relative)):
            if isinstance(node, ast.ClassDef):
                kind, limit = "class", MAX_CLASS_LINES
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                kind, limit = "function", MAX_FUNCTION_LINES
            else:
                continue
            size = node.end_lineno - node.lineno + 1
            if size > limit and (relative, node.name) not in ALLOWED_OVERSIZE:
                over.append(f"{relative}:{node.lineno} {kind} {node.name}: {size} lines (at most {limit})")
    assert not over, "\n".join(over)


SKIPPED_FOLDERS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "build", "dist"}
# Built from parts, so that this file does not name them itself.
OUTSIDE_REFERENCES = ["../" + "shared", "shared/" + "REFERENCE", "SPEC" + ".md"]


def test_no_file_points_at_documents_outside_the_repository():
    """A reader of a clone has only the repository: no file may send them to a shared folder beside
    it, or to a specification that is not in it (``OUTSIDE_REFERENCES``)."""
    found = []
    for folder, subfolders, files in os.walk(REPOSITORY):
        subfolders[:] = [s for s in subfolders if s not in SKIPPED_FOLDERS and not s.endswith(".egg-info")]
        for name in files:
            path = Path(folder) / name
            for number, line in enumerate(path.read_bytes().splitlines(), start=1):
                found += [f"{path.relative_to(REPOSITORY)}:{number} {needle}" for needle in OUTSIDE_REFERENCES
                          if needle.encode() in line]
    assert not found, "\n".join(found)
