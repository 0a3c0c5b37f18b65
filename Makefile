# AVSE: `make demo` (the main job) and `make test`; both set everything up on a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.install-stamp
DEMO_DIR ?= exp/demo
DATA_DIR ?= data/synthetic

.PHONY: install test demo clean

install: $(STAMP)

# Re-installs only when setup.py or constraints.txt change (or the venv is missing).
# constraints.txt holds the exact versions; setup.py keeps ranges.
$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch torchvision
	$(PY) -m pip install -q -c constraints.txt -e ".[eval,dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash egs/synthetic/demo.sh --data_dir $(DATA_DIR) --exp_dir $(DEMO_DIR)

clean:
	rm -rf $(DEMO_DIR) $(DATA_DIR)
