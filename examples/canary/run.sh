#!/usr/bin/env bash
# canary: shift api's traffic from v1 to v2 with service-splitter config entries.
#
#   ./run.sh        start everything (in the background), then apply 90/10, 50/50 and 0/100,
#                   sending 200 requests through web's sidecar after each and counting versions
#   ./stop.sh       stop exactly what run.sh started (same as ./run.sh stop)
set -euo pipefail
EXAMPLE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$EXAMPLE_DIR/../lib/common.sh"
UPSTREAM=http://127.0.0.1:9192/ # web's sidecar listener for upstream api
WEB_ADMIN=127.0.0.1:19002       # web's Envoy admin API
REQUESTS=200

if [[ "${1:-}" == stop ]]; then
  stop_all
  exit 0
fi

preflight
trap stop_on_failure EXIT

echo "==> starting the concord dev agent with services.hcl (api-v1, api-v2, web)"
start_agent -config-file "$EXAMPLE_DIR/services.hcl"

echo "==> concord config write: api speaks http; subsets v1 and v2 by Service.Meta.version"
"$CONCORD" config write "$EXAMPLE_DIR/service-defaults.hcl"
"$CONCORD" config write "$EXAMPLE_DIR/resolver.hcl"

echo "==> starting api v1 (9011), api v2 (9012) and the three Envoy sidecars"
start api-v1 python3 "$EXAMPLE_DIR/api.py" 9011 v1
start api-v2 python3 "$EXAMPLE_DIR/api.py" 9012 v2
wait_http http://127.0.0.1:9011/
wait_http http://127.0.0.1:9012/
start_sidecar envoy-api-v1 api-v1 19000 31
start_sidecar envoy-api-v2 api-v2 19001 32
start_sidecar envoy-web web 19002 33
wait_passing api 2
wait_until "web -> api through the mesh" 30 curl -sf --max-time 5 "$UPSTREAM"

# route_version: the version of the `api` route configuration web's Envoy is using.
route_version() {
  curl -sf "http://$WEB_ADMIN/config_dump?resource=dynamic_route_configs" | python3 -c '
import json, sys
for c in json.load(sys.stdin).get("configs", []):
    if c.get("route_config", {}).get("name") == "api":
        print(c.get("version_info", ""))'
}
route_changed() { [[ "$(route_version)" != "$1" ]]; }

# count_versions: sends $REQUESTS requests to api through web's sidecar (one curl, one kept-alive
# connection; Envoy picks a split per request) and counts the answers per version.
count_versions() {
  local urls=()
  for ((i = 0; i < REQUESTS; i++)); do urls+=("$UPSTREAM"); done
  curl -s --max-time 60 "${urls[@]}" | python3 -c '
import collections, json, sys
counts = collections.Counter()
for line in sys.stdin:
    if line.strip():
        try:
            counts[json.loads(line)["version"]] += 1
        except ValueError:
            counts["error"] += 1
shown = "  ".join(f"{v}: {counts.pop(v, 0):3d}" for v in ("v1", "v2"))
shown += "".join(f"  {k}: {n}" for k, n in counts.items())
print(f"    {shown}")'
}

echo
echo "==> before any splitter: the resolver sends everything to the default subset v1"
echo "    $REQUESTS requests to $UPSTREAM:"
count_versions

for split in 90-10 50-50 0-100; do
  before="$(route_version)"
  echo
  echo "==> concord config write splitter-$split.hcl   (v1 ${split%-*}%, v2 ${split#*-}%)"
  "$CONCORD" config write "$EXAMPLE_DIR/splitter-$split.hcl"
  wait_until "web's Envoy to receive the new route" 15 route_changed "$before"
  echo "    $REQUESTS requests to $UPSTREAM:"
  count_versions
done

trap - EXIT
cat <<EOT

Everything is still running (PIDs in ${PID_FILE#"$REPO_DIR/"}). Try:

  $CONCORD config write $EXAMPLE_DIR/splitter-90-10.hcl
  for i in \$(seq 20); do curl -s localhost:9192; done
  curl -s localhost:8500/v1/discovery-chain/api
  curl -s 'localhost:19002/config_dump?resource=dynamic_route_configs'   # web's Envoy: weighted clusters
  $CONCORD config read -kind service-splitter -name api

Stop it with: ${EXAMPLE_DIR#"$REPO_DIR/"}/stop.sh
EOT
