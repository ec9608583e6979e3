#!/usr/bin/env bash
# Managed launch of distributed FEMNIST from a shard manifest.
#
#   run_distributed_conv_femnist_managed.sh [--manifest PATH] [--rounds N] [--port P] [--legacy]
#                                           [--tls] [--logdir DIR] [key value ...]
#
# 1. pre-flight: every shard in the manifest (dir, split files, meta.json) is checked before
#    anything starts; 2. the server starts and is waited for with the standard gRPC health-checking
#    protocol (no fixed sleeps); 3. one client per manifest entry starts, each pointed at its own
#    shard; 4. per-process logs and PIDs go to the log dir; on Ctrl+C or the first failing process
#    exactly the processes started here are stopped (by PID); the exit code is non-zero if any
#    process failed; a summary (samples per client, final accuracy) is printed.
# --legacy runs FS's data_idx path (every client loads the whole dataset) for comparison.
# --tls makes a throw-away CA + server certificate for this run and uses TLS.
# Trailing `key value` pairs are passed to every process. Works from any current directory.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CFG_DIR="$HERE/distributed_configs"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY="python3"; fi
fi

abspath() { [[ "$1" = /* ]] && echo "$1" || echo "$PWD/$1"; }

MANIFEST="$REPO/data/femnist/shards/manifest.json"
ROUNDS=""
PORT="50051"
LEGACY=0
TLS=0
LOGDIR=""
OVERRIDES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --manifest) MANIFEST="$(abspath "$2")"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --legacy) LEGACY=1; shift ;;
    --tls) TLS=1; shift ;;
    --logdir) LOGDIR="$(abspath "$2")"; shift 2 ;;
    -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
    --*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) if [[ $# -lt 2 ]]; then echo "override '$1' has no value (expected 'key value' pairs)" >&2; exit 2; fi
       OVERRIDES+=("$1" "$2"); shift 2 ;;
  esac
done

cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
LOGDIR="${LOGDIR:-$REPO/exp/managed_$(date +%Y%m%d_%H%M%S)}"
mkdir -p "$LOGDIR"
PIDFILE="$LOGDIR/pids"
: > "$PIDFILE"

echo "== pre-flight: $MANIFEST"
if ! CLIENTS="$("$PY" -m federatedscope.core.auxiliaries.launch_utils preflight --manifest "$MANIFEST")"; then
  echo "pre-flight failed: nothing was started" >&2
  exit 1
fi
N="$(echo "$CLIENTS" | wc -l)"
echo "   $N client shard(s) OK"

COMMON=(distribute.server_port "$PORT" outdir "$LOGDIR/exp")
[[ -n "$ROUNDS" ]] && COMMON+=(federate.total_round_num "$ROUNDS")
SERVER_EXTRA=(distributed_data.manifest "$MANIFEST" federate.client_num "$N")
CA_ARGS=()
if [[ "$TLS" == 1 ]]; then
  bash "$HERE/make_local_certs.sh" "$LOGDIR/certs" >/dev/null
  SERVER_EXTRA+=(distribute.tls_cert "$LOGDIR/certs/server.crt" distribute.tls_key "$LOGDIR/certs/server.key")
  COMMON_CLIENT_TLS=(distribute.tls_ca "$LOGDIR/certs/ca.crt")
  CA_ARGS=(--ca "$LOGDIR/certs/ca.crt")
else
  COMMON_CLIENT_TLS=()
fi
[[ "$LEGACY" == 1 ]] && SERVER_EXTRA+=(distributed_data.enabled False)

PIDS=()
NAMES=()
stop_ours() {
  [[ ${#PIDS[@]} -eq 0 ]] && return 0
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
on_signal() { echo "interrupted: stopping our ${#PIDS[@]} process(es)" >&2; stop_ours; exit 130; }
trap on_signal INT TERM

launch() {  # name, then main.py args
  local name="$1"; shift
  "$PY" "$REPO/federatedscope/main.py" "$@" > "$LOGDIR/$name.log" 2>&1 &
  PIDS+=("$!"); NAMES+=("$name")
  echo "$! $name" >> "$PIDFILE"
  echo "   started $name (pid $!, log $LOGDIR/$name.log)"
}

echo "== server"
launch server --cfg "$CFG_DIR/distributed_femnist_server.yaml" "${COMMON[@]}" "${SERVER_EXTRA[@]}" \
  ${OVERRIDES[@]+"${OVERRIDES[@]}"}
if ! "$PY" -m federatedscope.core.auxiliaries.launch_utils wait-health --address "127.0.0.1:$PORT" \
     --timeout 120 ${CA_ARGS[@]+"${CA_ARGS[@]}"}; then
  tail -n 20 "$LOGDIR/server.log" >&2 || true
  stop_ours; exit 1
fi
echo "   server is SERVING on 127.0.0.1:$PORT"

echo "== clients"
while read -r cid shard; do
  args=(--cfg "$CFG_DIR/distributed_femnist_client_1.yaml" "${COMMON[@]}" distribute.client_id "$cid"
        expname "client_$cid")
  if [[ "$LEGACY" == 1 ]]; then
    args+=(distributed_data.enabled False distribute.data_idx "$cid")
  else
    args+=(distributed_data.shard_path "$shard")
  fi
  launch "client_$cid" "${args[@]}" ${COMMON_CLIENT_TLS[@]+"${COMMON_CLIENT_TLS[@]}"} \
    ${OVERRIDES[@]+"${OVERRIDES[@]}"}
done <<< "$CLIENTS"

echo "== running (full logs in $LOGDIR)"
# Follow the server's progress lines; tail exits by itself when the server does (--pid).
tail -n +1 -F --pid="${PIDS[0]}" "$LOGDIR/server.log" 2>/dev/null \
  | grep --line-buffered -E "joined;|aggregated|evaluation after round|finished after|Refused|lost|paused|gave up" \
  | sed -u 's/^.*INFO: Server: /   /; s/^.*WARNING: Server: /   ! /; s/^.*ERROR: Server: /   !! /' &
FOLLOWER=$!
FAILED=0
REMAINING=${#PIDS[@]}
while [[ $REMAINING -gt 0 ]]; do
  set +e
  wait -n -p DONE_PID "${PIDS[@]}"
  rc=$?
  set -e
  REMAINING=$((REMAINING - 1))
  name="?"
  for i in "${!PIDS[@]}"; do
    if [[ "${PIDS[$i]}" == "$DONE_PID" ]]; then
      name="${NAMES[$i]}"
      unset 'PIDS[i]' 'NAMES[i]'   # reaped: never signal this PID again (it may be reused)
    fi
  done
  PIDS=("${PIDS[@]}"); NAMES=("${NAMES[@]}")
  if [[ $rc -ne 0 ]]; then
    echo "!! $name (pid $DONE_PID) exited with $rc; stopping the others. Last lines:" >&2
    tail -n 15 "$LOGDIR/$name.log" >&2 || true
    FAILED=1
    stop_ours
    break
  fi
  echo "   $name finished (exit 0)"
done
trap - INT TERM
wait "$FOLLOWER" 2>/dev/null || true

echo "== summary"
grep -h "loaded .* samples from\|loaded the whole dataset\|no dataset is opened" "$LOGDIR"/server.log "$LOGDIR"/client_*.log 2>/dev/null | sed 's/^.*INFO: /  /' || true
"$PY" -m federatedscope.core.auxiliaries.launch_utils summary --manifest "$MANIFEST" --outdir "$LOGDIR/exp" || FAILED=1
echo "   logs: $LOGDIR"
exit $FAILED
