"""Benchmarks: Tally against a hand-written PostgreSQL baseline and an in-memory server of the
same contract. `python -m benchmarks.run --help`; see docs/performance.md."""
