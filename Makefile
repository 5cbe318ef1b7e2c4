# The commands a newcomer needs. `make demo` and `make test` work on a fresh Debian machine with
# Python 3.11: they install what is missing (Debian packages too, when run as root), then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo-out

# The KubeRay CRDs the manifest tests validate against stay in the shared folder beside the checkout.
export STREAMZIP_KUBERAY_CRDS ?= $(abspath $(wildcard ../shared/k8s/kuberay-crds))

.PHONY: setup sysdeps demo test test-fast lint bench clean

sysdeps:
	@bash .ci/sysdeps

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory sysdeps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/streamzip synth $(DEMO)/sample.mp4 --duration 40
	$(BIN)/streamzip run default --input $(DEMO)/sample.mp4 --output $(DEMO)/tokens

test: setup sysdeps
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q tests/unit

lint: setup
	$(BIN)/ruff check streamzip operators pipelines tests benchmarks examples
	$(BIN)/mypy streamzip operators

bench: setup
	$(BIN)/streamzip bench --out docs/benchmarks.md

clean:
	rm -rf $(DEMO) .pytest_cache .hypothesis build dist *.egg-info
