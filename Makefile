# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-full demo bench bench-accuracy clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# The suite plus Inductor compiles of every kind of layer in the toolchain matrix (a few minutes more).
test-full: $(STAMP)
	CONVATTN_FULL_MATRIX=1 $(PY) -m pytest

demo: $(STAMP)
	$(PY) -m convattn demo

# The measured tables of docs/benchmarks.md (each script prints its command's table).
bench: $(STAMP)
	$(PY) benchmarks/layer_table.py
	$(PY) benchmarks/attention_memory.py --markdown
	$(PY) benchmarks/speed_targets.py --quick --threads 1
	$(PY) benchmarks/cbam_vs_timm.py --resnet

# Three seeds of every variant of benchmarks/train_accuracy.py (the demo's and the AACN controls): about half an hour on a 2-core CPU (1,775 s for six of them, docs/benchmarks.md).
bench-accuracy: $(STAMP)
	$(PY) benchmarks/train_accuracy.py --markdown --jobs 2 --threads 1

# Transfer: resnet20 pretrained on cluttered digits, fine-tuned on 300 plain digits from scratch / plain / with SE inserted identity-initialised or naively, 3 seeds (docs/benchmarks.md): about 6 minutes on a 2-core CPU (333 s).
.PHONY: bench-transfer
bench-transfer: $(STAMP)
	$(PY) benchmarks/transfer.py --markdown --jobs 2 --threads 1

# What convattn compare costs over its runs: 4 runs through compare (--jobs 2 --threads 1) against the same runs one after another, and compare's own overhead (about 4 minutes on a 2-core CPU; measure on a quiet machine).
.PHONY: bench-compare
bench-compare: $(STAMP)
	$(PY) benchmarks/compare_overhead.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
