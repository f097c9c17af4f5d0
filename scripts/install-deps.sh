#!/usr/bin/env bash
# Installs what sandboxd needs on Debian 12, as root: a C linker for Rust, iproute2 and
# util-linux (namespaces), Debian's upstream CNI plugins (/usr/lib/cni), iptables (portmap),
# nftables (the Services data plane), python3-venv (the tests' current grpcio from PyPI),
# etcd (the cluster store; etcdctl to look into it), protoc and protobuf's well-known
# types (the CRI and etcd bindings are generated at build time), runc (the other OCI
# runtime), busybox-static (the demo images), tcpdump (reads `sandboxctl trace -w` files),
# graphviz (lays out `sandboxctl lab graph`), libseccomp (the embedded runtime loads
# containers' seccomp filters with it), and Rust itself through rustup if cargo is
# missing. Safe to run again.
#
#   install-deps.sh [--checks]
#
# --checks adds what only the tests use (a machine that runs the cluster does not need
# them): shellcheck, vagrant and its libvirt plugin (the Vagrant cluster's checks),
# chromium (renders `lab graph`'s SVG headless), and containerd (a runtime we did not
# write, run on sandboxd-cni's plugins).
set -euo pipefail

packages=(
  build-essential pkg-config ca-certificates curl file
  iproute2 util-linux procps iputils-ping ethtool
  iptables nftables containernetworking-plugins
  protobuf-compiler busybox-static
  python3 python3-grpcio python3-protobuf python3-venv runc
  etcd-server etcd-client libprotobuf-dev tcpdump graphviz libseccomp-dev
)

case "${1:-}" in
  --checks) packages+=(shellcheck vagrant vagrant-libvirt chromium containerd) ;;
  "") ;;
  *) echo "install-deps.sh: unknown argument $1 (usage: install-deps.sh [--checks])" >&2; exit 2 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: run as root (it installs Debian packages)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${packages[@]}"

# Debian's dynamically linked busybox, whose shell looks commands up in PATH as the e2e
# busybox image's does (busybox-static's runs its own applets first); the CRI validation
# suite's image is built with it (scripts/critest-images.sh). The two packages conflict,
# so it is unpacked beside, not installed.
shell_dir=/usr/local/lib/sandboxd/busybox-dynamic
if [ ! -x "$shell_dir/busybox" ]; then
  download=$(mktemp -d)
  chmod 755 "$download"  # apt downloads as its own user
  (cd "$download" && apt-get download busybox >/dev/null)
  dpkg-deb -x "$download"/busybox_*.deb "$download/root"
  mkdir -p "$shell_dir"
  install -m 755 "$download/root/bin/busybox" "$shell_dir/busybox"
  rm -rf "$download"
fi

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile default
fi
