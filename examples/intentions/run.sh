#!/usr/bin/env bash
# intentions: deny, then allow, dashboard -> counting, with the counting-dashboard services.
#
#   ./run.sh        start everything (in the background) and demonstrate deny / allow
#   ./stop.sh       stop exactly what run.sh started (same as ./run.sh stop)
#
# The services, their definitions and sidecars are those of ../counting-dashboard.
set -euo pipefail
EXAMPLE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$EXAMPLE_DIR/../lib/common.sh"
APP_DIR="$EXAMPLES_DIR/counting-dashboard"

if [[ "${1:-}" == stop ]]; then
  stop_all
  exit 0
fi

preflight
trap stop_on_failure EXIT

echo "==> starting the concord dev agent, counting, dashboard and their Envoy sidecars"
start_agent -config-file "$APP_DIR/services.hcl"
start counting python3 "$APP_DIR/counting.py"
start dashboard python3 "$APP_DIR/dashboard.py"
wait_http http://127.0.0.1:9003/health
wait_http http://127.0.0.1:9002/health
start_sidecar envoy-counting counting-1 19000 21
start_sidecar envoy-dashboard dashboard 19001 22
wait_passing counting

# expect_dashboard STATUS: polls `curl localhost:9002` (intentions reach the sidecars within a
# moment) until it answers STATUS, then shows the answer.
expect_dashboard() {
  local want="$1" got body deadline=$((SECONDS + 20))
  while :; do
    body="$(curl -s --max-time 5 -o - -w '\n%{http_code}' http://127.0.0.1:9002/ || true)"
    got="${body##*$'\n'}"
    body="${body%$'\n'*}"
    [[ "$got" == "$want" ]] && break
    if ((SECONDS >= deadline)); then
      echo "FAILED: expected HTTP $want from the dashboard, still getting $got: $body" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "\$ curl localhost:9002     # HTTP $got"
  printf '%s\n' "${body%$'\n'}"
}

echo
echo "==> 1. no intentions yet: the dev agent (no ACLs) allows by default"
expect_dashboard 200

echo
echo "==> 2. deny dashboard -> counting"
echo "\$ concord intention create -deny dashboard counting"
"$CONCORD" intention create -deny dashboard counting
echo "\$ concord intention check dashboard counting"
"$CONCORD" intention check dashboard counting || true
echo "   counting's sidecar now closes dashboard's mTLS connections (RBAC network filter, since"
echo "   counting speaks tcp), so the dashboard answers 502:"
expect_dashboard 502
echo "\$ curl -s localhost:19000/stats | grep connect_authz.rbac    # counting's Envoy"
curl -s localhost:19000/stats | grep -E 'connect_authz\.rbac\.(allowed|denied)'

echo
echo "==> 3. allow it again"
echo "\$ concord intention create -replace -allow dashboard counting"
"$CONCORD" intention create -replace -allow dashboard counting
echo "\$ concord intention check dashboard counting"
"$CONCORD" intention check dashboard counting
expect_dashboard 200

trap - EXIT
cat <<EOT

Everything is still running (PIDs in ${PID_FILE#"$REPO_DIR/"}). Try it yourself:

  $CONCORD intention create -replace -deny dashboard counting
  curl localhost:9002                      # 502: counting unreachable
  $CONCORD intention create -replace -allow dashboard counting
  curl localhost:9002                      # {"count": N, ...}
  $CONCORD intention list
  curl -s localhost:19000/stats | grep connect_authz.rbac

Stop it with: ${EXAMPLE_DIR#"$REPO_DIR/"}/stop.sh
EOT
