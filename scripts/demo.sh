#!/usr/bin/env bash
# `make demo`: generate a FEMNIST-format sample (unless data is already there), cut it into 3 client
# shards, and run server + 3 clients over gRPC on loopback with the managed launcher.
#
#   scripts/demo.sh [--dataset femnist|celeba|shakespeare|cifar10] [launcher options, key value ...]
#
# The other datasets run the same way: a sample in the public format (unless one is there), the
# generic shard tool (CIFAR-10 has no writers: FS's lda splitter deals it), and the FEMNIST
# process configs with that dataset's model keys on the command line.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="$REPO/.venv/bin/python"
DATASET=femnist
if [[ "${1:-}" == "--dataset" ]]; then
  [[ $# -ge 2 ]] || { echo "--dataset needs a value: femnist, celeba, shakespeare or cifar10" >&2; exit 2; }
  DATASET="$2"; shift 2
fi
TOOL_ARGS=()
case "$DATASET" in
  femnist)
    RAW="data/femnist/raw"
    if ! ls "$RAW"/*.json "$RAW"/all_data/*.json "$RAW"/train/*.json >/dev/null 2>&1; then
      echo "== generating a FEMNIST-format sample in $RAW (real LEAF FEMNIST JSON dropped there is used instead)"
      "$PY" scripts/tools/generate_femnist_sample.py --out "$RAW" --writers 60 --seed 0
    fi
    echo "== cutting 3 client shards"
    "$PY" scripts/tools/prepare_femnist_shards.py --root data --clients 3 --out data/femnist/shards \
      --strategy sequential --seed 0 --overwrite
    KEYS=() ;;
  celeba)
    [[ -d data/celeba/raw ]] || "$PY" scripts/tools/generate_celeba_sample.py --out data/celeba/raw --writers 12
    KEYS=(data.type celeba model.out_channels 2 model.hidden 64) ;;
  shakespeare)
    [[ -d data/shakespeare/raw ]] || "$PY" scripts/tools/generate_shakespeare_sample.py --out data/shakespeare/raw --roles 12
    KEYS=(data.type shakespeare model.type lstm model.in_channels 80 model.out_channels 80
          model.embed_size 8 model.hidden 64 criterion.type character_loss trainer.type nlptrainer
          train.optimizer.lr 0.8) ;;
  cifar10)
    ls data/cifar-10-batches-py data/cifar-10-batches-bin >/dev/null 2>&1 \
      || "$PY" scripts/tools/generate_cifar10_sample.py --out data --per-file 200 --layout py
    TOOL_ARGS=(--strategy lda --alpha 0.5)
    KEYS=(data.type cifar10 model.out_channels 10 model.hidden 64) ;;
  *) echo "--dataset $DATASET: choose femnist, celeba, shakespeare or cifar10" >&2; exit 2 ;;
esac
if [[ "$DATASET" != femnist ]]; then
  echo "== cutting 3 client shards of $DATASET"
  "$PY" scripts/tools/prepare_shards.py --dataset "$DATASET" --root data --clients 3 \
    --out "data/$DATASET/shards" --seed 0 --overwrite "${TOOL_ARGS[@]}"
  # the FEMNIST process configs' Normalize is FEMNIST's: [] is the dataset's own default
  KEYS+=(data.transform "[]")
fi
echo "== managed distributed run (server + 3 clients on 127.0.0.1)"
bash scripts/distributed_scripts/run_distributed_conv_femnist_managed.sh \
  --manifest "data/$DATASET/shards/manifest.json" --rounds "${ROUNDS:-5}" "${KEYS[@]}" "$@"
