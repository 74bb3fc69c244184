# Two entry points do all the set-up on a fresh machine:
#   make quickstart   installs into .venv, writes the demo dataset, trains on it (offline)
#   make test         installs into .venv, runs the linter (ruff), the type checker (mypy), the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install quickstart test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@# ghostscript: the tests prove that no image ever reaches it (tests/decode/test_image.py)
	@command -v ffmpeg >/dev/null && command -v gs >/dev/null || { echo "installing ffmpeg and ghostscript (Debian packages, needs root)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg ghostscript >/dev/null; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# one resolve: the package, its extras and the test tools, with the tested torch wheels pinned
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@# decord's wheel is tagged cp36 but is a ctypes library that runs on any Python 3; pip check
	@# reports only that tag, so filter exactly that line and fail on anything else.
	@$(BIN)/python -m pip check | grep -v -e '^decord 0.6.0 is not supported on this platform$$' -e '^No broken requirements found.$$' | grep . && exit 1 || true
	touch $(STAMP)

quickstart: install
	$(BIN)/fastgen fit --config configs/quickstart.yaml

test: install
	$(BIN)/ruff check fastgen_dm
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/bench_zip.py

clean:
	rm -rf $(VENV) FASTGEN_OUTPUT lightning_logs .pytest_cache .hypothesis
