#!/usr/bin/env bash
# Assembles the root filesystem of gcr.io/distroless/python3-debian12 (the base of ./Dockerfile)
# from Debian 12 packages, without Docker: `apt-get download` the packages in packages.txt,
# unpack each with `dpkg-deb -x` (distroless runs no maintainer scripts either), then add the
# files distroless writes itself (common/BUILD.bazel, static/static.bzl, python3/python.bzl):
# /etc/passwd and /etc/group with root, nobody and nonroot (65532), /etc/os-release, /etc/nsswitch.conf,
# /tmp (1777), /home/nonroot, the CA bundle, and python3 -> python3.11.  No shell is added.
#
# Prints the directory of the root filesystem.  The result is cached under
# ${PATIO_ROOTFS_HOME:-~/.cache/patio-rootfs}/KEY (KEY: hash of packages.txt and this script),
# complete only when .patio-rootfs-complete exists: the first run downloads ~30 MB and takes
# about a minute, later runs return at once.  Run it with deploy/rootfs/run.sh.
#
# The Dockerfile's own files: /app (run.sh copies the pyz there, as the Dockerfile installs it, on
# a read-only mount), the incumbents' commands /usr/local/bin/aibrix_runtime and aibrix_download
# linked to it, /tmp/patio (the state directory, the manifests' emptyDir) and /models (Kthena's
# output_dirs), both 65532's.  And what a container runtime adds: the mount points /proc, /dev
# and /etc/hosts (run.sh mounts the kubelet's hosts file there).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
list="$here/packages.txt"
cache="${PATIO_ROOTFS_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/patio-rootfs}"
key="$(cat "$list" "$here/assemble.sh" | sha256sum | cut -c1-16)"
dest="$cache/$key"
log() { printf '[rootfs %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ -f "$dest/.patio-rootfs-complete" ]; then
  echo "$dest/root"
  exit 0
fi
for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "assemble.sh needs $tool (Debian)" >&2; exit 1; }
done

mapfile -t packages < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$list" | grep -v '^$')
mkdir -p "$cache"
# Roots of older package lists or scripts, and builds a killed run left, older than a week.
find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -mtime +7 -exec rm -rf {} + 2>/dev/null || true
work="$(mktemp -d "$cache/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs" "$work/root"

download() {
  (cd "$work/debs" && apt-get download -q -o APT::Sandbox::User=root \
    -o Acquire::Retries=3 "${packages[@]/%/:amd64}" >/dev/null 2>"$work/apt.err")
}
log "downloading ${#packages[@]} Debian 12 packages (apt-get download)"
if ! download; then
  # A fresh machine may have no package lists yet.
  log "apt-get download failed ($(tail -1 "$work/apt.err")); running apt-get update and retrying"
  apt-get update -qq
  download || { cat "$work/apt.err" >&2; exit 1; }
fi

root="$work/root"
: >"$work/versions.txt"
for deb in "$work"/debs/*.deb; do
  dpkg-deb -x "$deb" "$root"
  printf '%s %s\n' "$(dpkg-deb -f "$deb" Package)" "$(dpkg-deb -f "$deb" Version)" >>"$work/versions.txt"
done
grep -q '^python3.11-minimal 3\.11\.' "$work/versions.txt" || { echo "no python3.11-minimal from Debian 12" >&2; exit 1; }

log "adding the files distroless writes itself"
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
EOF
rm -f "$root/etc/os-release" "$root/usr/lib/os-release"
cat >"$root/etc/os-release" <<'EOF'
PRETTY_NAME="Distroless"
NAME="Debian GNU/Linux"
ID="debian"
VERSION_ID="12"
VERSION="Debian GNU/Linux 12 (bookworm)"
HOME_URL="https://github.com/GoogleContainerTools/distroless"
SUPPORT_URL="https://github.com/GoogleContainerTools/distroless/blob/master/README.md"
BUG_REPORT_URL="https://github.com/GoogleContainerTools/distroless/issues/new"
EOF
cat >"$root/etc/nsswitch.conf" <<'EOF'
passwd:         compat
group:          compat
shadow:         compat
gshadow:        files

hosts:          files dns
networks:       files

protocols:      db files
services:       db files
ethers:         db files
rpc:            db files

netgroup:       nis
EOF
install -d -m 1777 "$root/tmp"
install -d -m 0700 "$root/root"
install -d -m 0755 "$root/home"
install -d -m 0700 -o 65532 -g 65532 "$root/home/nonroot"
# rules_distroless' cacerts: the certificates of the ca-certificates package in one bundle.
install -d "$root/etc/ssl/certs"
find "$root/usr/share/ca-certificates" -name '*.crt' -print0 | sort -z | xargs -0 cat >"$root/etc/ssl/certs/ca-certificates.crt"
ln -sf python3.11 "$root/usr/bin/python3"
ln -sf python3.11 "$root/usr/bin/python"

# The Dockerfile's files and the runtime's mount points (see the header).
install -d -m 0755 "$root/proc" "$root/dev" "$root/app" "$root/usr/local/bin"
install -d -m 0755 -o 65532 -g 65532 "$root/tmp/patio" "$root/models"
ln -s /app/patio.pyz "$root/usr/local/bin/aibrix_runtime"
ln -s /app/patio.pyz "$root/usr/local/bin/aibrix_download"
rm -f "$root/etc/hosts"
: >"$root/etc/hosts"

for forbidden in bin/sh bin/bash usr/bin/sh usr/bin/bash bin/busybox; do
  if [ -e "$root/$forbidden" ] || [ -L "$root/$forbidden" ]; then
    echo "the rootfs has a shell ($forbidden): distroless has none" >&2
    exit 1
  fi
done

mv "$work/versions.txt" "$work/root.versions"
rm -rf "$work/debs" "$work/apt.err"
if ! mv -T "$work" "$dest" 2>/dev/null; then
  [ -f "$dest/.patio-rootfs-complete" ] || { echo "cannot install $dest" >&2; exit 1; }  # a concurrent run won
else
  trap - EXIT
  date -u +%Y-%m-%dT%H:%M:%SZ >"$dest/.patio-rootfs-complete"  # written last: the cache is whole
fi
log "rootfs ready: $dest/root ($(du -sh "$dest/root" | cut -f1), $(wc -l <"$dest/root.versions") packages)"
echo "$dest/root"
