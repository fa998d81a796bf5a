# Two commands do all the set-up on a fresh machine:
#   make demo   -> creates .venv, installs m3bind, runs `m3bind demo`
#   make test   -> creates .venv, installs m3bind + test tools, runs the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/m3bind demo $(ARGS)

# -n auto: one pytest-xdist worker per core (tests/conftest.py gives each its share of torch's
# threads); --dist loadfile keeps a file's tests, and its module fixtures, on one worker.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile $(ARGS)

clean:
	rm -rf $(VENV) m3bind-demo
