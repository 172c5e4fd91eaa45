#!/usr/bin/env bash
# template-nginx: `concord template` renders an nginx upstream block from the healthy `web`
# instances and reloads a stand-in server (server.py, as `nginx -s reload` would) whenever
# the block changes.
#
#   ./run.sh        start a dev agent, the stand-in and concord template; add an instance
#   ./stop.sh       stop exactly what run.sh started (same as ./run.sh stop)
set -euo pipefail
EXAMPLE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$EXAMPLE_DIR/../lib/common.sh"

if [[ "${1:-}" == stop ]]; then
  stop_all
  exit 0
fi

find_concord
if [[ -s "$PID_FILE" ]]; then
  echo "this example may still be running; run ./stop.sh first" >&2
  exit 1
fi
rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR"
: >"$PID_FILE"
trap stop_on_failure EXIT
CONF="$RUN_DIR/web.conf"

leader() { curl -sf --max-time 2 "http://$HTTP_ADDR/v1/status/leader" | grep -q ':'; }
register() {
  curl -sf -X PUT "http://$HTTP_ADDR/v1/catalog/register" -d "{
    \"Node\": \"$1\", \"Address\": \"$2\",
    \"Service\": {\"ID\": \"web\", \"Service\": \"web\", \"Port\": 8080}
  }" >/dev/null
}
shows() { curl -sf --max-time 2 http://127.0.0.1:9090/ | grep -q "$1"; }

echo "==> a dev agent, two web instances"
start agent "$CONCORD" agent -dev
wait_until "the agent's leader" 30 leader
register web01 10.0.0.1
register web02 10.0.0.2

echo "==> the stand-in server, and concord template reloading it on change"
start server python3 "$EXAMPLE_DIR/server.py" "$CONF"
SERVER_PID="$(awk '$3 == "server" {print $1}' "$PID_FILE")"
# Until its handler is installed, a SIGHUP would end it.
wait_until "the stand-in server" 30 shows loaded
start template "$CONCORD" template \
  -template "$EXAMPLE_DIR/upstream.ctmpl:$CONF:kill -HUP $SERVER_PID"
wait_until "the first render" 30 shows 10.0.0.2
curl -s http://127.0.0.1:9090/ | sed 's/^/    /'

echo "==> a third instance: the block is rendered again and the server reloaded"
register web03 10.0.0.3
wait_until "the reload" 30 shows 10.0.0.3
curl -s http://127.0.0.1:9090/ | sed 's/^/    /'

trap - EXIT
echo
echo "Everything keeps running; register or deregister web instances and watch"
echo "curl http://127.0.0.1:9090/. Stop it with $EXAMPLE_DIR/stop.sh"
