# Two commands do all set-up on a fresh machine:
#   make demo   -- create .venv if missing, install '.[all]', run the main job
#   make test   -- same install, then the whole test suite
# Every install pins its versions with constraints.txt (the CI environment).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The core tier: jax, numpy and the test tools only (no Trax, TensorFlow,
# gin, matplotlib, Flax, Equinox or Jupyter), the package installed as a
# user would (no -e).
CORE_VENV ?= .venv-core
CORE_PY := $(CORE_VENV)/bin/python
CONSTRAINTS := constraints.txt
export TF_CPP_MIN_LOG_LEVEL := 3
# Test processes (pytest-xdist): XLA compiles on one thread, so two workers
# keep both cores of a small CI machine busy. Work stealing: a worker that
# runs out takes queued tests from the other, so a few long tests at the
# end of one worker's share do not leave the other core idle.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist worksteal
# What the wheel ships: the package and the gin configs (configs/ installs
# as lsh_jax/configs, setup.cfg's package_dir).
PACKAGE_FILES := $(shell find lsh_jax configs -name '*.py' -o -name '*.gin' -o -name py.typed)
# The tests that need an optional dependency (test_trax_*.py,
# test_flax_*.py and test_equinox_*.py are marked by tests/conftest.py;
# matplotlib tests `plots`, notebook tests `notebook`).
EXTRAS := trax or flax or equinox or plots or notebook

.PHONY: install install-core demo test test-all test-core test-extras fuzz bench \
	explain quality table2 clean

$(VENV)/.installed: pyproject.toml setup.cfg $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[all]'
	touch $@

# Not editable: this also checks what a wheel ships (configs, py.typed);
# reinstalled when the package changes.
$(CORE_VENV)/.installed: pyproject.toml setup.cfg $(CONSTRAINTS) $(PACKAGE_FILES)
	test -x $(CORE_PY) || $(PYTHON) -m venv $(CORE_VENV)
	$(CORE_PY) -m pip install -q --upgrade pip
	$(CORE_PY) -m pip install -q -c $(CONSTRAINTS) '.[test]'
	$(CORE_PY) -m pip install -q --no-deps --force-reinstall .
	touch $@

install: $(VENV)/.installed

install-core: $(CORE_VENV)/.installed

demo: install
	$(PY) -m lsh_jax.apps.cli demo

# Everything `make test-core` and `make test-extras` run, in one environment.
# The whole suite, each test once: the core tier in an environment without
# any optional dependency (proves the core installs and runs alone), then
# the tests that need an extra (Trax, Flax, Equinox, matplotlib, the
# notebook tools) in the full one.
test: test-core test-extras

# Every test in the full environment alone (no core venv).
test-all: install
	$(PY) -m pytest -q $(XDIST) tests

# The tests that need jax and numpy only, without any optional dependency
# installed (test_trax_*/test_flax_*/test_equinox_* are not collected,
# `plots` and `notebook` skipped).
test-core: install-core
	$(CORE_PY) -m pytest -q $(XDIST) tests

# The complement of test-core: the tests that need an extra
# (`make test` runs both tiers instead of running the core tests twice).
test-extras: install
	$(PY) -m pytest -q $(XDIST) -m '($(EXTRAS)) and not long' tests \
	  || test $$? -eq 5  # 5: nothing selected (no such tests): not a failure

# The long hypothesis campaign against the oracle (fixed seed: derandomized;
# LSH_FUZZ_EXAMPLES=2000 settings per property by default) with hypothesis's
# statistics (how many generated settings `assume` rejected), then the tests
# marked `long` (more settings, gradients under sharding, Trax training on 8
# host devices). Exit status 5 (nothing selected) is not a failure here.
fuzz: install
	HYPOTHESIS_PROFILE=fuzz LSH_JAX_TEST_XLA_OPT=1 $(PY) -m pytest -q --hypothesis-show-statistics \
	  tests/test_core_oracle.py
	LSH_JAX_TEST_XLA_OPT=1 $(PY) -m pytest -q $(XDIST) -m long tests || test $$? -eq 5

bench: install  # the benchmark table (~25 min, plus tens of minutes for the flax_lm 16K rows); BENCH_ARGS=--quick for a few minutes
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# One small example through every step of docs/algorithm.md, with its figure.
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
	rm -rf $(VENV) $(CORE_VENV) *.egg-info build .pytest_cache .hypothesis
