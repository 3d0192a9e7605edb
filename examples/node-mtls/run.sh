#!/usr/bin/env bash
# Starts a spiffe-edge server and agent, then two Node workloads that talk mTLS through
# @spiffe-edge/spiffe, prints each side's view of its peer's SPIFFE ID, and stops everything.
#   bash examples/node-mtls/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f dist/src/cli/main.js ] || npm run build
[ -f packages/spiffe/dist/packages/spiffe/src/index.js ] || npm run build -w @spiffe-edge/spiffe

tmp=$(mktemp -d /tmp/spiffe-node-mtls.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# Waits for the first line of a background process's output and prints it.
first_line() {
  local file=$1 i
  for i in $(seq 1 300); do
    if [ -s "$file" ]; then head -n1 "$file"; return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for $file" >&2
  return 1
}
json() { node -e 'const o=JSON.parse(process.argv[1]);console.log(o[process.argv[2]])' "$1" "$2"; }

bin/spiffe-edge server run --config examples/local/server.conf --data-dir "$tmp/server" \
  --admin-socket "$tmp/server/admin.sock" --port 0 \
  >"$tmp/server.out" 2>"$tmp/server.log" &
pids+=($!)
ready=$(first_line "$tmp/server.out")
address=$(json "$ready" listening)
admin=$(json "$ready" admin_socket)
echo "server listening on $address"

token=$(bin/spiffe-edge server token generate --admin-socket "$admin" \
  --spiffeID spiffe://example.org/host --json | node -e 'process.stdin.on("data",d=>console.log(JSON.parse(d).value))')
# Both workloads run as this user: each entry carries a hint, and each workload picks its own.
for who in server client; do
  bin/spiffe-edge server entry create --admin-socket "$admin" --parentID spiffe://example.org/host \
    --spiffeID "spiffe://example.org/$who" --selector "unix:uid:$(id -u)" --hint "$who" >/dev/null
done

bin/spiffe-edge agent run --config examples/local/agent.conf --data-dir "$tmp/agent" \
  --socket-path "$tmp/public/api.sock" --server-address "$address" --join-token "$token" \
  >"$tmp/agent.out" 2>"$tmp/agent.log" &
pids+=($!)
first_line "$tmp/agent.out" >/dev/null
export SPIFFE_ENDPOINT_SOCKET="unix://$tmp/public/api.sock"
echo "agent serving the Workload API on $SPIFFE_ENDPOINT_SOCKET"

node examples/node-mtls/server.mjs >"$tmp/workload-server.out" 2>&1 &
pids+=($!)
port=$(json "$(first_line "$tmp/workload-server.out")" listening)
node examples/node-mtls/client.mjs "https://127.0.0.1:$port/"
sleep 0.2
grep -v listening "$tmp/workload-server.out" || true
echo "stopping"
