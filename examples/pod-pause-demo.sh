#!/usr/bin/env bash
# The seeds' pod-pause, with the parts built so far: a node (a network namespace), sandboxd
# serving CRI on it, the demo images in its store, and the pod's sandbox run, inspected
# and removed with sandboxctl, as crictl would. Containers join it in a later step of the
# project; until then the pod is its pause and its network.
#
# Run as root after `cargo build --release --workspace` (scripts/demo.sh does both).
# Everything it starts it stops, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${SANDBOXD_BIN_DIR:-target/release}")"
export PATH="$bin:$PATH"
node=/run/sandboxd/nodes/node1
socket=/run/sandboxd/demo.sock
export CONTAINER_RUNTIME_ENDPOINT="unix://$socket"

daemon=""
cleanup() {
  set +e
  if [ -S "$socket" ]; then sandboxctl rmp --all >/dev/null 2>&1; fi
  if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; fi
  umount "$node" 2>/dev/null; rm -f "$node"
  # sandboxd keeps its netns dir mounted for the next start, as iproute2 keeps /run/netns;
  # the demo leaves the machine as it found it.
  umount /run/sandboxd/netns 2>/dev/null
  umount /run/sandboxd/nodes 2>/dev/null
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
show() { step "$*"; "$@"; }

mkdir -p /run/sandboxd/nodes
touch "$node"
unshare --net="$node" true
nsenter --net="$node" ip link set lo up

step "sandboxd --node-netns $node --socket $socket &"
sandboxd --node-netns "$node" --socket "$socket" 2>/run/sandboxd/demo.log &
daemon=$!
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
cat /run/sandboxd/demo.log

step "examples/build-images.sh   # busybox and kubetm/* from source, offline"
SANDBOXD_BIN_DIR="$bin" ./examples/build-images.sh --no-build
show sandboxctl images
show sandboxctl version

step "sandboxctl runp examples/pods/pod-pause.json"
id=$(sandboxctl runp examples/pods/pod-pause.json)
echo "$id"
show sandboxctl pods
inspect=$(sandboxctl inspectp "$id")
step "sandboxctl inspectp ${id:0:12}   # (excerpt)"
echo "$inspect" | grep -E '"(state|ip|netnsPath)"|"pid": [0-9]'
pid=$(echo "$inspect" | sed -n 's/.*"pid": \([0-9][0-9]*\).*/\1/p' | head -1)
netns=$(echo "$inspect" | sed -n 's/.*"netnsPath": "\(.*\)".*/\1/p')
ip=$(echo "$inspect" | sed -n 's/.*"ip": "\(.*\)".*/\1/p' | head -1)
show lsns -p "$pid"
show nsenter --net="$netns" ip -br addr
show nsenter --net="$node" ip -br link show master cni0
show nsenter --net="$node" ping -c 1 -W 1 "$ip"
show sandboxctl stopp "$id"
show sandboxctl rmp "$id"
show sandboxctl pods
