#!/usr/bin/env bash
# The demo: installs what is missing, then
#  1. starts a simulated TPM with its own manufacturer CA and reads its identity as an operator would;
#  2. starts a server (trust domain example.org), generates a join token, starts an agent with it,
#     registers an entry for this shell's uid, and fetches an X.509-SVID and a JWT-SVID through the
#     SPIFFE Workload API with the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

state="$(mktemp -d /tmp/spiffe-edge-demo.XXXXXX)"
server_pid=""
agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
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

address="$(json "$(cat "$state/server.out")" listening)"

echo
echo "== spiffe-edge server token generate --spiffeID spiffe://example.org/gateway/1"
token="$(json "$(./bin/spiffe-edge server token generate --admin-socket "$sock" --spiffeID spiffe://example.org/gateway/1 --json)" token)"
echo "Token: $token"

echo
echo "== spiffe-edge server entry create --parentID spiffe://example.org/gateway/1 --spiffeID spiffe://example.org/demo --selector unix:uid:$(id -u)"
./bin/spiffe-edge server entry create --admin-socket "$sock" \
  --parentID spiffe://example.org/gateway/1 --spiffeID spiffe://example.org/demo --selector "unix:uid:$(id -u)"

api="$state/agent/public/api.sock"
echo "== spiffe-edge agent run --config examples/local/agent.conf --join-token … --socket-path $api"
./bin/spiffe-edge agent run --config examples/local/agent.conf --data-dir "$state/agent" \
  --socket-path "$api" --server-address "$address" --join-token "$token" --insecure-bootstrap \
  >"$state/agent.out" 2>"$state/agent.log" &
agent_pid=$!
for _ in $(seq 1 100); do [ -s "$state/agent.out" ] && break; sleep 0.1; done
cat "$state/agent.out"

echo
echo "== spiffe-edge api fetch x509 --socket-path $api --write $state/svid"
./bin/spiffe-edge api fetch x509 --socket-path "$api" --write "$state/svid"
openssl verify -CAfile "$state/svid/bundle.0.pem" "$state/svid/svid.0.pem"

echo
echo "== spiffe-edge api fetch jwt --audience demo --socket-path $api"
./bin/spiffe-edge api fetch jwt --audience demo --socket-path "$api"

echo "== spiffe-edge sim tpm stop --state $state/tpm"
./bin/spiffe-edge sim tpm stop --state "$state/tpm"
