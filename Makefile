# Two commands do all set-up on a fresh machine:
#   make run    builds .venv with what the default run needs, then runs the pipeline for the Jetson target
#   make test   builds/updates the same .venv with every backend and the dev tools, then runs the whole suite
# torch is pinned by constraints.txt (2.13.0, a CPU wheel); an unpinned torch pulls a multi-GB CUDA build.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
PIN    := -c constraints.txt
TARGET ?= jetson
PYTEST_ARGS ?=

.PHONY: run test venv-run venv-test clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# The default jetson run needs the base install (ONNX Runtime is the reference numerics) and
# tensorrt-rtx for the TensorRT parse check; vision (torchvision, timm: about 15 MB) for torchvision:/timm: models.
$(VENV)/.stamp-run: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q $(PIN) -e '.[tensorrt,vision]'
	touch $@

$(VENV)/.stamp-test: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q $(PIN) -e '.[all]'
	touch $@ $(VENV)/.stamp-run

venv-run: $(VENV)/.stamp-run
venv-test: $(VENV)/.stamp-test

run: venv-run
	$(PY) -m pipeline run --target $(TARGET)

# mypy (config in pyproject.toml) checks the typed backend protocol and every backend against it first.
test: venv-test
	$(PY) -m mypy
	$(PY) -m pytest -q -n 2 --dist loadgroup $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
