#!/usr/bin/env bash
# DEMO=federation (run through scripts/demo.sh): two trust domains on one host, one.test and
# two.test, each with its own server and agent. Each server publishes its bundle on an
# https_spiffe bundle endpoint; the operator bootstraps each side once with the other's bundle
# (`server federation create -trustDomainBundlePath`, as SPIRE's https_spiffe profile needs), and
# from then on each server refreshes the other's bundle from its endpoint. A workload in each
# domain then verifies the other's X.509-SVID (openssl verify, and an mTLS handshake with Node's
# tls checking each peer's SPIFFE ID) and the other's JWT-SVID (through its own agent's ValidateJWTSVID).
set -euo pipefail
cd "$(dirname "$0")/.."

state="$(mktemp -d /tmp/spiffe-edge-demo-fed.XXXXXX)"
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  rm -rf "$state"
  exit "$rc"
}
trap cleanup EXIT
json() { node -e 'const v=JSON.parse(process.argv[1]); console.log(process.argv[2].split(".").reduce((o,k)=>o[k],v))' "$1" "$2"; }
wait_line() { for _ in $(seq 1 150); do [ -s "$1" ] && return 0; sleep 0.1; done; cat "${1%.out}.log" >&2; return 1; }
# (background processes are started as ./bin/spiffe-edge itself, so $! is the process to stop)
cli() { ./bin/spiffe-edge "$@"; }

declare -A addr endpoint sock api
for td in one two; do
  d="$state/$td"
  mkdir -p "$d"
  sock[$td]="$d/admin.sock"
  api[$td]="$d/workload/api.sock"
  cat >"$d/server.conf" <<EOF
[server]
trust_domain = "$td.test"
bind_address = "127.0.0.1"
bind_port = 0
data_dir = "./server"
admin_socket = "./admin.sock"
log_level = "info"

[server.federation.bundle_endpoint]
address = "127.0.0.1"
port = 0
refresh_hint = "10s"
profile = "https_spiffe"

[plugins.KeyManager.disk]

[plugins.NodeAttestor.join_token]
EOF
  echo "== [$td.test] spiffe-edge server run --config $d/server.conf   (bundle endpoint, profile https_spiffe)"
  ./bin/spiffe-edge server run --config "$d/server.conf" >"$d/server.out" 2>"$d/server.log" &
  pids+=($!)
  wait_line "$d/server.out"
  first="$(head -1 "$d/server.out")"
  echo "$first"
  addr[$td]="$(json "$first" listening)"
  endpoint[$td]="https://$(json "$first" bundle_endpoint)"
done

# Bootstrap (once): each side gets the other's current bundle out of band, as an operator would
# copy it; afterwards the bundle endpoint keeps it fresh (refresh hint 10 s).
for pair in "one two" "two one"; do
  set -- $pair
  me=$1 other=$2
  cli server bundle show --socketPath "${sock[$other]}" --format spiffe >"$state/$other.bundle.json"
  echo
  echo "== [$me.test] spiffe-edge server federation create -trustDomain $other.test -bundleEndpointURL ${endpoint[$other]} -bundleEndpointProfile https_spiffe -endpointSpiffeID spiffe://$other.test/spire/server -trustDomainBundlePath $other.bundle.json -trustDomainBundleFormat spiffe"
  cli server federation create -socketPath "${sock[$me]}" -trustDomain "$other.test" \
    -bundleEndpointURL "${endpoint[$other]}" -bundleEndpointProfile https_spiffe \
    -endpointSpiffeID "spiffe://$other.test/spire/server" \
    -trustDomainBundlePath "$state/$other.bundle.json" -trustDomainBundleFormat spiffe
done

for pair in "one two" "two one"; do
  set -- $pair
  me=$1 other=$2
  d="$state/$me"
  # The agent trusts its server through the server's bundle file (no trust on first use).
  cli server bundle show --socketPath "${sock[$me]}" --format pem >"$d/trust-bundle.pem"
  token="$(json "$(cli server token generate --socketPath "${sock[$me]}" --spiffeID "spiffe://$me.test/gateway" --json)" value)"
  echo
  echo "== [$me.test] entry for this shell's uid, federating with $other.test"
  cli server entry create --socketPath "${sock[$me]}" --parentID "spiffe://$me.test/gateway" \
    --spiffeID "spiffe://$me.test/workload" --selector "unix:uid:$(id -u)" \
    --federatesWith "spiffe://$other.test"
  cat >"$d/agent.conf" <<EOF
[agent]
trust_domain = "$me.test"
server_address = "${addr[$me]}"
data_dir = "./agent"
trust_bundle_path = "./trust-bundle.pem"
socket_path = "./workload/api.sock"
sync_interval = "2s"
log_level = "info"

[plugins.NodeAttestor.join_token]

[plugins.KeyManager.disk]

[plugins.WorkloadAttestor.unix]
EOF
  mkdir -p "$d/workload"
  chmod 0755 "$d/workload"
  echo "== [$me.test] spiffe-edge agent run --config $d/agent.conf --join-token …"
  ./bin/spiffe-edge agent run --config "$d/agent.conf" --join-token "$token" >"$d/agent.out" 2>"$d/agent.log" &
  pids+=($!)
  wait_line "$d/agent.out"
done

for td in one two; do
  d="$state/$td"
  echo
  echo "== [$td.test] spiffe-edge api fetch x509 -socketPath ${api[$td]} -write $d/svid"
  for _ in $(seq 1 50); do
    cli api fetch x509 -socketPath "${api[$td]}" -write "$d/svid" >"$d/fetch.out" 2>&1 &&
      [ -s "$d/svid/federated_bundle.0.0.pem" ] && break
    sleep 0.2
  done
  cat "$d/fetch.out"
done

echo
echo "== X.509: each domain verifies the other's SVID with the federated bundle its workload received"
openssl verify -CAfile "$state/one/svid/federated_bundle.0.0.pem" "$state/two/svid/svid.0.pem"
openssl verify -CAfile "$state/two/svid/federated_bundle.0.0.pem" "$state/one/svid/svid.0.pem"
for s in "one/svid/svid.0.pem" "two/svid/svid.0.pem"; do
  echo "   $s: $(openssl x509 -in "$state/$s" -noout -ext subjectAltName | tail -1 | sed 's/^ *//')"
done

echo
echo "== mTLS (Node tls): one.test's workload serves, two.test's connects; each trusts the other's domain bundle and checks the peer's SPIFFE ID"
node scripts/lib/mtls-check.mjs "$state/one/svid" spiffe://two.test/workload "$state/two/svid" spiffe://one.test/workload

echo
echo "== JWT: two.test's workload gets a JWT-SVID for audience spiffe://one.test/workload; one.test's agent validates it with two.test's keys"
jwt="$(json "$(cli api fetch jwt -socketPath "${api[two]}" -audience spiffe://one.test/workload -output json)" svids.0.svid)"
cli api validate jwt -socketPath "${api[one]}" -audience spiffe://one.test/workload -svid "$jwt"
jwt="$(json "$(cli api fetch jwt -socketPath "${api[one]}" -audience spiffe://two.test/workload -output json)" svids.0.svid)"
cli api validate jwt -socketPath "${api[two]}" -audience spiffe://two.test/workload -svid "$jwt"

echo
echo "== [one.test] spiffe-edge server federation list"
cli server federation list -socketPath "${sock[one]}"
echo "federation demo: two trust domains federated through their bundle endpoints; each verified the other's X.509-SVID and JWT-SVID"
