# One command runs the product, one runs the tests (see README.md).
VENV   ?= .venv
PY     := $(VENV)/bin/python
## Tests run with bytecode caching on, whatever the environment says: pytest and the hundreds of
## Python processes the tests start (controller, hostd, simulated VMs, agents) then compile each
## module once instead of at every start (collection alone: 6.6 s -> 3.6 s per process).
## __pycache__/ is in .gitignore.
TESTPY := env -u PYTHONDONTWRITEBYTECODE $(PY)

.PHONY: all venv run test test-fast typecheck proto bench clean

all: test

venv:
	@./scripts/bootstrap.sh

## Run the product: controller + hostd + simulated VMs; VM=qemu: one real Debian guest
## under QEMU TCG with this checkout's .deb instead (image built once, then cached).
VM ?=
run: venv
	@VM=$(VM) $(PY) scripts/run.py

## Run every test, the slow end-to-end ones included.
test: venv
	@$(TESTPY) -m pytest -q

## The quick subset: everything but the tests marked slow, in one process per core and one more
## (pytest-xdist): a third of a worker's time is spent waiting on the processes and sockets its
## tests start, which the extra worker fills (2 cores: 67 s with 2 workers, 56-61 s with 3);
## --dist loadfile keeps each module's tests in one process, so a module's fixtures start once.
XDIST_WORKERS = $(shell echo $$(( $$(nproc) + 1 )))
test-fast: venv
	@$(TESTPY) -m pytest -q -m "not slow" -n $(XDIST_WORKERS) --dist loadfile

## mypy over the packages (tests/test_lint.py runs it too; [tool.mypy] in pyproject.toml).
typecheck: venv
	@$(PY) scripts/typecheck.py

## Regenerate protocol/_gen/ from protocol/*.proto.
proto: venv
	@$(PY) scripts/gen_proto.py

## Benchmarks: the agent beside qemu-guest-agent, then hostd under 500 agents, the
## controller, and the .deb in a real QEMU guest beside qemu-ga; figures in bench/results/.
bench: venv
	@./bench/setup.sh
	@$(PY) bench/agent_bench.py
	@$(PY) bench/hostd_bench.py
	@$(PY) bench/controller_bench.py
	@$(PY) bench/vm_bench.py
	@$(PY) bench/tui_bench.py
	@$(PY) bench/cli_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .mypy_cache
