# Token Hub. `make demo` and `make test` work on a fresh clone with Python 3.11 and make.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-soak bench schemas up kafka clean

# The virtualenv is made once and reinstalled only when pyproject.toml changes.
# setuptools explains, as a warning on every editable install of folders mapped
# onto one namespace (contracts/ -> tokenhub.contracts, ...), that imports go
# through a finder: a note about its own mechanism, so it is not shown.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; run with PYTHON=python3" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tokenhub demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-soak: $(STAMP)
	$(BIN)/python -m pytest -m soak

bench: $(STAMP)
	$(BIN)/tokenhub bench

schemas: $(STAMP)
	$(BIN)/python -m tokenhub.contracts.schema_export
	$(BIN)/python -m tokenhub.views.outputs

up: $(STAMP)
	$(BIN)/tokenhub up

# Apache Kafka's broker from Maven Central into the per-user cache (the Kafka test
# tier and `tokenhub up --broker kafka` fetch it themselves on first use).
kafka: $(STAMP)
	$(BIN)/python -m tokenhub.infra.kafka.fetch

clean:
	rm -rf $(VENV) .tokenhub
