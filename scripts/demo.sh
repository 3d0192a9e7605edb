#!/usr/bin/env bash
# The demo: installs what is missing, then
#  1. starts a simulated TPM with its own manufacturer CA and reads its identity as an operator would;
#  2. starts a server (trust domain example.org), generates a join token, registers a workload entry
#     and prints the trust bundle.
# The agent (and an SVID over the Workload API) joins the demo with its issue.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

state="$(mktemp -d /tmp/spiffe-edge-demo.XXXXXX)"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  ./bin/spiffe-edge sim tpm stop --state "$state/tpm" >/dev/null 2>&1 || true
  rm -rf "$state"
}
trap cleanup EXIT
json() { node -e 'console.log(JSON.parse(process.argv[1])[process.argv[2]])' "$1" "$2"; }

echo
echo "== spiffe-edge sim tpm start --state $state/tpm"
started="$(./bin/spiffe-edge sim tpm start --state "$state/tpm")"
echo "$started"
tcti="$(json "$started" tcti)"

echo
echo "== spiffe-edge tpm info --tcti $tcti"
./bin/spiffe-edge tpm info --tcti "$tcti"

echo "== spiffe-edge server run --config examples/local/server.conf --data-dir $state/server --port 0"
./bin/spiffe-edge server run --config examples/local/server.conf --data-dir "$state/server" --port 0 \
  >"$state/server.out" 2>"$state/server.log" &
server_pid=$!
for _ in $(seq 1 100); do [ -s "$state/server.out" ] && break; sleep 0.1; done
cat "$state/server.out"
sock="$state/server/admin.sock"

echo
echo "== spiffe-edge server token generate --spiffeID spiffe://example.org/gateway/1"
./bin/spiffe-edge server token generate --admin-socket "$sock" --spiffeID spiffe://example.org/gateway/1

echo
echo "== spiffe-edge server entry create --parentID spiffe://example.org/gateway/1 --spiffeID spiffe://example.org/web --selector unix:uid:1000"
./bin/spiffe-edge server entry create --admin-socket "$sock" \
  --parentID spiffe://example.org/gateway/1 --spiffeID spiffe://example.org/web --selector unix:uid:1000

echo "== spiffe-edge server bundle show"
./bin/spiffe-edge server bundle show --admin-socket "$sock"

echo "== spiffe-edge sim tpm stop --state $state/tpm"
./bin/spiffe-edge sim tpm stop --state "$state/tpm"
