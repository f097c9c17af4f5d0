#!/usr/bin/env bash
# The seeds' pod-pause walk-through on one node: a node (a network namespace), sandboxd
# serving CRI on it, the demo images built from source into its store, and the seed's
# Pod manifest applied unchanged. Then what the seed looks at with docker and lsns: the
# pause process owning the pod's net and ipc namespaces, both containers joined to it
# (network mode container:<pause-id>) and answering each other on localhost, the pod's
# eth0, and a third container that cannot bind the port the second one holds.
#
# Run as root after `cargo build --release --workspace` (scripts/demo.sh does both).
# Everything it starts it stops, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${SANDBOXD_BIN_DIR:-target/release}")"
export PATH="$bin:$PATH"
node=/run/sandboxd/nodes/node1
socket=/run/sandboxd/demo.sock
work=$(mktemp -d /tmp/sandboxd-demo.XXXXXX)
export CONTAINER_RUNTIME_ENDPOINT="unix://$socket"
# Pods are pinned in /run/netns, so `ip netns` knows them by id, as it knows containerd's.
netns_dir=/run/netns
netns_was_mounted=no
if mountpoint -q "$netns_dir" 2>/dev/null; then netns_was_mounted=yes; fi

daemon=""
cleanup() {
  set +e
  if [ -S "$socket" ]; then
    sandboxctl delete -f examples/pod-pause.yaml --grace-period 1 --ignore-not-found >/dev/null 2>&1
    sandboxctl rmp --all >/dev/null 2>&1
  fi
  if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; fi
  umount "$node" 2>/dev/null; rm -f "$node"
  # sandboxd keeps its netns dir mounted for the next start, as iproute2 keeps /run/netns;
  # the demo leaves the machine as it found it.
  if [ "$netns_was_mounted" = no ] && [ -z "$(ls -A "$netns_dir" 2>/dev/null)" ]; then
    umount "$netns_dir" 2>/dev/null
  fi
  umount /run/sandboxd/nodes 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
show() { step "$*"; "$@"; }
# lsns reads every process's namespaces; on a busy machine a process that exits during
# the scan can make it come back empty (seen in CI): it is asked again.
show_lsns() {
  step "lsns -p $1"
  local out status
  for _ in 1 2 3; do
    out=$(lsns -p "$1" 2>&1) && status=0 || status=$?
    if [ "$status" -eq 0 ] && [ -n "$out" ]; then echo "$out"; return 0; fi
    sleep 0.2
  done
  echo "$out" >&2
  return 1
}
# The first "key": "text" or "key": 123 of a JSON document.
json_string() { sed -n "s/.*\"$1\": \"\([^\"]*\)\".*/\1/p" | head -1; }
json_number() { sed -n "s/.*\"$1\": \([0-9][0-9]*\).*/\1/p" | head -1; }

mkdir -p /run/sandboxd/nodes
touch "$node"
unshare --net="$node" true
nsenter --net="$node" ip link set lo up

step "sandboxd --node-name node1 --node-netns $node --netns-dir $netns_dir --state-dir $work/state --cni-conf-dir $work/net.d --socket $socket &"
sandboxd --node-name node1 --node-netns "$node" --netns-dir "$netns_dir" \
  --cni-conf-dir "$work/net.d" --state-dir "$work/state" --socket "$socket" 2>/run/sandboxd/demo.log &
daemon=$!
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
cat /run/sandboxd/demo.log

step "examples/build-images.sh --store $work/state/images   # busybox and kubetm/* from source, offline"
SANDBOXD_BIN_DIR="$bin" ./examples/build-images.sh --store "$work/state/images" --no-build
show sandboxctl images
show sandboxctl version

show cat examples/pod-pause.yaml
show sandboxctl apply -f examples/pod-pause.yaml
show sandboxctl get pods -o wide

# The seed: docker ps | grep pod-pause shows the pause container and the two containers.
show sandboxctl pods --name pod-pause
show sandboxctl ps --pod pod-pause
pod=$(sandboxctl pods --name pod-pause -q)
c1=$(sandboxctl ps --pod pod-pause --name container1 -q)
c2=$(sandboxctl ps --pod pod-pause --name container2 -q)

step "sandboxctl inspect ${c1:0:12} | grep networkMode   # docker inspect: NetworkMode"
sandboxctl inspect "$c1" | grep networkMode

inspectp=$(sandboxctl inspectp "$pod")
pause_pid=$(echo "$inspectp" | json_number pid)
netns=$(echo "$inspectp" | json_string netnsPath)
step "sandboxctl inspectp ${pod:0:12} | grep -E 'netnsPath|\"ip\"|\"pid\"'"
echo "$inspectp" | grep -E '"netnsPath"|"ip": "|"pid": [0-9]'

# lsns: the pause owns net and ipc; each container has its own mnt, uts and pid.
show_lsns "$pause_pid"
for c in "$c1" "$c2"; do
  pid=$(sandboxctl inspect "$c" | json_number pid)
  show_lsns "$pid"
done

show ip netns exec "$(basename "$netns")" ip -br addr show eth0

step "sandboxctl exec ${c1:0:12} wget -qO- localhost:8080/hostname   # container1 -> container2"
sandboxctl exec "$c1" wget -qO- localhost:8080/hostname
step "sandboxctl exec ${c2:0:12} wget -qO- localhost:8000/hostname   # container2 -> container1"
sandboxctl exec "$c2" wget -qO- localhost:8000/hostname

# A third container on 8080 in the same pod: the port is container2's.
cat > "$work/container3.yaml" <<'YAML'
metadata: { name: container3 }
image: { image: kubetm/p8080 }
YAML
show cat "$work/container3.yaml"
step "sandboxctl create pod-pause $work/container3.yaml && sandboxctl start …"
c3=$(sandboxctl create pod-pause "$work/container3.yaml")
sandboxctl start "$c3" >/dev/null
for _ in $(seq 50); do
  sandboxctl ps -a --id "$c3" | grep -q Exited && break
  sleep 0.1
done
show sandboxctl ps -a --pod pod-pause
step "sandboxctl logs ${c3:0:12}"
sandboxctl logs "$c3" 2>&1
step "sandboxctl inspect ${c3:0:12} | grep -E 'exit_code|reason'"
sandboxctl inspect "$c3" | grep -E '"exit_code"|"reason"'

show sandboxctl delete -f examples/pod-pause.yaml --grace-period 5
show sandboxctl get pods
