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
# DEMO_KEYS=pkcs11 keeps the server's CA and JWT keys and the agent's SVID key in a SoftHSM2 token
# (`sim hsm init`) instead of key files; the agent then attests with a join token (with the TPM
# attestor its SVID key must live in the TPM) unless DEMO_ATTESTOR says otherwise.
# DEMO_TRANSPORT=mqtt runs the node API through a local Mosquitto broker (MQTT v5 over TLS) instead
# of gRPC: the server listens on the broker beside gRPC, the agent reaches only the broker.
# DEMO=federation runs scripts/demo-federation.sh instead: two trust domains (two servers, two
# agents) federated through their bundle endpoints, each workload verifying the other's SVIDs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
case "${DEMO:-}" in
  "") ;;
  federation) exec bash scripts/demo-federation.sh ;;
  *) echo "DEMO must be federation (or unset)" >&2; exit 2 ;;
esac

keys="${DEMO_KEYS:-disk}"
case "$keys" in disk | pkcs11) ;; *) echo "DEMO_KEYS must be disk or pkcs11" >&2; exit 2 ;; esac
if [ "$keys" = pkcs11 ]; then attestor="${DEMO_ATTESTOR:-join_token}"; else attestor="${DEMO_ATTESTOR:-tpm}"; fi
case "$attestor" in
  tpm | join_token) cloud="" ;;
  aws_iid) cloud=aws ;;
  gcp_iit) cloud=gcp ;;
  azure_msi) cloud=azure ;;
  *) echo "DEMO_ATTESTOR must be tpm, join_token, aws_iid, gcp_iit or azure_msi" >&2; exit 2 ;;
esac
transport="${DEMO_TRANSPORT:-grpc}"
case "$transport" in grpc | mqtt) ;; *) echo "DEMO_TRANSPORT must be grpc or mqtt" >&2; exit 2 ;; esac
state="$(mktemp -d /tmp/spiffe-edge-demo.XXXXXX)"
server_pid=""
agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  ./bin/spiffe-edge sim tpm stop --state "$state/tpm" >/dev/null 2>&1 || true
  [ -n "$cloud" ] && { ./bin/spiffe-edge sim cloud "$cloud" stop --state "$state/cloud" >/dev/null 2>&1 || true; }
  ./bin/spiffe-edge sim mqtt stop --state "$state/mqtt" >/dev/null 2>&1 || true
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
      # Resource Manager lookups on the simulator (AAD client credentials, the secret in the
      # simulator's 0600 file): the node entry is on a subnet only Resource Manager knows.
      secret_file="$(json "$started" credentials)"
      server_plugin="tenants = { \"72f988bf-86f1-41af-91ab-2d7cd011db47\" = { resource_id = \"api://spiffe-edge-demo\", jwks_file = \"$trust\", app_id = \"0b1f2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d\", app_secret_file = \"$secret_file\", subscription_id = \"d5b40d61-272e-48da-beb9-05f295c42bd6\" } }
authority_url = \"$metadata_url\"
resource_manager_endpoint = \"$metadata_url\""
      agent_plugin="metadata_url = \"$metadata_url\"
resource_id = \"api://spiffe-edge-demo\""
      node_selector="azure_msi:virtual-network-subnet:network:edge-vnet:gateways"
      node_note="the node selector comes from the Resource Manager lookups (VM, then its NIC) on the simulated AAD and Resource Manager at $metadata_url" ;;
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
# Keys in a token: the same configs with [plugins.KeyManager.disk] replaced by the token's settings.
# The PIN goes to a 0600 file (a config never holds it); SoftHSM2 finds its store via SOFTHSM2_CONF.
with_pkcs11() { # <example config> <copy> <key_label_prefix>
  awk -v block="[plugins.KeyManager.pkcs11]\nmodule_path = \"$hsm_module\"\ntoken_label = \"$hsm_label\"\npin_file = \"$state/hsm.pin\"\nkey_label_prefix = \"$3\"" \
    '$0 == "[plugins.KeyManager.disk]" { print block; next } { print }' "$1" >"$2.tmp"
  mv "$2.tmp" "$2" # $1 may be $2 (the cloud demo writes its own configs)
}
if [ "$keys" = pkcs11 ]; then
  echo
  echo "== spiffe-edge sim hsm init --state $state/hsm"
  hsm="$(./bin/spiffe-edge sim hsm init --state "$state/hsm")"
  echo "$hsm" | sed -E 's/"(so_)?pin":"[^"]*"/"\1pin":"<hidden>"/g'
  export SOFTHSM2_CONF="$(json "$hsm" softhsm2_conf)"
  hsm_module="$(json "$hsm" module)"
  hsm_label="$(json "$hsm" token_label)"
  (umask 077 && json "$hsm" pin >"$state/hsm.pin")
  with_pkcs11 "${server_args[1]}" "$state/server.conf" server
  server_args[1]="$state/server.conf"
  echo
  echo "== spiffe-edge keys test --config $state/server.conf   (the server's key manager: the SoftHSM2 token)"
  ./bin/spiffe-edge keys test --config "$state/server.conf"
