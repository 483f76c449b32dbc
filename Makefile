# Two entry points on a fresh machine with Python 3.11 and pip:
#   make train   installs into .venv and trains on the OGB dataset shipped with the package
#   make test    installs into .venv (with test extras) and runs lint + the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install train test lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[test]'
	# mup is a test oracle only; its metadata pulls torchvision (which swaps torch), hence --no-deps.
	$(PIP) install -q -c constraints.txt --no-deps mup
	touch $(STAMP)

install: $(STAMP)

# The shipped dataset's recipe (tuned at width 64 and 3 layers by benchmarks/compare_models.py's
# sweep, benchmarks/README.md), applied at width 128; `make train RECIPE= ARGS="..."` trains with
# the plain defaults instead.
RECIPE ?= pyg_mup/recipes/ogbg-molesol.json
TRAIN_SHAPE ?= --width 128 --layers 3

train: $(STAMP)
	$(VENV)/bin/pyg-mup train $(if $(RECIPE),--recipe $(RECIPE) $(TRAIN_SHAPE)) $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q --nbmake tests notebooks $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
