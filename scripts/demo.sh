#!/usr/bin/env bash
# The demo: installs what is missing, then
#  1. starts a simulated TPM (swtpm) with its own manufacturer CA and reads it as an operator would;
#  2. starts a server that trusts that manufacturer, and an agent that attests with the TPM (its
#     agent key lives in the TPM); registers an entry for this shell's uid under a node alias on the
#     TPM's EK; fetches an X.509-SVID and a JWT-SVID over the SPIFFE Workload API with the CLI.
# DEMO_ATTESTOR=join_token runs the same with a join token instead of the TPM.
# DEMO_TRANSPORT=mqtt runs the node API through a local Mosquitto broker (MQTT v5 over TLS) instead
# of gRPC: the server listens on the broker beside gRPC, the agent reaches only the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

attestor="${DEMO_ATTESTOR:-tpm}"
transport="${DEMO_TRANSPORT:-grpc}"
state="$(mktemp -d /tmp/spiffe-edge-demo.XXXXXX)"
server_pid=""
agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  ./bin/spiffe-edge sim tpm stop --state "$state/tpm" >/dev/null 2>&1 || true
  ./bin/spiffe-edge sim mqtt stop --state "$state/mqtt" >/dev/null 2>&1 || true
  rm -rf "$state"
}
trap cleanup EXIT
json() { node -e 'const v=JSON.parse(process.argv[1]); console.log(process.argv[2].split(".").reduce((o,k)=>o[k],v))' "$1" "$2"; }
wait_line() { for _ in $(seq 1 150); do [ -s "$1" ] && return 0; sleep 0.1; done; cat "${1%.out}.log" >&2; return 1; }

echo
echo "== spiffe-edge sim tpm start --state $state/tpm"
started="$(./bin/spiffe-edge sim tpm start --state "$state/tpm")"
echo "$started"
tcti="$(json "$started" tcti)"
ek_ca="$(json "$started" ek_ca_bundle)"

echo
echo "== spiffe-edge tpm info --tcti $tcti"
./bin/spiffe-edge tpm info --tcti "$tcti"
ek_hash="$(json "$(./bin/spiffe-edge tpm info --tcti "$tcti" --json)" endorsement_keys.0.public_key_sha256)"

if [ "$attestor" = tpm ]; then
  server_args=(--config examples/local/server-tpm.conf --tpm-ek-ca "$ek_ca")
else
  server_args=(--config examples/local/server.conf)
fi
if [ "$transport" = mqtt ]; then
  echo
  echo "== spiffe-edge sim mqtt start --tls --state $state/mqtt"
  broker="$(./bin/spiffe-edge sim mqtt start --tls --state "$state/mqtt")"
  echo "$broker"
  broker_url="$(json "$broker" url)"
  broker_ca="$(json "$broker" ca)"
  # The example config plus its [server.mqtt] table (relative paths are overridden by flags).
  cp "${server_args[1]}" "$state/server.conf"
  printf '\n[server.mqtt]\nurl = "%s"\nca_file = "%s"\n' "$broker_url" "$broker_ca" >>"$state/server.conf"
  server_args[1]="$state/server.conf"
  echo "   [server.mqtt] url = \"$broker_url\", ca_file = \"$broker_ca\""
fi
echo "== spiffe-edge server run ${server_args[*]} --data-dir $state/server --port 0"
./bin/spiffe-edge server run "${server_args[@]}" --data-dir "$state/server" --port 0 \
  >"$state/server.out" 2>"$state/server.log" &
server_pid=$!
wait_line "$state/server.out"
cat "$state/server.out"
sock="$state/server/admin.sock"
address="$(json "$(cat "$state/server.out")" listening)"
api="$state/agent/public/api.sock"

if [ "$attestor" = tpm ]; then
  echo
  echo "== spiffe-edge server entry create --node --spiffeID spiffe://example.org/gateway/1 --selector tpm:ek_hash:$ek_hash"
  ./bin/spiffe-edge server entry create --admin-socket "$sock" --node \
    --spiffeID spiffe://example.org/gateway/1 --selector "tpm:ek_hash:$ek_hash"
  agent_args=(--config examples/local/agent-tpm.conf --tcti "$tcti")
else
  echo
  echo "== spiffe-edge server token generate --spiffeID spiffe://example.org/gateway/1"
  token="$(json "$(./bin/spiffe-edge server token generate --admin-socket "$sock" --spiffeID spiffe://example.org/gateway/1 --json)" token)"
  echo "Token: $token"
  agent_args=(--config examples/local/agent.conf --join-token "$token" --insecure-bootstrap)
fi

echo "== spiffe-edge server entry create --parentID spiffe://example.org/gateway/1 --spiffeID spiffe://example.org/demo --selector unix:uid:$(id -u)"
./bin/spiffe-edge server entry create --admin-socket "$sock" \
  --parentID spiffe://example.org/gateway/1 --spiffeID spiffe://example.org/demo --selector "unix:uid:$(id -u)"

if [ "$transport" = mqtt ]; then
  cp "${agent_args[1]}" "$state/agent.conf"
  printf '\n[agent.mqtt]\nca_file = "%s"\n' "$broker_ca" >>"$state/agent.conf"
  agent_args[1]="$state/agent.conf"
  address="$broker_url"
  echo "   [agent.mqtt] ca_file = \"$broker_ca\"; the agent reaches only the broker"
fi
echo "== spiffe-edge agent run ${agent_args[*]} --socket-path $api --server-address $address"
./bin/spiffe-edge agent run "${agent_args[@]}" --data-dir "$state/agent" --socket-path "$api" \
  --server-address "$address" >"$state/agent.out" 2>"$state/agent.log" &
agent_pid=$!
wait_line "$state/agent.out"
cat "$state/agent.out"

echo
echo "== spiffe-edge server agent list"
./bin/spiffe-edge server agent list --admin-socket "$sock"

echo "== spiffe-edge api fetch x509 --socket-path $api --write $state/svid"
./bin/spiffe-edge api fetch x509 --socket-path "$api" --write "$state/svid"
openssl verify -CAfile "$state/svid/bundle.0.pem" "$state/svid/svid.0.pem"

echo
echo "== spiffe-edge api fetch jwt --audience demo --socket-path $api"
./bin/spiffe-edge api fetch jwt --audience demo --socket-path "$api"

echo "== spiffe-edge sim tpm stop --state $state/tpm"
./bin/spiffe-edge sim tpm stop --state "$state/tpm"
if [ "$transport" = mqtt ]; then
  echo "== spiffe-edge sim mqtt stop --state $state/mqtt"
  ./bin/spiffe-edge sim mqtt stop --state "$state/mqtt"
fi
