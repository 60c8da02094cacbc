# Quick start: `make demo` and `make test`. Both set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.caramba-installed
export CARAMBA_CACHE ?= $(CURDIR)/.caramba-cache
# pytest-xdist workers for `make test`, each taking whole test files (a file's module fixtures,
# such as the wheels test_packaging builds in the source tree, then run in one worker).
TEST_WORKERS ?= 2

.PHONY: setup demo test bench clean

$(STAMP): scripts/setup.sh $(wildcard packages/*/pyproject.toml) tests/plugins/caramba-example-plugin/pyproject.toml
	VENV=$(VENV) bash scripts/setup.sh

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/caramba run preset:standard_transformer

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf runs .pytest_cache
