# The two commands of the README: `make run` (all notebooks, default profile) and `make test` (whole suite).
# Both create the virtual environment and install on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard 0*.ipynb))

.PHONY: run test test-nbmake install clean-artifacts strip-notebooks preflight

install: $(STAMP)

# torch first and alone, at its pin in pyproject.toml (the local CPU build here); letting another
# package pull torch in would download the CUDA build instead.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$$(grep -o 'torch==[0-9.]*' pyproject.toml)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m tinyrlhf.run_notebooks

# Minutes on the card before the night: every stage's heaviest phase at the default profile's sizes (tinyrlhf.preflight)
preflight: $(STAMP)
	$(PY) -m tinyrlhf preflight

# Unit and end-to-end tests on the cpu profile, in a temporary workdir so a user's data/, models/ and results/ are
# never touched. The five notebooks run once, top to bottom, inside the suite (tests/conftest.py `pipeline`, with
# nbclient as nbmake does), and the end-to-end tests read what they wrote; running them again with nbmake would
# double the suite's time. `make test-nbmake` runs them with nbmake alone.
test: $(STAMP)
	@workdir=$$(mktemp -d) && trap 'rm -rf "$$workdir"' EXIT && \
	TINYRLHF_PROFILE=cpu TINYRLHF_WORKDIR="$$workdir" $(PY) -m pytest tests -p no:cacheprovider $(PYTEST_ARGS)

test-nbmake: $(STAMP)
	@workdir=$$(mktemp -d) && trap 'rm -rf "$$workdir"' EXIT && \
	TINYRLHF_PROFILE=cpu TINYRLHF_WORKDIR="$$workdir" $(PY) -m pytest $(NOTEBOOKS) --nbmake \
		--nbmake-timeout=3600 -p no:cacheprovider $(PYTEST_ARGS)

clean-artifacts:
	rm -rf data/*.jsonl models/*/ results/*.json results/figures/* executed/

# The notebooks are edited in JupyterLab and committed without outputs: run this before committing an edit.
strip-notebooks: $(STAMP)
	$(PY) -m tinyrlhf.run_notebooks --strip
