#!/usr/bin/env bash
# DEMO=federation (scripts/demo.sh runs this): two trust domains on one host, one.test and
# two.test, each a server with a SPIFFE bundle endpoint (https_spiffe) and an agent (join token).
# Each server is told about the other with `server federation create` (SPIRE's flags; the first
# bundle handed over once, as SPIRE's bootstrap), fetches the other's bundle from its endpoint,
# and a workload of each domain gets the other's bundle from its own agent. Then:
#   - mTLS with OpenSSL: one.test's workload serves (s_server), two.test's connects (s_client),
#     each verifying the other's X.509-SVID against the federated bundle only, and each peer's
#     SPIFFE ID (URI SAN) is printed and checked;
#   - a JWT-SVID of two.test validates at one.test's agent, and one of one.test at two.test's.
set -euo pipefail
cd "$(dirname "$0")/.."
state="$(mktemp -d /tmp/spiffe-edge-demo-fed.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  rm -rf "$state"
}
trap cleanup EXIT
se=./bin/spiffe-edge
json() { node -e 'const v=JSON.parse(process.argv[1]); console.log(process.argv[2].split(".").reduce((o,k)=>o[k],v))' "$1" "$2"; }
wait_line() { for _ in $(seq 1 300); do [ -s "$1" ] && return 0; sleep 0.1; done; cat "${1%.out}.log" >&2; return 1; }
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
say() { echo; echo "== $*"; }

declare -A ep
ep[one.test]="$(free_port)"
ep[two.test]="$(free_port)"
peer_of() { [ "$1" = one.test ] && echo two.test || echo one.test; }

for td in one.test two.test; do
  d="$state/$td"
  mkdir -p "$d"
  cat >"$d/server.conf" <<EOF
[server]
trust_domain = "$td"
bind_address = "127.0.0.1"
data_dir = "./server"
log_level = "info"

# Our bundle, published for the other domain (SPIFFE Federation, profile https_spiffe).
[server.federation.bundle_endpoint]
address = "127.0.0.1"
port = ${ep[$td]}
refresh_hint = "2s"

[plugins.KeyManager.disk]
[plugins.NodeAttestor.join_token]
EOF
  say "$td: spiffe-edge server run --config $d/server.conf --port 0"
  sed -n '/federation.bundle_endpoint/,/refresh_hint/p' "$d/server.conf"
  $se server run --config "$d/server.conf" --port 0 >"$d/server.out" 2>"$d/server.log" &
  pids+=($!)
  wait_line "$d/server.out"
  cat "$d/server.out"
done
sock() { echo "$state/$1/server/admin.sock"; }

for td in one.test two.test; do
  peer="$(peer_of "$td")"
  $se server bundle show --format spiffe --admin-socket "$(sock "$peer")" >"$state/$td/$peer.bundle.json"
  say "$td: spiffe-edge server federation create -trustDomain $peer -bundleEndpointURL https://127.0.0.1:${ep[$peer]}/ -bundleEndpointProfile https_spiffe -endpointSpiffeID spiffe://$peer/spire/server -trustDomainBundlePath $peer.bundle.json -trustDomainBundleFormat spiffe"
  echo "   (the bundle file is $peer's, handed over once by its operator: later fetches are checked with the last one fetched)"
  $se server federation create --admin-socket "$(sock "$td")" -trustDomain "$peer" \
    -bundleEndpointURL "https://127.0.0.1:${ep[$peer]}/" -bundleEndpointProfile https_spiffe \
    -endpointSpiffeID "spiffe://$peer/spire/server" \
    -trustDomainBundlePath "$state/$td/$peer.bundle.json" -trustDomainBundleFormat spiffe
done

for td in one.test two.test; do
  peer="$(peer_of "$td")"
  for _ in $(seq 1 100); do
    $se server federation show -trustDomain "$peer" --admin-socket "$(sock "$td")" --json | grep -q lastSuccess && break
    sleep 0.2
  done
  say "$td: spiffe-edge server federation show -trustDomain $peer   (fetched from $peer's bundle endpoint)"
  $se server federation show -trustDomain "$peer" --admin-socket "$(sock "$td")"
done

uid="$(id -u)"
for td in one.test two.test; do
  peer="$(peer_of "$td")"
  d="$state/$td"
  token="$(json "$($se server token generate --admin-socket "$(sock "$td")" --spiffeID "spiffe://$td/host" --json)" token)"
  say "$td: spiffe-edge server entry create --parentID spiffe://$td/host --spiffeID spiffe://$td/workload --selector unix:uid:$uid --federatesWith spiffe://$peer"
  $se server entry create --admin-socket "$(sock "$td")" --parentID "spiffe://$td/host" \
    --spiffeID "spiffe://$td/workload" --selector "unix:uid:$uid" --federatesWith "spiffe://$peer" >/dev/null
  cat >"$d/agent.conf" <<EOF
