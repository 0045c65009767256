# make demo: the whole study on the built-in synthetic set.  make test: lint + the test suite.
# make audit-demo: the demo classifier exported to ONNX, served over HTTP on 127.0.0.1 and audited black-box.
# make docs: docs/cli.md from the typer app; with RUNS="runs/a runs/b", also $(RESULTS) from those run folders.
# Each creates .venv and installs the project (with the tested torch pair) when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH_PAIR := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# two pytest-xdist workers of one torch thread each: the suite in about half the time on 2 cores
TEST_WORKERS ?= 2
RUNS ?=
RESULTS ?= docs/results.md

.PHONY: install demo audit-demo test lint format bench docs clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PAIR)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dermadv reproduce --preset demo --out runs/demo

audit-demo: $(STAMP)
	scripts/audit_demo.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/data_pipeline.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/attack_throughput.py
	$(PY) benchmarks/distributed_scaling.py

docs: $(STAMP)
	$(PY) -m dermadv.cli.reference docs/cli.md
	$(if $(strip $(RUNS)),$(VENV)/bin/dermadv results $(RUNS) --out $(RESULTS))

clean:
	rm -rf runs/demo .pytest_cache .mypy_cache .ruff_cache
