"""Flower App for the peer benchmark (bench/peers/compare.py); see pyproject.toml."""
