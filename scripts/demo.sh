#!/usr/bin/env bash
# The demo: installs what is missing, then starts a simulated TPM with its own manufacturer CA,
# reads its identity the way an operator would on a device, and stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

state="$(mktemp -d /tmp/spiffe-edge-demo.XXXXXX)"
trap './bin/spiffe-edge sim tpm stop --state "$state/tpm" >/dev/null 2>&1 || true; rm -rf "$state"' EXIT

echo
echo "== spiffe-edge sim tpm start --state $state/tpm"
started="$(./bin/spiffe-edge sim tpm start --state "$state/tpm")"
echo "$started"
tcti="$(node -e 'console.log(JSON.parse(process.argv[1]).tcti)' "$started")"

echo
echo "== spiffe-edge tpm info --tcti $tcti"
./bin/spiffe-edge tpm info --tcti "$tcti"

echo "== spiffe-edge sim tpm stop --state $state/tpm"
./bin/spiffe-edge sim tpm stop --state "$state/tpm"
