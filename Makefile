# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_HOME ?= .medmeta
DEMO_DATA ?= demo-data
PYTEST_ARGS ?= -n 2 --dist loadfile  # two workers, a test file per worker: much of the suite waits on servers and leases
BENCHENV ?= /work/benchenv

.PHONY: install demo test bench bench-env bench-metalearn bench-fhir clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[test]'
	# 30 real ChEMBL activity tables (test and benchmark data only; its own deps would pull torch_geometric)
	$(BIN)/python -m pip install --quiet --no-deps moleculeace==3.0.0
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/medmeta key create --home $(DEMO_HOME)
	$(BIN)/medmeta synth --out $(DEMO_DATA) --patients 240 --seed 0 --faults
	$(BIN)/medmeta run $(DEMO_DATA) --home $(DEMO_HOME) --config medmeta/config/pipeline-demo.yaml --rules validation/deliveries/images.yaml
	@echo
	@echo "See it in the Prefect UI: $(BIN)/medmeta server --home $(DEMO_HOME)   then open http://127.0.0.1:4200"
	@echo "Published models: $(BIN)/medmeta models list --home $(DEMO_HOME)"

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/ingest.py --out BENCHMARKS.md
	$(BIN)/python bench/validation.py --out BENCHMARKS.md
	$(BIN)/python bench/sampler.py --out BENCHMARKS.md
	$(BIN)/python bench/quality.py --out BENCHMARKS.md
	$(BIN)/python bench/records.py --out BENCHMARKS.md
	$(BIN)/python bench/real_records.py --out BENCHMARKS.md
	$(BIN)/python bench/predict.py --out BENCHMARKS.md

# learn2learn and higher live in their own environment, never in medmeta's dependencies
bench-env:
	BENCHENV=$(BENCHENV) bench/reference_env.sh

bench-metalearn: bench-env
	$(BENCHENV)/bin/python bench/metalearn.py --out BENCHMARKS.md
	$(BIN)/python bench/sinusoid.py --out BENCHMARKS.md

# fhir.resources and fhirpathpy, measured against medmeta's FHIR reader, never in medmeta's dependencies
FHIRLIBENV ?= /work/fhirlib-venv
bench-fhir: install
	FHIRLIBENV=$(FHIRLIBENV) bench/fhir_env.sh
	$(FHIRLIBENV)/bin/python bench/fhir_parsers.py --out BENCHMARKS.md

clean:
	rm -rf $(VENV) $(DEMO_HOME) $(DEMO_DATA) bench-data
