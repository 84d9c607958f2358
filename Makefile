# Both targets build .venv themselves. TORCH pins the build installed before the requirements:
# on the project's CI machines `torch==2.13.0` is a local CPU wheel (no CUDA download).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test clean

$(VENV)/installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $@

# The three commands of a char-rnn user, on the bundled text: about 3 minutes on a 2-core CPU.
demo: $(VENV)/installed
	$(PY) preprocess.py --input data/tinyshakespeare/input.txt
	$(PY) train.py -max_epochs 5 -print_every 100 -savefile demo
	$(PY) sample.py cv/lm_demo_epoch5.pt -length 600 -temperature 0.8
	$(PY) plot.py cv/lm_demo_log.csv

# Lint (ruff), types (mypy), then the tests; ruff and mypy read pyproject.toml and print one line per
# finding and nothing else (mypy: one line when there are none).
test: $(VENV)/installed
	$(PY) -m ruff check --quiet --output-format concise .
	$(PY) -m mypy
	$(PY) -m pytest -q -rs tests

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache data/input.h5 data/input.json data/tinyshakespeare/input.h5 data/tinyshakespeare/input.json
