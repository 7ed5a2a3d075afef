# The two commands of the README: `make demo` and `make test`.
# Each bootstraps what it needs (infra/bootstrap.sh is idempotent and quick).
.PHONY: bootstrap demo test lint bench clean

VENV := .venv/bin

bootstrap:
	@infra/bootstrap.sh

demo: bootstrap
	$(VENV)/lamina demo

lint: bootstrap
	$(VENV)/ruff check .
	$(VENV)/mypy lamina schemas master batch benchmarks

test: bootstrap lint
	$(VENV)/python -m pytest

bench: bootstrap
	$(VENV)/python -m benchmarks.run

clean:
	rm -rf .lamina/demo .pytest_cache .mypy_cache .ruff_cache
