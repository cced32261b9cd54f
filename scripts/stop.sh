#!/usr/bin/env bash
# Stops exactly the processes scripts/start.sh started: the deployment server first (so no run is left
# half-submitted), then the Prefect server. Each is stopped as a process group (SIGTERM, then SIGKILL).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

stop_group "$SERVE_PID_FILE" "deployment server"
stop_group "$SERVER_PID_FILE" "Prefect server"
log "stopped"
