#!/usr/bin/env bash
# Installs whatever is missing for spiffe-edge on Debian (run as root, or with sudo available):
# system packages, npm dependencies, the TPM addon and the TypeScript build. Idempotent: when
# everything is in place it only checks, in a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# swtpm/swtpm-tools/tpm2-tools: the simulated TPM and an independent implementation to cross-check
# against; libtss2-dev: tpm2-tss for the addon; softhsm2: PKCS#11 token; mosquitto: MQTT v5 broker.
PACKAGES=(swtpm swtpm-tools tpm2-tools libtss2-dev softhsm2 mosquitto mosquitto-clients
  openssl pkg-config make g++ python3 ca-certificates)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install: Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v node >/dev/null 2>&1; then
  echo "install: Node.js >= 20.19 is required (this machine kind ships it; elsewhere install Node 20, 22 or 24 LTS)" >&2
  exit 1
fi
node -e 'const [a,b]=process.versions.node.split(".").map(Number); if (a<20||(a===20&&b<19)) { console.error(`install: Node ${process.versions.node} is too old; need >= 20.19`); process.exit(1) }'

# Build native modules (ours and pkcs11js) against the headers this Node ships, when it ships them:
# node-gyp would otherwise try to download them, and only the npm and Debian registries are reachable.
prefix="$(dirname "$(dirname "$(command -v node)")")"
if [ -z "${npm_config_nodedir:-}" ] && [ -f "$prefix/include/node/node_api.h" ]; then
  export npm_config_nodedir="$prefix"
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ] \
  || [ ! -f node_modules/pkcs11js/build/Release/pkcs11.node ] \
  || [ ! -f node_modules/better-sqlite3/build/Release/better_sqlite3.node ]; then
  echo "install: npm dependencies"
  # npm install, not npm ci: npm 11 writes lockfiles without other platforms' optional packages
  # (Biome's binaries), which npm ci then rejects. Versions still come from the lockfile.
  npm install --no-audit --no-fund --loglevel=error
fi

addon=build/Release/tpm_native.node
# peercred.node (caller credentials, no tpm2-tss) is built with it; a build from before it existed
# has only tpm_native.node.
if [ ! -f "$addon" ] || [ ! -f build/Release/peercred.node ] \
  || [ -n "$(find native binding.gyp -newer "$addon" -type f 2>/dev/null | head -1)" ]; then
  echo "install: building the addons (TPM, peercred)"
  npm run --silent build:native >/tmp/spiffe-edge-native-build.log 2>&1 || {
    cat /tmp/spiffe-edge-native-build.log >&2
    exit 1
  }
fi

echo "install: compiling TypeScript"
npm run --silent build
