# Every set-up step lives here, so a fresh machine needs only `make demo` or `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-fast test-unit install clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[all,test]'
	touch $(STAMP)

install: $(STAMP)

## The main job on the embedded default: zoo Lesson 14 CNN on synthetic:shapes.
demo: $(STAMP)
	$(VENV)/bin/optkit optimize -o runs/demo --force

## The whole suite, slow end-to-end tests included (what CI runs).
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## The fast tests only, for the edit-test loop.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

## The unit tier: tests that need no TensorFlow, run with TensorFlow made unimportable (< 2 min).
test-unit: $(STAMP)
	$(PY) -m pytest -p tests.no_tensorflow -m "unit and not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs build *.egg-info
