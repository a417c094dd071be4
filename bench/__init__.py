"""Benchmarks that print figures (see bench/context_overhead.py)."""
