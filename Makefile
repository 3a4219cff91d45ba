# Set-up and everyday commands. Every target creates or refreshes what it needs, so on a fresh
# machine `make quickstart` and `make test` are the only set-up steps.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
DISTILL := $(VENV)/bin/distill
STAMP := $(VENV)/.installed
# Extra pip arguments for torch alone, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# to get the CPU build on a machine where PyPI would hand you the CUDA one.
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup assets quickstart test test-unit bench report clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, alone: the pinned build for this machine, before anything can pull another one
	$(PY) -m pip install -q "torch==2.13.0" $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -c requirements/constraints.txt -e ".[dev]"
	touch $(STAMP)

assets: setup
	$(DISTILL) assets install --all
	$(DISTILL) assets verify

quickstart: assets
	$(DISTILL) run recipes/quickstart.yaml

test: assets
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest -q -m "not integration" $(PYTEST_ARGS)

bench: assets
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

report: setup
	$(DISTILL) report

clean-venv:
	rm -rf $(VENV)
