# Two entry points (see README): `make demo` and `make test`. Both create the environment first.
.PHONY: env demo test lint

env:
	@bash scripts/ensure_env.sh

demo: env
	@OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m mlmd.demo

test: env
	@OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m pytest -q

lint: env
	@.venv/bin/ruff check mlmd tests benchmarks inputs
