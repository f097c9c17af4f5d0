#!/usr/bin/env bash
# Provisions one VM of the Vagrant cluster (Vagrantfile), as root, from the repository at
# /vagrant: installs the Debian packages (scripts/install-deps.sh), puts sandboxd's binaries
# in /usr/local/lib/sandboxd (those of target/release when they were built beside the
# Vagrantfile, else built here), imports the demo images, and joins the cluster with
# `sandboxctl join` (the same etcd and sandboxd command lines as `sandboxctl lab up`).
#
#   provision-vm.sh --name k8s-node1 --ip 192.168.102.11 --master-ip 192.168.102.10 \
#                   [--backend vxlan|host-gw] [--control-plane]
set -euo pipefail

repo=${SANDBOXD_REPO:-/vagrant}
lib=/usr/local/lib/sandboxd
# The daemon and what it runs beside it, the CLI, and the two tools that build the demo
# images (hostname-server, oci-pack).
binaries=(sandboxd sandboxctl pause sandboxd-monitor sandboxd-runtime hostname-server oci-pack)
join_args=("$@")

usage() {
  echo "usage: provision-vm.sh --name NAME --ip IP (--master-ip IP | --control-plane) [--backend vxlan|host-gw]" >&2
  exit 2
}
name="" ip=""
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=${2:-}; shift 2 ;;
    --ip) ip=${2:-}; shift 2 ;;
    --master-ip | --backend) shift 2 ;;
    --control-plane) shift ;;
    *) echo "provision-vm.sh: unknown argument $1" >&2; usage ;;
  esac
done
if [ -z "$name" ] || [ -z "$ip" ]; then usage; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "provision-vm.sh: run as root" >&2
  exit 1
fi

"$repo/scripts/install-deps.sh"
export PATH="$HOME/.cargo/bin:$PATH"

# Binaries built on the host are used as they are when they run here (same Debian 12);
# otherwise the workspace is built on the VM, in a target dir of its own.
prebuilt="$repo/target/release"
if [ -x "$prebuilt/sandboxd" ] && "$prebuilt/sandboxd" --version >/dev/null 2>&1; then
  from=$prebuilt
else
  export CARGO_TARGET_DIR=/var/cache/sandboxd-build
  (cd "$repo" && cargo build --release --workspace)
  from=$CARGO_TARGET_DIR/release
fi
install -d "$lib"
for binary in "${binaries[@]}"; do
  install -m 0755 "$from/$binary" "$lib/$binary"
done
# sandboxd finds pause, the monitor and the runtime beside itself; the links only put the
# two commands on PATH.
ln -sf "$lib/sandboxd" /usr/local/bin/sandboxd
ln -sf "$lib/sandboxctl" /usr/local/bin/sandboxctl

# The demo images (busybox, the hostname server), built offline into the node's store.
SANDBOXD_BIN_DIR=$lib bash "$repo/examples/build-images.sh" --store /var/lib/sandboxd/images --no-build

sandboxctl join "${join_args[@]}"
echo "provision-vm.sh: $name ($ip) is up"
