#!/usr/bin/env bash
# DEMO=federation (scripts/demo.sh runs this): two trust domains on one host, one.test and
# two.test, each a server with a SPIFFE bundle endpoint (https_spiffe) and an agent (join token).
# Each server is told about the other with `server federation create` (SPIRE's flags; the first
# bundle handed over once, as SPIRE's bootstrap), fetches the other's bundle from its endpoint,
# and a workload of each domain gets the other's bundle from its own agent. Then:
#   - mTLS with Node's tls: one.test's workload serves, two.test's connects, each verifying the
#     other's X.509-SVID against the federated bundle only and checking the peer's SPIFFE ID;
#   - a JWT-SVID of two.test validates at one.test's agent, and one of one.test at two.test's.
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
# Its own admin socket: the default (/tmp/spiffe-edge-server/private/api.sock) is one per host.
admin_socket = "./server/admin.sock"
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
    $se server federation show -trustDomain "$peer" --admin-socket "$(sock "$td")" | grep -q "^Last fetch OK *: [0-9]" && break
    sleep 0.2
  done
  say "$td: spiffe-edge server federation show -trustDomain $peer   (fetched from $peer's bundle endpoint)"
  $se server federation show -trustDomain "$peer" --admin-socket "$(sock "$td")"
done

uid="$(id -u)"
for td in one.test two.test; do
  peer="$(peer_of "$td")"
  d="$state/$td"
  token="$(json "$($se server token generate --admin-socket "$(sock "$td")" --spiffeID "spiffe://$td/host" --json)" value)"
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

say "mTLS (Node's tls): spiffe://one.test/workload serves, spiffe://two.test/workload connects"
echo "   each side trusts only the other domain's bundle, as its own agent delivered it, and checks the peer's SPIFFE ID"
timeout 30 node - "$state/one.test/svid" "$state/two.test/svid" <<'JS'
const tls = require('node:tls'), fs = require('node:fs'), path = require('node:path')
const [one, two] = process.argv.slice(2)
const f = (d, n) => fs.readFileSync(path.join(d, n))
const uri = (c) => ((c && c.subjectaltname) || '').split(', ').find((s) => s.startsWith('URI:'))?.slice(4)
const srv = tls.createServer({ cert: f(one, 'svid.0.pem'), key: f(one, 'svid.0.key'),
  ca: f(one, 'federated_bundle.0.0.pem'), requestCert: true, rejectUnauthorized: true }, (s) => {
  const peer = uri(s.getPeerCertificate())
  console.log(`   server spiffe://one.test/workload: client certificate verified with two.test's bundle; peer is ${peer}`)
  s.end(peer === 'spiffe://two.test/workload' ? 'ok' : 'wrong peer')
})
srv.listen(0, '127.0.0.1', () => {
  const port = srv.address().port
  const connect = (ca, done) => {
    const c = tls.connect({ host: '127.0.0.1', port, cert: f(two, 'svid.0.pem'), key: f(two, 'svid.0.key'), ca,
      checkServerIdentity: (_h, cert) => uri(cert) === 'spiffe://one.test/workload' ? undefined : new Error(`peer is ${uri(cert)}`) })
    let data = ''
    c.on('secureConnect', () => console.log(`   client spiffe://two.test/workload: server certificate verified with one.test's bundle; peer is ${uri(c.getPeerCertificate())}`))
    c.on('data', (d) => { data += d })
    c.on('end', () => done(null, data))
    c.on('error', (e) => done(e))
  }
  connect(f(two, 'federated_bundle.0.0.pem'), (err, data) => {
    if (err || data !== 'ok') { console.error('mTLS failed', err || data); process.exit(1) }
    console.log('   mTLS OK: each side verified the other\'s X.509-SVID and SPIFFE ID')
    connect(f(two, 'bundle.0.pem'), (err2) => {
      console.log(`   with only its own domain's CA instead, the client refuses: ${err2 ? err2.code || err2.message : 'ACCEPTED (bad)'}`)
      srv.close(); process.exit(err2 ? 0 : 1)
    })
  })
})
JS

for pair in "two.test one.test" "one.test two.test"; do
  set -- $pair
  say "JWT-SVID: spiffe://$1/workload fetches one for audience spiffe://$2/workload; spiffe://$2/workload validates it at its own agent"
  tok="$(json "$($se api fetch jwt --audience "spiffe://$2/workload" --socket-path "$(api "$1")" --json)" svids.0.svid)"
  echo "   token: ${tok:0:40}…"
  $se api validate jwt --audience "spiffe://$2/workload" --svid "$tok" --socket-path "$(api "$2")"
done

say "federation demo done: two trust domains federated through their bundle endpoints; each workload verified the other's X.509-SVID (mTLS) and JWT-SVID"
