#!/usr/bin/env bash
# Runs a command in the distroless-equivalent root filesystem (assemble.sh) the way a container
# runtime runs the image: as UID/GID 65532 (the image's USER), the root an overlay of the
# assembled root and a fresh writable layer, read-only (Patio's manifests' readOnlyRootFilesystem,
# with a tmpfs owned by 65532 at /tmp/patio, their emptyDir) unless --writable-root (a manifest
# without it), a tmpfs at every -v PATH (an emptyDir: 0777 as the kubelet makes it; -v PATH=DIR binds
# the host's DIR there instead, an emptyDir shared by a pod's containers), the pyz copied to /app/patio.pyz
# (root's, 0755, read-only, as the Dockerfile installs it), an /etc/hosts as the kubelet writes
# it (so localhost resolves), the image's environment (distroless' PATH, LANG, SSL_CERT_FILE,
# HOME and the Dockerfile's ENV lines) plus -e settings, and a PID namespace of its own in which
# the command is PID 1.  The network is the caller's (run it in a network namespace for a pod of
# its own).  Needs root (mount and PID namespaces, chroot).
#
#   bash deploy/rootfs/run.sh [-e NAME=VALUE]... [-v PATH[=DIR]]... [--writable-root] ROOTFS PYZ [COMMAND...]
#   default COMMAND: the image's entrypoint and command, python3 /app/patio.pyz --port 9091
#
# The exit status is the command's.  SIGTERM, SIGINT, SIGHUP and SIGQUIT sent to this script are
# forwarded to the command (the namespace's PID 1), as the kubelet signals a container's PID 1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
  SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt HOME=/home/nonroot)
# The Dockerfile's ENV NAME=VALUE lines are the image's environment too.
while read -r _ pair; do
  envs+=("$pair")
done < <(grep -E '^ENV [A-Za-z_][A-Za-z0-9_]*=[^ ]*$' "$here/../../Dockerfile")
volumes=()
writable=0
while [ $# -gt 0 ]; do
  case "$1" in
    -e) envs+=("$2"); shift 2 ;;
    -v) volumes+=("$2"); shift 2 ;;
    --writable-root) writable=1; shift ;;
    *) break ;;
  esac
done
if [ $# -lt 2 ]; then
  sed -n '2,18p' "$0" >&2
  exit 2
fi
rootfs="$(cd "$1" && pwd)"
pyz="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
shift 2
[ $# -gt 0 ] || set -- python3 /app/patio.pyz --port 9091
[ -d "$rootfs/app" ] && [ -d "$rootfs/tmp/patio" ] && [ -f "$rootfs/etc/hosts" ] ||
  { echo "not an assembled rootfs: $rootfs (bash deploy/rootfs/assemble.sh)" >&2; exit 2; }
[ -f "$pyz" ] || { echo "no pyz at $pyz (bash build_pyz.sh)" >&2; exit 2; }
for volume in "${volumes[@]}"; do
  case "$volume" in /*) ;; *) echo "-v needs an absolute path: $volume" >&2; exit 2 ;; esac
  case "$volume" in *=*) [ -d "${volume#*=}" ] || { echo "-v: no directory ${volume#*=}" >&2; exit 2; } ;; esac
done
# The kubelet's /etc/hosts for a pod (pkg/kubelet/kubelet_pods.go managedHostsFileContent).
hosts="$(printf '# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n127.0.0.1\t%s\n' "$(hostname)")"
layer="$(mktemp -d "${TMPDIR:-/tmp}/patio-rootfs-layer.XXXXXX")"

# Inside new mount and PID namespaces (private propagation: nothing leaks to the host): a tmpfs
# holding the writable layer, the overlay root on it, the pyz copied in, the volumes, /proc, a
# minimal /dev and /etc/hosts, the root made read-only unless asked otherwise, then chroot as
# 65532 with only the image's environment.
# shellcheck disable=SC2016
unshare --mount --pid --fork --propagation private bash -c '
  set -euo pipefail
  lower="$1" layer="$2" pyz="$3" writable="$4" hosts="$5" count="$6" nvol="$7"
  shift 7
  envs=("${@:1:$count}")
  shift "$count"
  volumes=("${@:1:$nvol}")
  shift "$nvol"
  mount -t tmpfs -o size=512m,mode=0700 layer "$layer"
  mkdir "$layer/upper" "$layer/work" "$layer/root"
  mount -t overlay overlay -o "lowerdir=$lower,upperdir=$layer/upper,workdir=$layer/work" "$layer/root"
  root="$layer/root"
  # COPY --from=build /out/app/patio.pyz: root-owned, 0755, on a read-only mount of its own.
  mount -t tmpfs -o size=64m,mode=0755,nosuid,nodev app "$root/app"
  install -m 0755 -o 0 -g 0 "$pyz" "$root/app/patio.pyz"
  mount -o remount,ro "$root/app"
  if [ "$writable" != 1 ]; then
    mount -t tmpfs -o size=256m,mode=0755,uid=65532,gid=65532,nosuid,nodev patio-state "$root/tmp/patio"
  fi
  for volume in "${volumes[@]}"; do
    path="${volume%%=*}"
    mkdir -p "$root$path"
    if [ "$path" = "$volume" ]; then
      mount -t tmpfs -o size=1g,mode=0777,nosuid,nodev emptydir "$root$path"
    else
      mount --bind "${volume#*=}" "$root$path"
    fi
  done
  printf "%s\n" "$hosts" >"$layer/hosts"
  mount --bind -o ro "$layer/hosts" "$root/etc/hosts"
  mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
  mount -t tmpfs -o size=64k,mode=0755,nosuid dev "$root/dev"
  for node in null zero random urandom; do
    : >"$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
  done
  mount -o remount,bind,ro "$root/dev"
  if [ "$writable" = 1 ]; then
    mount -o remount,nosuid,nodev "$root"
  else
    mount -o remount,ro,nosuid,nodev "$root"
  fi
  exec env -i "${envs[@]}" chroot --userspec=65532:65532 --groups=65532 "$root" "$@"
' patio-rootfs "$rootfs" "$layer" "$pyz" "$writable" "$hosts" "${#envs[@]}" "${#volumes[@]}" \
  "${envs[@]}" "${volumes[@]}" "$@" &
ns=$!

# The command is unshare's only child (PID 1 of the new PID namespace).
forward() {
  local pid1
  pid1="$(cut -d' ' -f1 "/proc/$ns/task/$ns/children" 2>/dev/null || true)"
  [ -n "$pid1" ] && kill -s "$1" "$pid1" 2>/dev/null || true
}
for sig in TERM INT HUP QUIT; do
  # shellcheck disable=SC2064
  trap "forward $sig" "$sig"
done
status=0
while :; do
  if wait "$ns"; then status=0; else status=$?; fi
  kill -0 "$ns" 2>/dev/null || break # wait was cut short by a forwarded signal: wait again
done
rmdir "$layer" 2>/dev/null || true
exit "$status"
