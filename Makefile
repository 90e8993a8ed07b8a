# The README's two set-up commands are `make demo` and `make test`; both create .venv first.
VENV ?= .venv
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test lint
setup:
	bash scripts/bootstrap.sh

demo: setup
	$(VENV)/bin/smoothquant demo

test: setup
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
