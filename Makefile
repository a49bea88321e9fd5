# The README's two commands: `make demo` and `make test`. Both create .venv if missing.
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
STAMP := $(VENV)/.moegen-installed

.PHONY: demo test install lint build check clean modeled

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

build: $(STAMP)
	$(VENV)/bin/moegen build

check: $(STAMP)
	$(VENV)/bin/moegen check
	$(VENV)/bin/moegen conformance generated

demo: $(STAMP)
	$(VENV)/bin/moegen build
	$(VENV)/bin/moegen verify

lint: $(STAMP)
	$(PY) -m ruff check moegen tests benchmarks
	$(PY) -m ruff format --check moegen tests benchmarks

test: $(STAMP)
	$(PY) -m ruff check moegen tests benchmarks
	# one BLAS thread per test worker: two workers on two cores, no oversubscription
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2
	$(VENV)/bin/moegen check
	$(VENV)/bin/moegen conformance generated
	# the shared NKI conformance tool as a second opinion, where a ../shared checkout sits beside this one
	if [ -f $(SHARED)/tools/nki_conformance.py ]; then $(PY) $(SHARED)/tools/nki_conformance.py generated; fi

# every kernel in specs/ at its model's real shape, modeled on trn2 / trn3 (slow: simulates each one)
modeled: $(STAMP)
	$(PY) benchmarks/modeled.py

clean:
	rm -rf $(VENV) build *.egg-info
