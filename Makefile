# Set-up and everyday commands. Each target installs what it needs into .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test fuzz bench install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-base: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-base
	$(BIN)/python -m pip install --quiet -e '.[demo,test,torch,jax]'
	touch $@

install: $(VENV)/.installed-base
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/python -m deqcore demo

test: install-test
	$(BIN)/python -m pytest --durations=25

# Random property runs with many examples (the default test profile is derandomised, as CI runs it).
fuzz: install-test
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -m "not gpu" -p no:cacheprovider

bench: install-test
	$(BIN)/python -m deqcore bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
