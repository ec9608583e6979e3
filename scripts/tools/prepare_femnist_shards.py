#!/usr/bin/env python
"""``prepare_shards.py --dataset femnist``: the FEMNIST shard tool under its historical name.

    python scripts/tools/prepare_femnist_shards.py --root data --clients 3

Same options as prepare_shards.py except --dataset; see that script.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prepare_shards  # noqa: E402


def main(argv=None) -> int:
    """``main(argv)`` as every tool has (the benchmarks run it in-process); --dataset is fixed."""
    return prepare_shards.main(argv, dataset="femnist", script="prepare_femnist_shards.py")


if __name__ == "__main__":
    sys.exit(main())
