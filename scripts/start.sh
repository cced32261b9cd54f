#!/usr/bin/env bash
# Starts (or reuses) the local Prefect server and the process serving the neuralign deployments, in the
# background. The server's lifecycle is Prefect's own (`prefect server start --background`,
# `prefect server status --wait`, `prefect server stop`); `neuralign serve` runs in its own process group.
# Waits until the server answers and the deployments are registered. The port, the serve pid and logs go
# to $NEURALIGN_WORK (default ./work). Stop both with scripts/stop.sh.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SERVER_TIMEOUT_S="${SERVER_TIMEOUT_S:-180}"
SERVE_TIMEOUT_S="${SERVE_TIMEOUT_S:-180}"
DEPLOYMENTS=(neural-fit/default neural-fit/majajhong2015 train-rule/default compare/default)

# wait_until WHAT PID_FILE LOG TIMEOUT_S STEP_S FAILURE CHECK...: polls CHECK every STEP_S seconds until it
# succeeds (seconds waited in $WAITED); exits with the log's last lines if the process of PID_FILE dies, or
# with "WHAT FAILURE within TIMEOUT_S" when time runs out.
wait_until() {
    local what="$1" pid_file="$2" log_file="$3" timeout_s="$4" step_s="$5" failure="$6"
    shift 6
    WAITED=0
    until "$@"; do
        if ! alive "$pid_file"; then
            log "$what exited; last lines of $log_file:"
            tail -n 30 "$log_file" >&2
            exit 1
        fi
        if ((WAITED >= timeout_s)); then
            log "$what $failure within ${timeout_s}s; see $log_file"
            exit 1
        fi
        sleep "$step_s"
        WAITED=$((WAITED + step_s))
    done
}

start_server() {
    if healthy; then
        log "Prefect server already running at $(server_url)"
        return 0
    fi
    # A server that stopped answering still holds its pid file (and maybe the port): end it first.
    stop_group "$SERVE_PID_FILE" "deployment server"
    prefect --no-prompt server stop >/dev/null 2>&1 || true
    local port
    port="$(free_port)"
    echo "$port" >"$SERVER_PORT_FILE"
    log "starting the Prefect server on 127.0.0.1:$port (prefect server start --background)"
    if ! PREFECT_SERVER_API_PORT="$port" prefect --no-prompt server start --host 127.0.0.1 --port "$port" \
            --background >"$SERVER_LOG" 2>&1; then
        log "the Prefect server did not start; last lines of $SERVER_LOG:"
        tail -n 30 "$SERVER_LOG" >&2
        exit 1
    fi
    if ! healthy "$SERVER_TIMEOUT_S"; then
        log "the Prefect server did not answer $(server_url)/health within ${SERVER_TIMEOUT_S}s;"
        log "run 'prefect server start --port $port' in the foreground to see why"
        prefect --no-prompt server stop >/dev/null 2>&1 || true
        exit 1
    fi
    log "Prefect server healthy"
}

# One request per deployment to GET /api/deployments/name/FLOW/NAME (no Prefect import: fast).
# With a start time (epoch seconds), each must also have been (re)registered since then: the database
# keeps deployments of earlier sessions, whose parameters may be stale until the new serve process
# updates them.
deployments_exist() {
    python - "$(server_url)" "${1:-0}" "${DEPLOYMENTS[@]}" <<'PY'
import json, sys, urllib.request
from datetime import datetime
api, since, names = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
try:
    for name in names:
        with urllib.request.urlopen(f"{api}/deployments/name/{name}", timeout=5) as response:
            updated = json.load(response)["updated"].replace("Z", "+00:00")
            if datetime.fromisoformat(updated).timestamp() < since:
                sys.exit(1)
except (OSError, KeyError, ValueError):
    sys.exit(1)
PY
}

start_serve() {
    if alive "$SERVE_PID_FILE" && deployments_exist; then
        log "deployments already served (pid $(cat "$SERVE_PID_FILE"))"
        return 0
    fi
    stop_group "$SERVE_PID_FILE" "deployment server"
    log "serving the deployments (log: $SERVE_LOG)"
    local started
    started="$(date +%s)"
    start_detached "$SERVE_PID_FILE" "$SERVE_LOG" neuralign serve
    wait_until "'neuralign serve'" "$SERVE_PID_FILE" "$SERVE_LOG" "$SERVE_TIMEOUT_S" 2 \
        "did not register the deployments" deployments_exist "$started"
    log "deployments ready: ${DEPLOYMENTS[*]}"
}

start_server
export PREFECT_API_URL="$(server_url)"
write_env_file
start_serve
log "UI: $(server_url | sed 's#/api$##')   (shell settings: . $ENV_FILE)"
