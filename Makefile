# The README's commands. `make demo` segments the bundled raw EM crop with the shipped model; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3
# The CPU build; on a GPU machine pass the CUDA build you use, e.g. TORCH="torch==2.13.0".
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo services test

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	SAM2_BUILD_CUDA=0 $(BIN)/python -m pip install --quiet --no-deps --no-build-isolation sam2==1.1.0
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: install
	$(BIN)/neurosam run configs/demo.yaml

services:
	bash scripts/start_postgres.sh
	bash scripts/start_slurm.sh
	bash scripts/install_chromium.sh
	bash scripts/install_boost.sh

test: install services
	$(BIN)/python -m pytest -q -ra
