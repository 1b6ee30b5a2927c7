# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when missing.
# torch is installed first, so that a CPU wheel is used where no GPU exists; elsewhere pass e.g.
#   make test TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
BIN := $(VENV)/bin

.PHONY: demo test lint install clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml setup.py index/_fused.c | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install -q -e ".[service,dev,loadtest]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/tessera demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
