# Shared settings and helpers for the scripts behind `make neural-fit`, `make serve`, `make stop`, `make ui`.
# Sourced, not run. Everything they start lives under $NEURALIGN_WORK (default ./work): pids, ports, logs,
# the Prefect home (SQLite database, settings) and the runs' outputs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
export NEURALIGN_WORK="${NEURALIGN_WORK:-$ROOT/work}"
mkdir -p "$NEURALIGN_WORK"
NEURALIGN_WORK="$(cd "$NEURALIGN_WORK" && pwd)"
export PATH="$VENV/bin:$PATH"

# Offline, loopback-only, and nothing written outside the work folder.
export PREFECT_HOME="$NEURALIGN_WORK/prefect"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_API_HOST=127.0.0.1
export PREFECT_LOCAL_STORAGE_PATH="$PREFECT_HOME/storage"
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120
export PREFECT_RUNNER_POLL_FREQUENCY="${PREFECT_RUNNER_POLL_FREQUENCY:-2}"

# The server runs under Prefect's own lifecycle (`prefect server start --background` keeps its pid in
# $PREFECT_HOME/server.pid, `prefect server stop` ends it); only the port it was given is ours to remember.
SERVER_PORT_FILE="$NEURALIGN_WORK/prefect-server.port"
SERVER_LOG="$NEURALIGN_WORK/prefect-server.log"
SERVE_PID_FILE="$NEURALIGN_WORK/serve.pid"
SERVE_LOG="$NEURALIGN_WORK/serve.log"
ENV_FILE="$NEURALIGN_WORK/env.sh"

log() { printf '[neuralign] %s\n' "$*" >&2; }

free_port() {
    python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# True when the pid file names a live process that is the leader of its own process group
# (every process these scripts start is), so a stale pid reused by another program is not mistaken for ours.
# A killed process its parent has not reaped yet (a zombie, state Z) is not alive.
alive() {
    local pid_file="$1" pid
    [[ -f "$pid_file" ]] || return 1
    pid="$(cat "$pid_file")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && [[ "$(ps -o pgid= -p "$pid" | tr -d ' ')" == "$pid" ]] \
        && [[ "$(ps -o stat= -p "$pid" | tr -d ' ')" != Z* ]]
}

server_url() { echo "http://127.0.0.1:$(cat "$SERVER_PORT_FILE")/api"; }

# `prefect server status` against the remembered port; with a timeout it waits that long for the server.
healthy() {
    [[ -f "$SERVER_PORT_FILE" ]] || return 1
    local wait=(--no-wait)
    [[ -n "${1:-}" ]] && wait=(--wait --timeout "$1")
    PREFECT_API_URL="$(server_url)" prefect --no-prompt server status "${wait[@]}" >/dev/null 2>&1
}

# Starts "$@" in its own session (so the process group can be stopped as one), logging to $1's file.
start_detached() {
    local pid_file="$1" log_file="$2"
    shift 2
    setsid "$@" >"$log_file" 2>&1 </dev/null &
    echo $! >"$pid_file"
}

# Stops the process group named by a pid file: SIGTERM, then SIGKILL after a grace period.
stop_group() {
    local pid_file="$1" name="$2" pid
    if ! alive "$pid_file"; then
        rm -f "$pid_file"
        return 0
    fi
    pid="$(cat "$pid_file")"
    log "stopping $name (process group $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not stop on SIGTERM; sending SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$pid_file"
}

write_env_file() {
    cat >"$ENV_FILE" <<ENV
# Source this file to talk to the neuralign Prefect server from your shell:  . work/env.sh
export PATH="$VENV/bin:\$PATH"
export NEURALIGN_WORK="$NEURALIGN_WORK"
export PREFECT_HOME="$PREFECT_HOME"
export PREFECT_API_URL="$(server_url)"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
ENV
}
