# The two commands of the README. Each creates .venv if missing, installs everything
# (torch pinned through constraints.txt), then runs. test-xr and bench-xr run the OpenXR suite and
# benchmark against Monado in a Debian 13 root (.ci/xr.sh; root, debootstrap); they need only the
# venv's pip here, everything else is installed inside the root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-xr bench-xr install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/panostudy demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-xr: $(BIN)/python
	HOST_PY=$(BIN)/python bash .ci/xr.sh test

bench-xr: $(BIN)/python
	HOST_PY=$(BIN)/python bash .ci/xr.sh bench

clean:
	rm -rf $(VENV) out .pytest_cache
