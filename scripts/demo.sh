#!/usr/bin/env bash
# The demo: installs what is missing, then
#  1. starts a simulated TPM (swtpm) with its own manufacturer CA and reads it as an operator would;
#  2. starts a server that trusts that manufacturer, and an agent that attests with the TPM (its
#     agent key lives in the TPM); registers an entry for this shell's uid under a node alias on the
#     TPM's EK; fetches an X.509-SVID and a JWT-SVID over the SPIFFE Workload API with the CLI.
# DEMO_ATTESTOR=join_token runs the same with a join token instead of the TPM;
# DEMO_ATTESTOR=aws_iid|gcp_iit|azure_msi with that cloud node attestor against its simulated
# instance-metadata service (spiffe-edge sim cloud aws|gcp|azure), which signs with a local
# certificate or JWKS that the demo server is configured to trust.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

attestor="${DEMO_ATTESTOR:-tpm}"
case "$attestor" in
  tpm | join_token) cloud="" ;;
  aws_iid) cloud=aws ;;
  gcp_iit) cloud=gcp ;;
  azure_msi) cloud=azure ;;
  *) echo "DEMO_ATTESTOR must be tpm, join_token, aws_iid, gcp_iit or azure_msi" >&2; exit 2 ;;
esac
state="$(mktemp -d /tmp/spiffe-edge-demo.XXXXXX)"
server_pid=""
agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  ./bin/spiffe-edge sim tpm stop --state "$state/tpm" >/dev/null 2>&1 || true
  [ -n "$cloud" ] && { ./bin/spiffe-edge sim cloud "$cloud" stop --state "$state/cloud" >/dev/null 2>&1 || true; }
  rm -rf "$state"
}
trap cleanup EXIT
json() { node -e 'const v=JSON.parse(process.argv[1]); console.log(process.argv[2].split(".").reduce((o,k)=>o[k],v))' "$1" "$2"; }
wait_line() { for _ in $(seq 1 150); do [ -s "$1" ] && return 0; sleep 0.1; done; cat "${1%.out}.log" >&2; return 1; }

if [ -n "$cloud" ]; then
  echo
  echo "== spiffe-edge sim cloud $cloud start --state $state/cloud"
  started="$(./bin/spiffe-edge sim cloud "$cloud" start --state "$state/cloud")"
  echo "$started"
  metadata_url="$(json "$started" url)"
  trust="$(json "$started" trust)"
  # The server trusts the simulated cloud's signing material as it would AWS's certificates,
  # Google's JWKS or the tenant's keys; examples/cloud/ has the configs for the real clouds.
  case "$cloud" in
    aws)
      server_plugin="account_ids = [\"123456789012\"]
certificates = { \"*\" = \"$trust\" }"
      agent_plugin="metadata_url = \"$metadata_url\""
      node_selector="aws_iid:region:us-west-2" ;;
    gcp)
      server_plugin="projectid_allow_list = [\"edge-fleet-sim\"]
jwks_file = \"$trust\""
      agent_plugin="metadata_url = \"$metadata_url\""
      node_selector="gcp_iit:project-id:edge-fleet-sim" ;;
    azure)
      server_plugin="tenants = { \"72f988bf-86f1-41af-91ab-2d7cd011db47\" = { resource_id = \"api://spiffe-edge-demo\", jwks_file = \"$trust\" } }"
      agent_plugin="metadata_url = \"$metadata_url\"
resource_id = \"api://spiffe-edge-demo\""
      node_selector="azure_msi:vm-name:frontend:blog" ;;
  esac
  printf '[server]\ntrust_domain = "example.org"\nbind_address = "127.0.0.1"\ndata_dir = "./server"\nlog_level = "info"\n\n[plugins.KeyManager.disk]\n\n[plugins.NodeAttestor.%s]\n%s\n' \
    "$attestor" "$server_plugin" >"$state/server.conf"
  printf '[agent]\ntrust_domain = "example.org"\nserver_address = "127.0.0.1:8081"\ndata_dir = "./agent"\ninsecure_bootstrap = true\nlog_level = "info"\n\n[plugins.NodeAttestor.%s]\n%s\n\n[plugins.KeyManager.disk]\n\n[plugins.WorkloadAttestor.unix]\ndiscover_workload_path = true\n' \
    "$attestor" "$agent_plugin" >"$state/agent.conf"
  echo "== $state/server.conf"
  cat "$state/server.conf"
  server_args=(--config "$state/server.conf")
else
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
fi

if [ -n "$cloud" ]; then
  :
elif [ "$attestor" = tpm ]; then
  server_args=(--config examples/local/server-tpm.conf --tpm-ek-ca "$ek_ca")
else
  server_args=(--config examples/local/server.conf)
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

if [ -n "$cloud" ]; then
  echo
  echo "== spiffe-edge server entry create --node --spiffeID spiffe://example.org/gateway/1 --selector $node_selector"
  ./bin/spiffe-edge server entry create --admin-socket "$sock" --node \
    --spiffeID spiffe://example.org/gateway/1 --selector "$node_selector"
  agent_args=(--config "$state/agent.conf")
elif [ "$attestor" = tpm ]; then
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

echo "== spiffe-edge agent run ${agent_args[*]} --socket-path $api"
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

if [ -n "$cloud" ]; then
  echo "== spiffe-edge sim cloud $cloud stop --state $state/cloud"
  ./bin/spiffe-edge sim cloud "$cloud" stop --state "$state/cloud"
else
  echo "== spiffe-edge sim tpm stop --state $state/tpm"
  ./bin/spiffe-edge sim tpm stop --state "$state/tpm"
fi
