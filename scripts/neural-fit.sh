#!/usr/bin/env bash
# The README's first command (`make neural-fit`): start or reuse the local Prefect server and the served
# deployments (restarting `neuralign serve` if it is gone), run neural-fit/default to completion, and say
# where its report is; when the run fails, print why (the final state's message: the error's first line,
# or the failed checkpoints and their reasons) and exit 1.
# Extra arguments go to `prefect deployment run`, e.g.  scripts/neural-fit.sh --param device=cuda
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

"$ROOT/scripts/start.sh"
export PREFECT_API_URL="$(server_url)"
UI="$(server_url | sed 's#/api$##')"
RUN_OUTPUT="$NEURALIGN_WORK/neural-fit.out"

# Prints four lines about a flow run: its state, its state's message (on one line), its report folder, and
# "yes" when report.md there is newer than the run's start. Reads the REST API directly (no Prefect import: fast).
flow_run_outcome() {
    python - "$(server_url)" "$1" <<'PY'
import json, sys, urllib.request
from datetime import datetime
from pathlib import Path
api, run_id = sys.argv[1], sys.argv[2]
with urllib.request.urlopen(f"{api}/flow_runs/{run_id}", timeout=10) as response:
    run = json.load(response)
state = run.get("state") or {}
out = (run.get("parameters") or {}).get("out") or ""
report = Path(out) / "report.md" if out else None
started = run.get("start_time")
written = bool(report and report.is_file() and started and
               report.stat().st_mtime >= datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp())
message = " ".join((state.get("message") or "").split())
print("\n".join([state.get("name") or "unknown", message, out, "yes" if written else "no"]))
PY
}

log "running neural-fit/default (progress: $UI/runs)"
set +e
prefect --no-prompt deployment run neural-fit/default --watch "$@" 2>&1 | tee "$RUN_OUTPUT"
watched="${PIPESTATUS[0]}"
set -e
run_id="$(grep -oE 'UUID: *[0-9a-f-]{36}' "$RUN_OUTPUT" | head -n 1 | grep -oE '[0-9a-f-]{36}' || true)"
if [[ -z "$run_id" ]]; then
    log "neural-fit/default was not started (see the lines above)"
    exit 1
fi
mapfile -t outcome < <(flow_run_outcome "$run_id")
state="${outcome[0]:-unknown}" message="${outcome[1]:-}" out="${outcome[2]:-}" written="${outcome[3]:-no}"
if [[ "$watched" -ne 0 || "$state" != "Completed" ]]; then
    log "neural-fit/default ended $state: ${message:-no message}"
    if [[ "$written" == "yes" ]]; then
        log "report (with the failed checkpoints and their reasons): $out/report.md"
    fi
    log "flow run $run_id: logs in the UI ($UI/runs/flow-run/$run_id), in $SERVE_LOG, or: prefect flow-run logs $run_id"
    exit 1
fi

log "report: $out/report.md"
log "summary table: $out/summary.csv"
