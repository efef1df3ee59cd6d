# Two commands do all the set-up on a fresh machine (CPU, no network beyond PyPI):
#   make run    install into .venv, then run the embedded default end to end -> results/table.md
#   make test   install into .venv, then run the test suite (what CI runs)
#   make report write results/report.html, Snakemake's report of the last run
# CONFIG picks a preset for run and report: make run CONFIG=config/paper_math.yaml, then
# make report CONFIG=config/paper_math.yaml (without CONFIG: the embedded default).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
CONFIG ?=
# After the targets: --configfile takes several values and would swallow a target given after it.
CONFIGFILE := $(if $(CONFIG),--configfile $(CONFIG))

.PHONY: run test install report clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -e '.[test,slurm]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores all results/table.csv $(CONFIGFILE)
	@cat results/table.md

report: $(STAMP)
	$(BIN)/snakemake --report results/report.html results/table.csv $(CONFIGFILE)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf results logs benchmarks .snakemake
