PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast mutation lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# One pytest process per group of tests: the whole suite in one process segfaulted once the
# data, deploy (ONNX Runtime, OpenVINO, NNCF loaded in-process) and engine tests had run in it
# (each group passes on its own; cause not found yet, see docs/testing.md).
TEST_GROUPS := tests/data tests/evaluation tests/deploy tests/engine
test: $(STAMP)
	$(BIN)/ruff check o2f tests benchmarks
	for group in $(TEST_GROUPS); do $(BIN)/python -m pytest -q $$group || exit 1; done
	$(BIN)/python -m pytest -q tests $(TEST_GROUPS:%=--ignore=%)

# the edit-test loop: everything but the tests marked slow (learning, exports, torchrun, faults)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# mutation testing of the rules and the trainer's wiring (pyproject.toml [tool.mutmut]): hours
# on 2 cores, not part of CI; survivors and why each is harmless: docs/testing.md
mutation: $(STAMP)
	$(BIN)/mutmut run --max-children $(or $(JOBS),2) > mutants.log 2>&1 || (tail -5 mutants.log; exit 1)
	$(BIN)/mutmut results | grep -v ': killed' | tee mutants-survivors.txt

demo: $(STAMP)
	$(BIN)/python -m o2f demo --work-dir work_dirs/demo

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick

clean:
	rm -rf $(VENV) work_dirs build *.egg-info
