#!/usr/bin/env bash
# Stops exactly the processes scripts/start.sh started: the deployment server first (so no run is left
# half-submitted; its process group gets SIGTERM, then SIGKILL), then the Prefect server (`prefect server stop`).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

stop_group "$SERVE_PID_FILE" "deployment server"
log "stopping the Prefect server"
prefect --no-prompt server stop >/dev/null
log "stopped"
