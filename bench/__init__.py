"""Benchmark suite: ``python bench/run.py [--quick] [--only NAME[,NAME]]`` (see bench/README.md)."""