[agent]
trust_domain = "$td"
server_address = "$(json "$(cat "$d/server.out")" listening)"
data_dir = "./agent"
socket_path = "./agent/public/api.sock"
insecure_bootstrap = true
sync_interval = "1s"
log_level = "info"

[plugins.NodeAttestor.join_token]
[plugins.KeyManager.disk]
[plugins.WorkloadAttestor.unix]
EOF
  say "$td: spiffe-edge agent run --config $d/agent.conf --join-token …"
  $se agent run --config "$d/agent.conf" --join-token "$token" >"$d/agent.out" 2>"$d/agent.log" &
  pids+=($!)
  wait_line "$d/agent.out"
  cat "$d/agent.out"
done
api() { echo "$state/$1/agent/public/api.sock"; }

for td in one.test two.test; do
  peer="$(peer_of "$td")"
  for _ in $(seq 1 150); do
    rm -rf "$state/$td/svid"
    $se api fetch x509 --socket-path "$(api "$td")" --write "$state/$td/svid" >/dev/null 2>&1 &&
      [ -f "$state/$td/svid/federated_bundle.0.0.pem" ] && break
    sleep 0.2
  done
  say "$td: spiffe-edge api fetch x509 --write $state/$td/svid   (the workload of $td, with $peer's bundle)"
  $se api fetch x509 --socket-path "$(api "$td")" --write "$state/$td/svid"
done

say "mTLS with OpenSSL: spiffe://one.test/workload serves, spiffe://two.test/workload connects"
echo "   each side trusts only the other domain's bundle, as its own agent delivered it"
one="$state/one.test/svid"
two="$state/two.test/svid"
port="$(free_port)"
openssl s_server -quiet -accept "127.0.0.1:$port" -cert "$one/svid.0.pem" -key "$one/svid.0.key" \
  -CAfile "$one/federated_bundle.0.0.pem" -Verify 2 -verify_return_error \
  >"$state/s_server.out" 2>"$state/s_server.log" &
pids+=($!)
for _ in $(seq 1 50); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
(echo "hello from spiffe://two.test/workload"; sleep 1) |
  timeout 20 openssl s_client -connect "127.0.0.1:$port" -cert "$two/svid.0.pem" -key "$two/svid.0.key" \
    -CAfile "$two/federated_bundle.0.0.pem" -verify_return_error >"$state/s_client.out" 2>&1 || true
grep -q 'Verify return code: 0 (ok)' "$state/s_client.out" || { cat "$state/s_client.out" >&2; exit 1; }
server_id="$(sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' "$state/s_client.out" | head -n 200 |
  openssl x509 -noout -ext subjectAltName | grep -o 'URI:[^, ]*' | cut -c5-)"
sleep 0.3
grep -q 'hello from spiffe://two.test/workload' "$state/s_server.out" || { cat "$state/s_server.log" >&2; exit 1; }
client_id="$(openssl x509 -in "$two/svid.0.pem" -noout -ext subjectAltName | grep -o 'URI:[^, ]*' | cut -c5-)"
echo "   s_client verified the server's X.509-SVID against two.test's federated bundle of one.test: $server_id (Verify return code: 0 (ok))"
echo "   s_server (-Verify, -verify_return_error) required and verified the client's X.509-SVID against one.test's federated bundle of two.test: $client_id; it received: $(cat "$state/s_server.out")"
[ "$server_id" = spiffe://one.test/workload ] && [ "$client_id" = spiffe://two.test/workload ]
echo "   peer SPIFFE IDs checked: server is spiffe://one.test/workload, client is spiffe://two.test/workload"
echo "   and with only its own domain's CA, s_client refuses the peer:"
if echo | timeout 20 openssl s_client -connect "127.0.0.1:$port" -CAfile "$two/bundle.0.pem" -verify_return_error \
  >"$state/s_client_bad.out" 2>&1; then echo "unexpected: accepted" >&2; exit 1; fi
grep -o 'Verify return code: [^)]*)' "$state/s_client_bad.out" | head -1 | sed 's/^/   /' || echo "   handshake refused"

for pair in "two.test one.test" "one.test two.test"; do
  set -- $pair
  say "JWT-SVID: spiffe://$1/workload fetches one for audience spiffe://$2/workload; spiffe://$2/workload validates it at its own agent"
  tok="$(json "$($se api fetch jwt --audience "spiffe://$2/workload" --socket-path "$(api "$1")" --json)" svids.0.svid)"
  echo "   token: ${tok:0:40}…"
  $se api validate jwt --audience "spiffe://$2/workload" --svid "$tok" --socket-path "$(api "$2")"
done

say "federation demo done: two trust domains federated through their bundle endpoints; each workload verified the other's X.509-SVID (OpenSSL mTLS) and JWT-SVID"
