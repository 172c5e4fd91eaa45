#!/usr/bin/env bash
# Stops exactly the processes run.sh started (the PIDs recorded in .run/pids).
set -euo pipefail
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/run.sh" stop
