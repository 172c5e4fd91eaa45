#!/usr/bin/env bash
# multi-dc: two datacenters on loopback addresses, a service only dc2 has, found from dc1 by
# HTTP (`?dc=dc2`), DNS (`web.service.dc2.consul`) and a prepared query that fails over.
#
#   ./run.sh        start both datacenters' servers (in the background) and show each lookup
#   ./stop.sh       stop exactly what run.sh started (same as ./run.sh stop)
#
# dc1's server is 127.0.0.2, dc2's is 127.0.0.3 (HTTP 8500, DNS 8600 on each); dc2 finds dc1
# in the WAN pool by itself (`-retry-join-wan`).
set -euo pipefail
EXAMPLE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$EXAMPLE_DIR/../lib/common.sh"
DC1="127.0.0.2"
DC2="127.0.0.3"

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

leader() { curl -sf --max-time 2 "http://$1:8500/v1/status/leader" | grep -q ':'; }
knows_dc2() { curl -sf --max-time 2 "http://$DC1:8500/v1/catalog/datacenters" | grep -q dc2; }

echo "==> starting a server for dc1 ($DC1) and one for dc2 ($DC2)"
start dc1 "$CONCORD" agent -dev -datacenter dc1 -node dc1-server -bind "$DC1" -client "$DC1"
start dc2 "$CONCORD" agent -dev -datacenter dc2 -node dc2-server -bind "$DC2" -client "$DC2" \
  -retry-join-wan "$DC1" -retry-interval-wan 1s
wait_until "dc1's leader" 30 leader "$DC1"
wait_until "dc2's leader" 30 leader "$DC2"
wait_until "dc2 in dc1's WAN pool" 30 knows_dc2
CONSUL_HTTP_ADDR="$DC1:8500" "$CONCORD" members -wan

echo "==> registering web in dc2 only"
curl -sf -X PUT "http://$DC2:8500/v1/catalog/register" -d '{
  "Node": "web-host", "Address": "10.0.2.10",
  "Service": {"ID": "web", "Service": "web", "Port": 80},
  "Check": {"CheckID": "web-alive", "Name": "alive", "Status": "passing", "ServiceID": "web"}
}' >/dev/null

echo "==> from dc1, over HTTP:  curl http://$DC1:8500/v1/health/service/web?dc=dc2"
curl -s "http://$DC1:8500/v1/health/service/web?dc=dc2" | python3 -c \
  'import json,sys; [print("   ", e["Node"]["Node"], e["Node"]["Datacenter"], e["Service"]["Address"] or e["Node"]["Address"]) for e in json.load(sys.stdin)]'

if command -v dig >/dev/null; then
  echo "==> from dc1, over DNS:   dig @$DC1 -p 8600 web.service.dc2.consul +short"
  dig @"$DC1" -p 8600 web.service.dc2.consul +short | sed 's/^/    /'
fi

echo "==> a prepared query in dc1 that fails over to the nearest other datacenter"
curl -sf -X POST "http://$DC1:8500/v1/query" \
  -d '{"Name": "web", "Service": {"Service": "web", "Failover": {"NearestN": 1}}}' >/dev/null
curl -s "http://$DC1:8500/v1/query/web/execute" | python3 -c \
  'import json,sys; a=json.load(sys.stdin); print("    answered by", a["Datacenter"], "after", a["Failovers"], "failover(s):", [e["Node"]["Node"] for e in a["Nodes"]])'

trap - EXIT
echo
echo "Both datacenters keep running; try curl \"http://$DC1:8500/v1/catalog/services?dc=dc2\"."
echo "Stop them with $EXAMPLE_DIR/stop.sh"
