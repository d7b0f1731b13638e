# The two set-up commands of the README: `make demo` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH := $(shell uname -m)
TORCH_REQ := requirements/torch-$(ARCH).txt
STAMP := $(VENV)/.installed
OUT ?= runs/demo
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test test-slow test-all bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt $(TORCH_REQ)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r $(TORCH_REQ)
	$(PY) -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[vision,tensorboard,dev,annotate]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vlalign demo --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[bench]"
	$(VENV)/bin/vlalign bench dpo --against trl --json bench/results/dpo_vs_trl.json

lint: $(STAMP)
	$(VENV)/bin/ruff check vlalign tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache

# The default suite as another machine's CPU sees it: torch's AVX2 and generic kernels (ATEN_CPU_CAPABILITY),
# one run with the tests in reverse order, one in a random order (its seed is printed; rerun that
# order with ORDER_SEED=N). See docs/reproducibility.md.
ifndef ORDER_SEED
ORDER_SEED := $(shell date +%s)
endif
.PHONY: test-any-cpu
test-any-cpu: $(STAMP)
	ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest -q -m "not slow" --reverse tests
	@echo "random order $(ORDER_SEED) (the same order again: make test-any-cpu ORDER_SEED=$(ORDER_SEED))"
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -m "not slow" --random-order-bucket=module \
		--random-order-seed=$(ORDER_SEED) tests
