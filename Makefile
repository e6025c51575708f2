# Two entry points (see README): `make demo` and `make test`. Both create the environment first.
.PHONY: env demo test test-long lint

# .venv links an environment shared by every clone: this clone's code comes first for everything make starts
# (subprocesses, `lmp` and its plugin entry point included), whichever clone that environment last installed
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

env:
	@bash scripts/ensure_env.sh

demo: env
	@OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m mlmd.demo

test: env
	@OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m pytest -q

# the checks that take minutes on 2 cores (marked long), left out of `make test`; CI runs both
test-long: env
	@OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m pytest -q --long -m long

lint: env
	@.venv/bin/ruff check mlmd tests benchmarks inputs
