#!/usr/bin/env bash
# counting-dashboard: the classic Consul Connect walkthrough on concord.
#
#   ./run.sh        start the agent, both services and their Envoy sidecars (in the background)
#   ./stop.sh       stop exactly what run.sh started (same as ./run.sh stop)
#
# dashboard (9002) -> its Envoy's upstream listener 127.0.0.1:9191 -> mTLS -> counting's Envoy
# (public listener 21000) -> counting (9003).
set -euo pipefail
EXAMPLE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$EXAMPLE_DIR/../lib/common.sh"

if [[ "${1:-}" == stop ]]; then
  stop_all
  exit 0
fi

preflight
trap stop_on_failure EXIT

echo "==> starting the concord dev agent with services.hcl"
start_agent -config-file "$EXAMPLE_DIR/services.hcl"

echo "==> starting the services"
start counting python3 "$EXAMPLE_DIR/counting.py"
start dashboard python3 "$EXAMPLE_DIR/dashboard.py"
wait_http http://127.0.0.1:9003/health
wait_http http://127.0.0.1:9002/health

echo "==> starting the Envoy sidecars (concord connect envoy)"
start_sidecar envoy-counting counting-1 19000 11
start_sidecar envoy-dashboard dashboard 19001 12
wait_passing counting
wait_until "dashboard -> counting through the mesh" 30 curl -sf --max-time 5 http://127.0.0.1:9002/

echo
echo "==> curl localhost:9002   (dashboard -> Envoy -> mTLS -> Envoy -> counting)"
curl -s localhost:9002
curl -s localhost:9002

trap - EXIT
cat <<EOT

Everything is running in the background (PIDs in ${PID_FILE#"$REPO_DIR/"}). Try:

  curl localhost:9002                                   # the count, fetched through two Envoys
  curl localhost:9191                                   # the dashboard's upstream listener itself
  curl localhost:21000                                  # counting's public listener: refused, it wants mTLS
  curl -s 'localhost:8500/v1/health/connect/counting?passing'
  curl -s localhost:19001/clusters | grep counting      # the dashboard Envoy's view of counting
  curl -s localhost:19000/stats | grep -E 'update_rejected|rbac'
  $CONCORD catalog services

Stop it with: ${EXAMPLE_DIR#"$REPO_DIR/"}/stop.sh
EOT
