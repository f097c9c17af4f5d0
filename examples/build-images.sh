#!/usr/bin/env bash
# Builds the seeds' demo images from source, offline, and imports them into the node's
# image store (where a running sandboxd serves them at once):
#
#   busybox        busybox-static, a shell and its applets           (sh)
#   kubetm/p8000   busybox + hostname-server on port 8000
#   kubetm/p8080   busybox + hostname-server on port 8080
#   kubetm/app     busybox + hostname-server on port 8080
#   kubetm/init    busybox + hostname-server on port 8080 (the seeds' source pod)
#
# hostname-server answers GET /hostname with the pod's hostname. All images share the
# busybox layer, so the store keeps it once.
#
#   examples/build-images.sh [--store DIR] [--no-build] [--archives DIR]
#
# Run as root. --store defaults to /var/lib/sandboxd/images; --no-build uses the binaries
# already built, in $SANDBOXD_BIN_DIR (default target/release); --archives also writes each
# image as an OCI archive (DIR/img-busybox.tar, …) that other runtimes import.
set -euo pipefail
cd "$(dirname "$0")/.."
store=/var/lib/sandboxd/images
build=1
archives=
while [ $# -gt 0 ]; do
  case "$1" in
    --store) store="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --archives) archives="$2"; shift 2 ;;
    *) echo "build-images.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

bin="${SANDBOXD_BIN_DIR:-target/release}"
if [ "$build" = 1 ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  cargo build --release -p sandboxd -p sandboxd-examples
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The base layer: busybox with a link per applet, and the dirs a container mounts over.
base="$work/busybox"
examples/busybox-rootfs.sh "$base"

app="$work/app"
mkdir -p "$app/app"
cp "$bin/hostname-server" "$app/app/hostname-server"

# Each image is labelled with its name, so images with the same content stay distinct
# (removing one never removes another).
pack() {
  local name="$1"; shift
  "$bin/oci-pack" --gzip --env PATH=/bin:/app --label "org.opencontainers.image.title=$name" --name "$name" "$@"
}
pack busybox --out "$work/img-busybox" --layer "$base" --cmd sh
for spec in kubetm/p8000:8000 kubetm/p8080:8080 kubetm/app:8080 kubetm/init:8080; do
  name="${spec%%:*}"; port="${spec##*:}"
  pack "$name" --out "$work/img-${name//\//-}" --layer "$base" --layer "$app" \
    --cmd /app/hostname-server --cmd --port --cmd "$port" --port "$port/tcp"
done

for layout in "$work"/img-*; do
  "$bin/sandboxctl" image import "$layout" --store "$store"
  # OCI archives too, for other runtimes (`ctr images import`).
  if [ -n "$archives" ]; then
    mkdir -p "$archives"
    tar -C "$layout" -cf "$archives/$(basename "$layout").tar" .
  fi
done
