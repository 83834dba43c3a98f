# autoprune: `make demo` runs the main job on the embedded default, `make test` runs the test suite.
# Both create .venv and install the project (torch and torchvision resolved together from PyPI) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup lock data demo test lint bench clean

setup: $(STAMP)

# the locked versions (requirements.lock); `make lock` re-resolves them
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c requirements.lock pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

# Upgrade the lock: resolve pyproject.toml's dependencies afresh in a throwaway venv and freeze them.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q -e '.[dev]'
	{ sed -n '1,3p' requirements.lock; echo "pip==$$(.lock-venv/bin/python -m pip --version | cut -d' ' -f2)"; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv

# Fashion-MNIST from Debian where apt is usable; otherwise autoprune falls back to torchvision's download.
data:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
		|| echo "note: could not install dataset-fashion-mnist; autoprune will try torchvision's download"; \
	fi

# The embedded default (demo model at batch 64, its checkpoint, Fashion-MNIST): search under 70 % of the unpruned
# model's latency on this machine (a table of this device: shipped, cached, or built now), prune,
# fine-tune half an epoch (distilled), measure, report: under 10 minutes from a fresh clone on 2 cores, a table build
# included (benchmarks/README.md, "make demo"). --promote 0: the promotion rung's seven short fine-tunes would take
# longer than the demo's whole search.
demo: setup data
	rm -rf runs/demo
	$(BIN)/autoprune search --budget latency=70% --strategy ddpg --episodes 100 --held-out 1000 --finetune-epochs 0.5 \
		--promote 0 --out runs/demo

test: setup data
	$(BIN)/python -m pytest

# ruff's lint rules and its formatter (check only: `ruff format autoprune tests scripts` applies it), then the layering
lint: setup
	$(BIN)/ruff check autoprune tests scripts
	$(BIN)/ruff format --check autoprune tests scripts
	$(BIN)/lint-imports

clean:
	rm -rf runs .pytest_cache .ruff_cache .import_linter_cache
