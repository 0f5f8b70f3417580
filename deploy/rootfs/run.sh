#!/usr/bin/env bash
# Runs a command in the distroless-equivalent root filesystem (assemble.sh) the way Kubernetes
# runs the image with deploy/kubernetes' security context: as UID/GID 65532, the root
# read-only, only /tmp/patio writable (a fresh tmpfs, as the emptyDir), the pyz copied to
# /app/patio.pyz (root-owned, 0644, read-only, as the Dockerfile COPYs it), the image's environment
# (PATH, LANG, SSL_CERT_FILE) plus -e settings, and a PID namespace of its own in which the
# command is PID 1, as in a container.  The network is the host's, so 127.0.0.1 reaches
# the engine and the caller reaches Patio.  Needs root (mount and PID namespaces, chroot).
#
#   bash deploy/rootfs/run.sh [-e NAME=VALUE]... ROOTFS PYZ [COMMAND...]
#   default COMMAND: the image's entrypoint and command, python3 /app/patio.pyz --port 9091
#
# The exit status is the command's; SIGTERM for the command goes to its PID (the child of
# unshare), as the kubelet sends it to the container's PID 1.
set -euo pipefail
envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
  SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt HOME=/home/nonroot)
while [ "${1:-}" = "-e" ]; do
  envs+=("$2")
  shift 2
done
if [ $# -lt 2 ]; then
  sed -n '2,14p' "$0" >&2
  exit 2
fi
rootfs="$(cd "$1" && pwd)"
pyz="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
shift 2
[ $# -gt 0 ] || set -- python3 /app/patio.pyz --port 9091
[ -d "$rootfs/app" ] && [ -d "$rootfs/tmp/patio" ] || { echo "not an assembled rootfs: $rootfs" >&2; exit 2; }
[ -f "$pyz" ] || { echo "no pyz at $pyz (bash build_pyz.sh)" >&2; exit 2; }

# Inside new mount and PID namespaces (private propagation: nothing leaks to the host):
# bind the rootfs onto itself, copy the pyz in, put a tmpfs at /tmp/patio, mount /proc and a
# minimal /dev, make the root read-only, then chroot as 65532 with only the image's environment.
# shellcheck disable=SC2016
exec unshare --mount --pid --fork --propagation private bash -c '
  set -euo pipefail
  root="$1" pyz="$2" count="$3"
  shift 3
  envs=("${@:1:$count}")
  shift "$count"
  mount --bind "$root" "$root"
  # COPY --from=build .../patio.pyz /app/patio.pyz: a copy owned by root, 0644, read-only.
  mount -t tmpfs -o size=64m,mode=0755,nosuid,nodev app "$root/app"
  install -m 0644 -o 0 -g 0 "$pyz" "$root/app/patio.pyz"
  mount -o remount,ro "$root/app"
  mount -t tmpfs -o size=256m,mode=0755,uid=65532,gid=65532,nosuid,nodev patio-state "$root/tmp/patio"
  mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
  mount -t tmpfs -o size=64k,mode=0755,nosuid dev "$root/dev"
  for node in null zero random urandom; do
    : >"$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
  done
  mount -o remount,bind,ro "$root/dev"
  mount -o remount,bind,ro,nosuid,nodev "$root"
  exec env -i "${envs[@]}" chroot --userspec=65532:65532 --groups=65532 "$root" "$@"
' patio-rootfs "$rootfs" "$pyz" "${#envs[@]}" "${envs[@]}" "$@"
