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

.PHONY: setup assets quickstart test test-unit test-fast bench report clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	@echo "== set-up: venv + pinned stack (torch first); once, ~2-5 min on a fresh machine (downloads)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, alone: the pinned build for this machine, before anything can pull another one
	$(PY) -m pip install -q "torch==2.13.0" $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -c requirements/constraints.txt -e ".[dev]"
	touch $(STAMP)

assets: setup
	$(DISTILL) assets install --all
	$(DISTILL) assets verify

# Only what the quickstart reads: whisper-tiny.en and real English speech (~10 s, not all assets).
QUICKSTART_ASSETS := whisper-tiny.en asterisk-en librivox-5 cards-5

quickstart: setup
	@echo "== quickstart 1/2: assets $(QUICKSTART_ASSETS) (~10 s)"
	$(DISTILL) assets install $(QUICKSTART_ASSETS)
	@echo "== quickstart 2/2: recipes/quickstart.yaml: INT8 twice behind parity gates, then 3 models on real speech (~5 min on 2 idle cores)"
	TRANSFORMERS_VERBOSITY=error PYTHONWARNINGS=ignore::UserWarning,ignore::FutureWarning \
		$(DISTILL) run recipes/quickstart.yaml  # library deprecation chatter off: progress bars and results stay

test: assets
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest -q -m "not integration" $(PYTEST_ARGS)

# Iteration tier (~3 min): unit tests without the ones marked slow; CI runs everything (`make test`).
test-fast: setup
	$(PY) -m pytest -q -m "not integration and not slow" $(PYTEST_ARGS)

bench: assets
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

report: setup
	$(DISTILL) report

clean-venv:
	rm -rf $(VENV)
