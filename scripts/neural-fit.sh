#!/usr/bin/env bash
# The README's first command (`make neural-fit`): start or reuse the local Prefect server and the served
# deployments, run neural-fit/default to completion, and say where its report is.
# Extra arguments go to `prefect deployment run`, e.g.  scripts/neural-fit.sh --param device=cuda
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

"$ROOT/scripts/start.sh"
export PREFECT_API_URL="$(server_url)"
REPORT_DIR="$NEURALIGN_WORK/runs/neural-fit-default"

log "running neural-fit/default (progress: $(server_url | sed 's#/api$##')/runs)"
if ! prefect --no-prompt deployment run neural-fit/default --watch "$@"; then
    log "neural-fit/default failed; its logs are in the UI ($(server_url | sed 's#/api$##')) and in $SERVE_LOG"
    exit 1
fi

log "report: $REPORT_DIR/report.md"
log "summary table: $REPORT_DIR/summary.csv"
