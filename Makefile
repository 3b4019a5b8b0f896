# Two commands do all set-up on a fresh machine:
#   make demo   -- create .venv if missing, install, run the main job
#   make test   -- same install, then the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL := 3
# Test processes (pytest-xdist): XLA compiles on one thread, so two workers
# keep both cores of a small CI machine busy.
TEST_WORKERS ?= 2

.PHONY: install demo test fuzz bench explain quality table2 clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m lsh_jax.apps.cli demo

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

# The long hypothesis campaign against the oracle (fixed seed: derandomized;
# LSH_FUZZ_EXAMPLES=2000 settings per property by default), then the tests
# marked `long` (more settings, gradients under sharding, Trax training on 8
# host devices).
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/test_core_oracle.py
	LSH_LONG_TESTS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) -m long tests

bench: install  # the benchmark table (~25 min); BENCH_ARGS=--quick for a few minutes
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# One small example through every step of SPEC.md, with its figure.
explain: install
	$(PY) -m lsh_jax.apps.explain --plot runs/explain.png

# LSH against full attention as n_hashes and chunk_len vary (~1-3 min);
# QUALITY_ARGS=--run-dir runs/<run> adds a trained model's queries.
quality: install
	$(PY) -m lsh_jax.apps.quality --plot runs/quality.png $(QUALITY_ARGS)

# The Reformer paper's Table 2 on the duplication task (docs/paper.md): four
# 1-layer models trained and evaluated (~30 min on an idle 2-core CPU);
# TABLE2_ARGS=--paper for the paper's size. Resumes from runs/table2.
table2: install
	$(PY) -m lsh_jax.apps.cli table2 $(TABLE2_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
