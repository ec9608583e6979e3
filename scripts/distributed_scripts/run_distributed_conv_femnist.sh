#!/usr/bin/env bash
# FederatedScope's distributed FEMNIST run, as FS ships it: a server and 3 clients on 127.0.0.1
# from fs_distributed_configs/ (FS's keys and values; data_idx mode, every process loads the whole
# sample under data/). Trailing `key value` pairs go to every process (e.g.
# `federate.total_round_num 2`). The data comes from `make demo` or
#   python scripts/tools/generate_femnist_sample.py --out data/femnist/raw
# For the sharded run (each client reads only its shard) use run_distributed_conv_femnist_managed.sh.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CFG="$HERE/fs_distributed_configs"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY="python3"; fi
fi
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

echo "Run distributed mode with ConvNet-2 on FEMNIST..."
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' INT TERM
"$PY" federatedscope/main.py --cfg "$CFG/distributed_femnist_server.yaml" "$@" &
PIDS+=("$!")
# clients retry until the server is up (distribute.connect_timeout): no sleep needed
for k in 1 2 3; do
  "$PY" federatedscope/main.py --cfg "$CFG/distributed_femnist_client_$k.yaml" "$@" &
  PIDS+=("$!")
done
FAILED=0
for pid in "${PIDS[@]}"; do wait "$pid" || FAILED=1; done
exit $FAILED
