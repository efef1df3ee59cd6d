# Two commands do all the set-up on a fresh machine (CPU, no network beyond PyPI):
#   make run    install into .venv, then run the embedded default end to end -> results/table.md
#   make test   install into .venv, then run the test suite (what CI runs)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test install report clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -e '.[test,slurm]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores all results/table.csv
	@cat results/table.md

report: $(STAMP)
	$(BIN)/snakemake --report results/report.html results/table.csv

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf results logs benchmarks .snakemake
