# One command runs the product, one runs the tests (see README.md).
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: all venv run test test-fast proto bench clean

all: test

venv:
	@./scripts/bootstrap.sh

## Run the product (today: an agent on a local socket, answering a demo client).
run: venv
	@$(PY) scripts/run.py

## Run every test, the slow end-to-end ones included.
test: venv
	@$(PY) -m pytest -q

## The quick subset: everything but the tests marked slow.
test-fast: venv
	@$(PY) -m pytest -q -m "not slow"

## Regenerate protocol/_gen/ from protocol/*.proto.
proto: venv
	@$(PY) scripts/gen_proto.py

## Benchmarks: the agent beside qemu-guest-agent, then hostd under 500 agents;
## figures printed and written to bench/results/.
bench: venv
	@./bench/setup.sh
	@$(PY) bench/agent_bench.py
	@$(PY) bench/hostd_bench.py
	@$(PY) bench/controller_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
