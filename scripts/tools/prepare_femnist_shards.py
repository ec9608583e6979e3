#!/usr/bin/env python
"""``prepare_shards.py --dataset femnist``: the FEMNIST shard tool under its historical name.

    python scripts/tools/prepare_femnist_shards.py --root data --clients 3

Same options as prepare_shards.py except --dataset; see that script.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepare_shards import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(dataset="femnist", script="prepare_femnist_shards.py"))
