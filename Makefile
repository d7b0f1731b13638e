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

.PHONY: venv system-deps demo test test-slow test-all bench lint clean

venv: system-deps $(STAMP)

# Debian packages the annotation app's tests use: PostgreSQL (its store tests run on SQLite AND PostgreSQL)
# and Chromium (Playwright drives it; Playwright downloads no browser). Installed only when missing and we
# are root with apt-get (CI, fresh machines); otherwise prints what to install, and those tests skip
# with that reason.
SYSTEM_PACKAGES := postgresql chromium
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq$$missing >/dev/null || { echo "apt-get install$$missing failed"; exit 1; }; \
	else \
		echo "note: the annotation app's PostgreSQL/browser tests need:$$missing (Debian: sudo apt-get install$$missing)"; \
	fi

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
