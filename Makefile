# Both targets build .venv themselves. TORCH pins the build installed before the requirements:
# on the project's CI machines `torch==2.13.0` is a local CPU wheel (no CUDA download).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench clean

$(VENV)/installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $@

demo: $(VENV)/installed
	$(PY) preprocess.py -input data/tinyshakespeare/input.txt -output_h5 data/demo.h5 -output_json data/demo.json
	$(PY) train.py -input_h5 data/demo.h5 -input_json data/demo.json -rnn_size 128 -num_layers 2 \
		-max_epochs 1 -eval_val_every 200 -print_every 20 -savefile demo -gpuid -1
	$(PY) sample.py cv/lm_demo_epoch1.pt -length 500 -temperature 0.8 -gpuid -1

test: $(VENV)/installed
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) data/demo.h5 data/demo.json data/tinyshakespeare/input.h5 data/tinyshakespeare/input.json
