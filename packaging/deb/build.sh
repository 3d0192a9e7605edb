#!/bin/sh
# Builds the spiffe-edge .deb for this machine's architecture with dpkg-deb:
#   /usr/lib/spiffe-edge   the CLI: dist/, proto/, bin/, production node_modules and the native
#                          addons (ours and the dependencies'), all built here, for this target
#   /usr/bin/spiffe-edge   a wrapper running it with the nodejs package's node
#   /lib/systemd/system    spiffe-edge-server.service, spiffe-edge-agent.service
#   /etc/spiffe-edge       example server.conf and agent.conf (conffiles), /etc/logrotate.d
# Usage: packaging/deb/build.sh [OUTPUT_DIR]   (default: dist/deb; prints the .deb path)
# Env:   SPIFFE_EDGE_DEB_SKIP_BUILD=1   reuse dist/ and build/Release (tests; CI builds first)
#        SPIFFE_EDGE_DEB_COMPRESSION    dpkg-deb -Z value (default xz; gzip is much faster)
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-"$ROOT/dist/deb"}
COMPRESSION=${SPIFFE_EDGE_DEB_COMPRESSION:-xz}
command -v dpkg-deb >/dev/null || { echo "build.sh: dpkg-deb is required (apt-get install dpkg)" >&2; exit 1; }

cd "$ROOT"
if [ "${SPIFFE_EDGE_DEB_SKIP_BUILD:-0}" != 1 ]; then
  npm run build
  npm run build:native
fi
for f in dist/src/cli/main.js build/Release/peercred.node; do
  [ -e "$f" ] || { echo "build.sh: $f is missing: run npm run build && npm run build:native" >&2; exit 1; }
done
[ -e build/Release/tpm_native.node ] ||
  echo "build.sh: warning: build/Release/tpm_native.node is missing: the package will have no TPM support" >&2

VERSION=$(node -p 'require("./package.json").version')
ARCH=$(dpkg --print-architecture)
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/spiffe-edge-deb.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT INT TERM
PKG="$STAGE/pkg"
LIB="$PKG/usr/lib/spiffe-edge"
mkdir -p "$LIB/build/Release" "$PKG/usr/bin" "$PKG/lib/systemd/system" "$PKG/etc/spiffe-edge" \
  "$PKG/etc/logrotate.d" "$PKG/usr/share/doc/spiffe-edge" "$PKG/DEBIAN"

# The code. packageRoot() finds package.json + binding.gyp, then proto/ and build/ beside them.
cp -a bin package.json package-lock.json binding.gyp proto "$LIB/"
mkdir -p "$LIB/dist"
cp -a dist/src "$LIB/dist/src"
[ -d dist/hardware-sim ] && cp -a dist/hardware-sim "$LIB/dist/hardware-sim"
cp -a build/Release/*.node "$LIB/build/Release/"
# Dependencies as installed here (their addons compiled for this Node and libc), dev ones pruned
# offline from the lock file.
cp -a node_modules "$LIB/node_modules"
(cd "$LIB" && npm prune --omit=dev --offline --no-audit --no-fund --ignore-scripts >/dev/null)
find "$LIB/node_modules" -depth -type d -empty -delete

cat >"$PKG/usr/bin/spiffe-edge" <<'WRAP'
#!/bin/sh
# spiffe-edge from the .deb: the nodejs package's node runs the CLI under /usr/lib/spiffe-edge.
exec /usr/bin/node /usr/lib/spiffe-edge/bin/spiffe-edge "$@"
WRAP
chmod 0755 "$PKG/usr/bin/spiffe-edge"
install -m 0644 packaging/systemd/spiffe-edge-server.service packaging/systemd/spiffe-edge-agent.service \
  "$PKG/lib/systemd/system/"
install -m 0640 packaging/deb/etc/server.conf packaging/deb/etc/agent.conf "$PKG/etc/spiffe-edge/"
install -m 0644 packaging/deb/etc/logrotate "$PKG/etc/logrotate.d/spiffe-edge"
[ -f docs/operations.md ] && install -m 0644 docs/operations.md "$PKG/usr/share/doc/spiffe-edge/"
for s in postinst prerm postrm; do install -m 0755 "packaging/deb/scripts/$s" "$PKG/DEBIAN/$s"; done
printf '%s\n' /etc/spiffe-edge/server.conf /etc/spiffe-edge/agent.conf /etc/logrotate.d/spiffe-edge \
  >"$PKG/DEBIAN/conffiles"

# Depends: node, and the packages that own the shared libraries our addons link (tpm2-tss, libc,
# libstdc++, OpenSSL), found from the addons themselves.
LIBS=$(find "$LIB" -name '*.node' -exec ldd {} \; 2>/dev/null | awk '/=> \//{print $3}' | sort -u)
SHDEPS=$(for l in $LIBS; do dpkg -S "$(readlink -f "$l")" 2>/dev/null || dpkg -S "$l" 2>/dev/null || true; done |
  cut -d: -f1 | sort -u | paste -sd, - | sed 's/,/, /g')
SIZE=$(du -sk "$PKG" | cut -f1)
cat >"$PKG/DEBIAN/control" <<CONTROL
Package: spiffe-edge
Version: $VERSION
Architecture: $ARCH
Maintainer: spiffe-edge maintainers <spiffe-edge@localhost>
Installed-Size: $SIZE
Depends: nodejs (>= 20.19), passwd${SHDEPS:+, $SHDEPS}
Suggests: tpm2-tools
Section: net
Priority: optional
Homepage: https://github.com/spiffe-edge/spiffe-edge
Description: hardware-attested SPIFFE agent and server for edge and IoT fleets
 spiffe-edge issues SPIFFE identities (X509-SVIDs, JWT-SVIDs) to workloads on gateways,
 attesting nodes with join tokens or a TPM 2.0, with SPIRE's configuration and CLI habits.
 This package installs the CLI, systemd units for the server and the agent (not enabled),
 and example configs in /etc/spiffe-edge.
CONTROL

mkdir -p "$OUT"
DEB="$OUT/spiffe-edge_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Z"$COMPRESSION" --build "$PKG" "$DEB" >/dev/null
echo "$DEB"
