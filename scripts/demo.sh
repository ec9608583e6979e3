#!/usr/bin/env bash
# `make demo`: generate a FEMNIST-format sample (unless data is already there), cut it into 3 client
# shards, and run server + 3 clients over gRPC on loopback with the managed launcher.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="$REPO/.venv/bin/python"
RAW="data/femnist/raw"
if ! ls "$RAW"/*.json "$RAW"/all_data/*.json "$RAW"/train/*.json >/dev/null 2>&1; then
  echo "== generating a FEMNIST-format sample in $RAW (real LEAF FEMNIST JSON dropped there is used instead)"
  "$PY" scripts/tools/generate_femnist_sample.py --out "$RAW" --writers 60 --seed 0
fi
echo "== cutting 3 client shards"
"$PY" scripts/tools/prepare_femnist_shards.py --root data --clients 3 --out data/femnist/shards \
  --strategy sequential --seed 0 --overwrite
echo "== managed distributed run (server + 3 clients on 127.0.0.1)"
bash scripts/distributed_scripts/run_distributed_conv_femnist_managed.sh \
  --manifest data/femnist/shards/manifest.json --rounds "${ROUNDS:-5}" "$@"
