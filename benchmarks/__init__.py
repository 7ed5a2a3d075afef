"""Lamina's benchmarks: figures measured against a reference in the same run.

Run them with `make bench` (or `.venv/bin/python -m benchmarks.run --help`);
`benchmarks/run.py` says what each figure means. They never run in the test
suite: a benchmark reports a ratio, it does not pass or fail on a timing.
"""
