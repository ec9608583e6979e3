#!/usr/bin/env bash
# Managed launch of distributed FEMNIST from a shard manifest.
#
#   run_distributed_conv_femnist_managed.sh [--manifest PATH] [--rounds N] [--port P] [--legacy]
#        [--tls] [--logdir DIR] [--resume] [--health-timeout S] [--tokens DIR | --no-tokens]
#        [key value ...]
#
# 1. pre-flight: every shard in the manifest (dir, split files, meta.json vs the manifest) is
#    checked before anything starts; client tokens are the default (made on first use in
#    <manifest dir>/tokens, files 0600, the manifest keeps only sha256 hashes; each client gets
#    distribute.token_file); --no-tokens for a manifest without token hashes;
# 2. the server starts and is waited for with the standard gRPC health-checking protocol (no
#    fixed sleeps) for --health-timeout seconds (default scaled to the clients and the load); if
#    it dies or the wait gives up, the server log's tail is printed;
# 3. one client per manifest entry starts, each pointed at its own shard;
# 4. per-process logs and PIDs go to the log dir; on Ctrl+C or the first failing process exactly
#    the processes started here are stopped (by PID); the exit code is non-zero if any process
#    failed; a summary (samples per client, final accuracy) is printed.
# The server checkpoints every round to <logdir>/checkpoint.pt; after Ctrl+C, the same command
# with --logdir DIR --resume continues from it.
# --legacy runs FS's data_idx path (every client loads the whole dataset) for comparison, over the
# data the shards were cut from, with every writer (data.subsample 1.0), for any client count.
# --port 0 lets the server bind a free port (read back from its log) and points the clients at it.
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
need_value() { if [[ $# -lt 2 || "$2" == --* ]]; then echo "$1 needs a value (see --help)" >&2; exit 2; fi; }

MANIFEST="$REPO/data/femnist/shards/manifest.json"
ROUNDS=""
PORT="50051"
LEGACY=0
TLS=0
LOGDIR=""
RESUME=0
HEALTH_TIMEOUT=""
TOKENS_ARGS=()
NO_TOKENS=0
OVERRIDES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --manifest) need_value "$@"; MANIFEST="$(abspath "$2")"; shift 2 ;;
    --rounds) need_value "$@"; ROUNDS="$2"; shift 2 ;;
    --port) need_value "$@"; PORT="$2"; shift 2 ;;
    --legacy) LEGACY=1; shift ;;
    --tls) TLS=1; shift ;;
    --logdir) need_value "$@"; LOGDIR="$(abspath "$2")"; shift 2 ;;
    --resume) RESUME=1; shift ;;
    --health-timeout) need_value "$@"; HEALTH_TIMEOUT="$2"; shift 2 ;;
    --tokens) need_value "$@"; TOKENS_ARGS=(--tokens "$(abspath "$2")"); shift 2 ;;
    --no-tokens) NO_TOKENS=1; TOKENS_ARGS=(--no-tokens); shift ;;
    -h|--help) sed -n '2,27p' "${BASH_SOURCE[0]}"; exit 0 ;;
    --*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) if [[ $# -lt 2 ]]; then echo "override '$1' has no value (expected 'key value' pairs)" >&2; exit 2; fi
       OVERRIDES+=("$1" "$2"); shift 2 ;;
  esac
done
if [[ -n "$HEALTH_TIMEOUT" && ! "$HEALTH_TIMEOUT" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
  echo "--health-timeout $HEALTH_TIMEOUT: expected a number of seconds, e.g. --health-timeout 300" >&2; exit 2
fi

cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [[ "$RESUME" == 1 && -z "$LOGDIR" ]]; then
  echo "--resume continues a run from its checkpoint: name that run's log dir with --logdir DIR" >&2; exit 2
fi
LOGDIR="${LOGDIR:-$REPO/exp/managed_$(date +%Y%m%d_%H%M%S)}"
CKPT="$LOGDIR/checkpoint.pt"
if [[ "$RESUME" == 1 && ! -f "$CKPT" ]]; then
  echo "--resume: no checkpoint at $CKPT (the run stopped before its first round ended); start it again without --resume" >&2; exit 1
fi
if [[ "$RESUME" == 0 && -f "$CKPT" ]]; then
  echo "$LOGDIR already holds a run's checkpoint: continue it with --logdir $LOGDIR --resume, or use another --logdir" >&2; exit 1
fi
mkdir -p "$LOGDIR"
PIDFILE="$LOGDIR/pids"
: > "$PIDFILE"

echo "== pre-flight: $MANIFEST"
[[ "$LEGACY" == 1 ]] && TOKENS_ARGS=(--no-tokens)   # FS's data_idx server reads no manifest
if ! CLIENTS="$("$PY" -m federatedscope.core.auxiliaries.launch_utils preflight --manifest "$MANIFEST" \
                ${TOKENS_ARGS[@]+"${TOKENS_ARGS[@]}"})" || [[ -z "$CLIENTS" ]]; then
  echo "pre-flight failed: nothing was started" >&2
  exit 1
fi
N="$(echo "$CLIENTS" | wc -l)"
echo "   $N client shard(s) OK"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-$("$PY" -m federatedscope.core.auxiliaries.launch_utils health-timeout --clients "$N")}"

COMMON=(distribute.server_port "$PORT" outdir "$LOGDIR/exp")
[[ -n "$ROUNDS" ]] && COMMON+=(federate.total_round_num "$ROUNDS")
SERVER_EXTRA=(distributed_data.manifest "$MANIFEST" federate.client_num "$N" federate.save_to "$CKPT")
[[ "$RESUME" == 1 ]] && SERVER_EXTRA+=(federate.restore_from "$CKPT")
CA_ARGS=()
if [[ "$TLS" == 1 ]]; then
  bash "$HERE/make_local_certs.sh" "$LOGDIR/certs" >/dev/null
  SERVER_EXTRA+=(distribute.tls_cert "$LOGDIR/certs/server.crt" distribute.tls_key "$LOGDIR/certs/server.key")
  COMMON_CLIENT_TLS=(distribute.tls_ca "$LOGDIR/certs/ca.crt")
  CA_ARGS=(--ca "$LOGDIR/certs/ca.crt")
else
  COMMON_CLIENT_TLS=()
fi
if [[ "$LEGACY" == 1 ]]; then
  # the whole dataset the shards came from, every writer: the shipped YAML's subsample 0.05 would
  # leave fewer tasks than clients
  DATA_ROOT="$("$PY" -m federatedscope.core.auxiliaries.launch_utils data-root --manifest "$MANIFEST")"
  COMMON+=(data.root "$DATA_ROOT" data.subsample 1.0)
  SERVER_EXTRA+=(distributed_data.enabled False)
fi

PIDS=()
NAMES=()
stop_ours() {
  [[ ${#PIDS[@]} -eq 0 ]] && return 0
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
WAITER=""
on_signal() {
  echo "interrupted: stopping our ${#PIDS[@]} process(es)" >&2
  [[ -n "$WAITER" ]] && { kill "$WAITER" 2>/dev/null || true; }
  stop_ours
  [[ -f "$CKPT" ]] && echo "continue with: $0 --manifest $MANIFEST --logdir $LOGDIR --resume" >&2
  exit 130
}
trap on_signal INT TERM

REDIRECT=">"
TAIL_FROM="+1"
if [[ "$RESUME" == 1 ]]; then REDIRECT=">>"; TAIL_FROM="0"; fi   # keep the interrupted run's logs
launch() {  # name, then main.py args
  local name="$1"; shift
  if [[ "$REDIRECT" == ">>" ]]; then
    "$PY" "$REPO/federatedscope/main.py" "$@" >> "$LOGDIR/$name.log" 2>&1 &
  else
    "$PY" "$REPO/federatedscope/main.py" "$@" > "$LOGDIR/$name.log" 2>&1 &
  fi
  PIDS+=("$!"); NAMES+=("$name")
  echo "$! $name" >> "$PIDFILE"
  echo "   started $name (pid $!, log $LOGDIR/$name.log)"
}

echo "== server"
SERVER_LOG_START="$(stat -c %s "$LOGDIR/server.log" 2>/dev/null || echo 0)"   # --resume appends
launch server --cfg "$CFG_DIR/distributed_femnist_server.yaml" "${COMMON[@]}" "${SERVER_EXTRA[@]}" \
  ${OVERRIDES[@]+"${OVERRIDES[@]}"}
SERVER_PID="${PIDS[0]}"
if [[ "$PORT" == 0 ]]; then   # the server binds a free port itself and logs it
  set +e
  PORT="$("$PY" -m federatedscope.core.auxiliaries.launch_utils bound-port --log "$LOGDIR/server.log" \
          --from "$SERVER_LOG_START" --pid "$SERVER_PID" --timeout "$HEALTH_TIMEOUT")"
  rc=$?
  set -e
  if [[ $rc -ne 0 ]]; then
    if [[ $rc -eq 2 ]]; then
      echo "!! the server exited before it reported its port. Its log ($LOGDIR/server.log) ends:" >&2
    else
      echo "!! the server logged no port within ${HEALTH_TIMEOUT}s (raise --health-timeout if it is only slow). Its log ($LOGDIR/server.log) ends:" >&2
    fi
    tail -n 30 "$LOGDIR/server.log" >&2 || true
    stop_ours; exit 1
  fi
fi
# wait for SERVING, or for the server to die, whichever comes first (no polling)
"$PY" -m federatedscope.core.auxiliaries.launch_utils wait-health --address "127.0.0.1:$PORT" \
  --timeout "$HEALTH_TIMEOUT" ${CA_ARGS[@]+"${CA_ARGS[@]}"} &
WAITER=$!
set +e
wait -n -p FIRST "$SERVER_PID" "$WAITER"
rc=$?
set -e
SERVER_RC=""
if [[ "$FIRST" == "$WAITER" ]]; then WAITER=""; else SERVER_RC=$rc; rc=1; fi   # WAITER: to stop
if [[ $rc -ne 0 ]]; then
  if [[ -n "$SERVER_RC" ]]; then
    kill "$WAITER" 2>/dev/null || true; wait "$WAITER" 2>/dev/null || true
    echo "!! the server exited ($SERVER_RC) before it was SERVING. Its log ($LOGDIR/server.log) ends:" >&2
  else
    echo "!! the server was not SERVING within ${HEALTH_TIMEOUT}s (raise --health-timeout if it is only slow). Its log ($LOGDIR/server.log) ends:" >&2
  fi
  tail -n 30 "$LOGDIR/server.log" >&2 || true
  stop_ours; exit 1
fi
echo "   server is SERVING on 127.0.0.1:$PORT"

echo "== clients"
while read -r cid shard token; do
  args=(--cfg "$CFG_DIR/distributed_femnist_client_1.yaml" "${COMMON[@]}" distribute.client_id "$cid"
        expname "client_$cid" distribute.server_port "$PORT")
  if [[ "$LEGACY" == 1 ]]; then
    args+=(distributed_data.enabled False distribute.data_idx "$cid")
  else
    args+=(distributed_data.shard_path "$shard")
    [[ "$token" != "-" ]] && args+=(distribute.token_file "$token")
  fi
  launch "client_$cid" "${args[@]}" ${COMMON_CLIENT_TLS[@]+"${COMMON_CLIENT_TLS[@]}"} \
    ${OVERRIDES[@]+"${OVERRIDES[@]}"}
done <<< "$CLIENTS"

echo "== running (full logs in $LOGDIR)"
# Follow the server's progress lines; tail exits by itself when the server does (--pid).
tail -n "$TAIL_FROM" -F --pid="$SERVER_PID" "$LOGDIR/server.log" 2>/dev/null \
  | grep --line-buffered -E "joined;|aggregated|evaluation after round|finished after|Refused|lost|paused|gave up|restored" \
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
