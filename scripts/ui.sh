#!/usr/bin/env bash
# Prints the address of the Prefect UI of the server scripts/start.sh started.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if healthy; then
    echo "$(server_url | sed 's#/api$##')"
else
    log "the Prefect server is not running; start it with: make serve"
    exit 1
fi
