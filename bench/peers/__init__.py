"""The peers benchmark (``compare.py``). Light on purpose: Flower's apps import ``floor`` from
their own virtual environment, so nothing here may import the project's runtime."""
