# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-unit test-integration chromium promtool bench lint docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

## Start the whole pipeline on the embedded default (Ctrl-C stops it cleanly).
run: $(STAMP)
	$(BIN)/sluice up

## Install with the test extras and run every test (unit + integration on Tansu + chDB;
## the browser tests need Debian's chromium, the alert rules' check promtool (Debian's
## prometheus package): installed if missing).
test: $(STAMP) chromium promtool
	$(BIN)/python -m pytest tests

test-unit: $(STAMP) promtool
	$(BIN)/python -m pytest tests/unit

test-integration: $(STAMP) chromium
	$(BIN)/python -m pytest tests/integration

chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| (echo "the browser tests need 'chromium' (Debian package chromium)"; exit 1)

promtool:
	@command -v promtool >/dev/null || (apt-get update -qq \
		&& apt-get install -y -qq --no-install-recommends prometheus) \
		|| (echo "the alert rules' test needs 'promtool' (Debian package prometheus)"; exit 1)

## Throughput and latency figures on the embedded stack (needs `hey`; installed if missing).
bench: $(STAMP)
	@command -v hey >/dev/null || (apt-get update -qq && apt-get install -y -qq hey) \
		|| (echo "bench needs 'hey' (Debian package hey)"; exit 1)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) \
		|| (echo "bench needs 'wrk' (Debian package wrk)"; exit 1)
	$(BIN)/python -m bench.run

## The documentation site (docs/, mkdocs-material) on http://127.0.0.1:8088, live-reloaded.
docs: $(STAMP)
	$(BIN)/mkdocs serve -a 127.0.0.1:8088

lint: $(STAMP)
	$(BIN)/ruff check services streams tests bench
	$(BIN)/mypy services streams

clean:
	rm -rf $(VENV) data bench/out
