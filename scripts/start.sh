#!/usr/bin/env bash
# Starts (or reuses) the local Prefect server and the process serving the neuralign deployments, in the
# background. Waits until the server answers /api/health and the deployments are registered.
# Pids, the chosen port and logs go to $NEURALIGN_WORK (default ./work). Stop them with scripts/stop.sh.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SERVER_TIMEOUT_S="${SERVER_TIMEOUT_S:-180}"
SERVE_TIMEOUT_S="${SERVE_TIMEOUT_S:-180}"
DEPLOYMENTS=(neural-fit/default neural-fit/majajhong2015 train-rule/default compare/default)

start_server() {
    if alive "$SERVER_PID_FILE" && healthy; then
        log "Prefect server already running at $(server_url) (pid $(cat "$SERVER_PID_FILE"))"
        return 0
    fi
    # A half-dead previous server (pid alive, not answering) holds the port and the database: stop it first.
    stop_group "$SERVE_PID_FILE" "deployment server"
    stop_group "$SERVER_PID_FILE" "Prefect server"
    local port
    port="$(free_port)"
    echo "$port" >"$SERVER_PORT_FILE"
    log "starting the Prefect server on 127.0.0.1:$port (log: $SERVER_LOG)"
    PREFECT_SERVER_API_PORT="$port" start_detached "$SERVER_PID_FILE" "$SERVER_LOG" \
        prefect server start --host 127.0.0.1 --port "$port"
    local waited=0
    until healthy; do
        if ! alive "$SERVER_PID_FILE"; then
            log "the Prefect server exited; last lines of $SERVER_LOG:"
            tail -n 30 "$SERVER_LOG" >&2
            exit 1
        fi
        if ((waited >= SERVER_TIMEOUT_S)); then
            log "the Prefect server did not answer $(server_url)/health within ${SERVER_TIMEOUT_S}s; see $SERVER_LOG"
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "Prefect server healthy after ${waited}s"
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
    local waited=0
    until deployments_exist "$started"; do
        if ! alive "$SERVE_PID_FILE"; then
            log "'neuralign serve' exited; last lines of $SERVE_LOG:"
            tail -n 30 "$SERVE_LOG" >&2
            exit 1
        fi
        if ((waited >= SERVE_TIMEOUT_S)); then
            log "the deployments were not registered within ${SERVE_TIMEOUT_S}s; see $SERVE_LOG"
            exit 1
        fi
        sleep 2
        waited=$((waited + 2))
    done
    log "deployments ready: ${DEPLOYMENTS[*]}"
}

start_server
export PREFECT_API_URL="$(server_url)"
write_env_file
start_serve
log "UI: $(server_url | sed 's#/api$##')   (shell settings: . $ENV_FILE)"
