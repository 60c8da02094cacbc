# Quick start: `make demo` and `make test`. Both set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.caramba-installed
export CARAMBA_CACHE ?= $(CURDIR)/.caramba-cache

.PHONY: setup demo test bench clean

$(STAMP): scripts/setup.sh $(wildcard packages/*/pyproject.toml) tests/plugins/caramba-example-plugin/pyproject.toml
	VENV=$(VENV) bash scripts/setup.sh

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/caramba run preset:standard_transformer

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf runs .pytest_cache
