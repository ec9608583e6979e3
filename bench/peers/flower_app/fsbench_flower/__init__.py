"""Flower App for the peer benchmark (bench/peers.py); see pyproject.toml."""
