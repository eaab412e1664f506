# Two commands do everything on a fresh machine (set-up included):
#   make demo   - train + evaluate on the shipped MovieLens data (data/ml-latest-small)
#   make test   - the whole test suite (what CI runs, then make test-latest)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

LATEST := .venv-latest

.PHONY: setup demo test test-latest lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned one would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(OFFLINE) $(VENV)/bin/accelerate launch -q --num_processes 1 --num_machines 1 --mixed_precision no \
		--dynamo_backend no train.py --config configs/movielens.yaml

# the app's browser test drives Debian's chromium (`playwright install` downloads a browser, which CI can't rely on):
# installed where it is missing, apt-get is there and we are root; elsewhere that test skips and says why
test: setup
	@test -x /usr/bin/chromium || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium could not be installed: the app's browser test will skip"
	$(OFFLINE) $(PY) -m pytest -q -p no:cacheprovider

# the newest releases inside pyproject.toml's ranges, as a plain `pip install` gives them (torch pinned first),
# through the end-to-end tests: training with save and reload, recommend.py, the Hub export
test-latest:
	rm -rf $(LATEST) && python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q torch==2.13.0
	$(LATEST)/bin/python -m pip install -q -e ".[dev]"
	$(LATEST)/bin/python -m pip list --format=freeze | grep -iE '^(transformers|accelerate|datasets|sentence.transformers|huggingface.hub|tokenizers|numpy|pandas|pyarrow)=='
	$(OFFLINE) $(LATEST)/bin/python -m pytest -q -p no:cacheprovider -m latest

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf runs $(VENV) $(LATEST)