fi
if [ "$transport" = mqtt ]; then
  echo
  echo "== spiffe-edge sim mqtt start --tls --state $state/mqtt"
  broker="$(./bin/spiffe-edge sim mqtt start --tls --state "$state/mqtt")"
  echo "$broker"
  broker_url="$(json "$broker" url)"
  broker_ca="$(json "$broker" ca)"
  # The example config plus its [server.mqtt] table (relative paths are overridden by flags).
  [ "${server_args[1]}" = "$state/server.conf" ] || cp "${server_args[1]}" "$state/server.conf"
  printf '\n[server.mqtt]\nurl = "%s"\nca_file = "%s"\n' "$broker_url" "$broker_ca" >>"$state/server.conf"
  server_args[1]="$state/server.conf"
  echo "   [server.mqtt] url = \"$broker_url\", ca_file = \"$broker_ca\""
fi
# Its own admin socket: the default (/tmp/spiffe-edge-server/private/api.sock) may be another server's.
echo "== spiffe-edge server run ${server_args[*]} --data-dir $state/server --admin-socket $state/server/admin.sock --port 0"
./bin/spiffe-edge server run "${server_args[@]}" --data-dir "$state/server" --admin-socket "$state/server/admin.sock" --port 0 \
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
  [ -n "${node_note:-}" ] && echo "   ($node_note)"
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
  token="$(json "$(./bin/spiffe-edge server token generate --admin-socket "$sock" --spiffeID spiffe://example.org/gateway/1 -output json)" value)"
  echo "Token: $token"
  agent_args=(--config examples/local/agent.conf --join-token "$token" --insecure-bootstrap)
fi

echo "== spiffe-edge server entry create --parentID spiffe://example.org/gateway/1 --spiffeID spiffe://example.org/demo --selector unix:uid:$(id -u)"
./bin/spiffe-edge server entry create --admin-socket "$sock" \
  --parentID spiffe://example.org/gateway/1 --spiffeID spiffe://example.org/demo --selector "unix:uid:$(id -u)"

if [ "$keys" = pkcs11 ] && [ "$attestor" != tpm ]; then
  with_pkcs11 "${agent_args[1]}" "$state/agent.conf" agent
  agent_args[1]="$state/agent.conf"
fi
if [ "$transport" = mqtt ]; then
  [ "${agent_args[1]}" = "$state/agent.conf" ] || cp "${agent_args[1]}" "$state/agent.conf"
  # The file names the broker too (the flag below overrides it), so `keys list` reads it as valid.
  sed -i "s#^server_address = .*#server_address = \"$broker_url\"#" "$state/agent.conf"
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

if [ "$keys" = pkcs11 ]; then
  echo
  echo "== spiffe-edge keys list --config $state/server.conf   (CA and JWT keys: objects in the SoftHSM2 token, no key files)"
  ./bin/spiffe-edge keys list --config "$state/server.conf"
  if [ "$attestor" != tpm ]; then
    echo "== spiffe-edge keys list --config $state/agent.conf   (the agent SVID key: in the token too)"
    ./bin/spiffe-edge keys list --config "$state/agent.conf"
  fi
  echo "key files on disk: $(find "$state/server" "$state/agent" -name '*.key.pem' | wc -l)"
  echo "keys: the server's CA and JWT keys$([ "$attestor" != tpm ] && echo " and the agent's SVID key") live in SoftHSM2 token '$hsm_label' (DEMO_KEYS=pkcs11)"
fi
if [ -n "$cloud" ]; then
  echo "== spiffe-edge sim cloud $cloud stop --state $state/cloud"
  ./bin/spiffe-edge sim cloud "$cloud" stop --state "$state/cloud"
else
  echo "== spiffe-edge sim tpm stop --state $state/tpm"
  ./bin/spiffe-edge sim tpm stop --state "$state/tpm"
fi
if [ "$transport" = mqtt ]; then
  echo "== spiffe-edge sim mqtt stop --state $state/mqtt"
  ./bin/spiffe-edge sim mqtt stop --state "$state/mqtt"
fi
