#!/bin/sh
# Runs packaging/systemd/spiffe-edge-server.service under a real systemd on a machine whose PID 1
# is not systemd (a container, CI): a systemd user manager, in a private mount namespace where
# /run/systemd/system exists (without it `systemd --user` refuses: "the system has not been booted
# with systemd"). The unit keeps Type=notify, NotifyAccess=main, ExecReload and the hardening the
# manager can set up; User=/Group= and the *Directory= lines go (a user manager), and so do the
# sandboxing lines a container refuses (226/NAMESPACE). Shows that `systemctl start` returns only
# after READY=1, the STATUS= text, reload (SIGHUP) and a clean stop.
#   sudo unshare --mount --propagation private packaging/systemd/try-under-systemd.sh
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${TRY_DIR:-/var/tmp/spiffe-edge-try-systemd}
# What this container refuses (226/NAMESPACE: systemd cannot set up those mounts here); on a
# full host TRY_DROP="" keeps the unit whole.
drop=${TRY_DROP-"PrivateTmp ProtectHome ProtectKernelTunables ProtectKernelLogs"}
rm -rf "$work" && mkdir -p "$work/config/systemd/user" "$work/data" "$work/xdg"
chmod 700 "$work/data" "$work/xdg"
cat >"$work/server.conf" <<EOF
[server]
trust_domain = "example.org"
bind_address = "127.0.0.1"
bind_port = 0
data_dir = "$work/data"
admin_socket = "$work/data/admin.sock"
[plugins.KeyManager.disk]
[plugins.NodeAttestor.join_token]
EOF
unit="$work/config/systemd/user/spiffe-edge-server.service"
sed -e "s#^ExecStart=.*#ExecStart=$repo/bin/spiffe-edge server run --config $work/server.conf#" \
  -e '/^User=/d;/^Group=/d;/^StateDirectory/d;/^LogsDirectory/d;/^\[Install\]/,$d' \
  -e "s#^ReadWritePaths=.*#ReadWritePaths=$work/data#" \
  "$repo/packaging/systemd/spiffe-edge-server.service" >"$unit"
echo "StandardError=file:$work/server.err" >>"$unit"
for key in $drop; do sed -i "/^$key=/d" "$unit"; done
mount -t tmpfs tmpfs /run/systemd 2>/dev/null || { mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd; }
mkdir -p /run/systemd/system
export XDG_RUNTIME_DIR="$work/xdg" XDG_CONFIG_HOME="$work/config"
/lib/systemd/systemd --user >"$work/manager.log" 2>&1 &
mgr=$!
trap 'kill $mgr 2>/dev/null; wait $mgr 2>/dev/null || true' EXIT
for _ in 1 2 3 4 5 6 7 8 9 10; do
  systemctl --user is-system-running >/dev/null 2>&1 && break
  sleep 1
done
start=$(date +%s%N)
systemctl --user start spiffe-edge-server.service || { systemctl --user status --no-pager spiffe-edge-server.service; exit 1; }
echo "systemctl start returned after $((($(date +%s%N) - start) / 1000000)) ms (it waits for READY=1)"
systemctl --user show -p Type,NotifyAccess,ActiveState,SubState,StatusText spiffe-edge-server.service
"$repo/bin/spiffe-edge" server healthcheck -socketPath "$work/data/admin.sock"
systemctl --user reload spiffe-edge-server.service
systemctl --user show -p ActiveState,SubState spiffe-edge-server.service
systemctl --user stop spiffe-edge-server.service
systemctl --user show -p ActiveState,Result,ExecMainStatus spiffe-edge-server.service
