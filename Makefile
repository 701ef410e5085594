# The two commands of the README. Both bootstrap first (idempotent: packages, .venv, torch, project).
PY := .venv/bin/python
PYTEST_ARGS ?= -m "not gpu" -q --timeout=900 --durations=15

.PHONY: demo test test-all bootstrap bench clean

bootstrap:
	@tools/bootstrap.sh

demo: bootstrap
	@$(PY) run_offline.py

test: bootstrap
	@$(PY) -m pytest $(PYTEST_ARGS)

# Everything, slow and GPU tests included (GPU tests skip without CUDA).
test-all: bootstrap
	@$(PY) -m pytest -q

bench: bootstrap
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf out build dist *.egg-info .pytest_cache
