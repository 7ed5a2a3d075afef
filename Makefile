# The two commands of the README: `make demo` and `make test`.
# Each bootstraps what it needs (infra/bootstrap.sh is idempotent and quick).
.PHONY: bootstrap demo test test-fast lint bench clean

VENV := .venv/bin

bootstrap:
	@infra/bootstrap.sh

demo: bootstrap
	$(VENV)/lamina demo

lint: bootstrap
	$(VENV)/ruff check .
	@infra/typecheck.sh  # mypy on the installed layout (see the script)

# Two pytest-xdist workers: the integration folder in one, in order, the fast
# tier's files in the other beside it (tests/conftest.py).
test: bootstrap lint
	$(VENV)/python -m pytest -n 2 --dist loadfile

# The inner loop: no JVM, TensorFlow, broker or Redis (tests/conftest.py
# refuses a component fixture in a test without the integration marker).
test-fast: bootstrap lint
	$(VENV)/python -m pytest -m "not integration"

# kcat is only a reference in the client-tax table; without it that row says so.
bench: bootstrap
	@command -v kcat >/dev/null || apt-get install -y -qq kcat >/dev/null 2>&1 || \
		echo "bench: kcat not installed (apt-get install kcat); its row will say so"
	$(VENV)/python -m benchmarks.run

clean:
	rm -rf .lamina/demo .pytest_cache .mypy_cache .ruff_cache
