# Set-up and entry points. `make test` and `make demo` work from a fresh clone: each creates the
# virtual environment (.venv) on first use and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of PyTorch, used by the converter and the parity tests. An unpinned `torch` from PyPI is a
# multi-GB CUDA build; on a GPU machine override this, e.g. `make test TORCH=torch`.
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
# pytest-xdist workers for `make test` (tests/conftest.py keeps the tests that share a module's fixture on one)
TEST_WORKERS ?= 2

.PHONY: setup test demo
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)" -e '.[test]' 2> $(VENV)/pip.log || { cat $(VENV)/pip.log; exit 1; }
	$(PY) -c "import jax, flax, optax, orbax.checkpoint, tensorflow_datasets, torch, sklearn"
	touch $@

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# The offline demo on scikit-learn's digits: a resnet20 teacher, then a resnet8 KD student (configs/demo.py).
demo: setup
	$(PY) -m jaxkd.train --config configs/demo.py:teacher --workdir workdirs/demo/teacher
	$(PY) -m jaxkd.train --config configs/demo.py:student --workdir workdirs/demo/student
