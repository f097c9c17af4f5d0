#!/usr/bin/env bash
# The seeds' service walk-through on one node: pod-src and pod-dest applied unchanged,
# svc-clusterip (pod-src → ClusterIP:8080 → pod-dest, the NAT the seed follows with
# tcpdump), then svc-nodeport (31080, held open by sandboxd as the seed's netstat shows
# kube-proxy holding it, reached from a "master" on the node's network), with the rules
# sandboxd programmed (`nft list table ip sandboxd`) and the endpoints following the pods.
#
# The node is a network namespace with an underlay address (192.168.102.11, worker-node1
# of the lab) and a default route, as a machine has; the master is a namespace at
# 192.168.102.10 on that network. Run as root after `cargo build --release --workspace`
# (scripts/demo.sh does both). Everything it starts it stops, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${SANDBOXD_BIN_DIR:-target/release}")"
export PATH="$bin:$PATH"
node=/run/sandboxd/nodes/svc-node1
master=/run/sandboxd/nodes/svc-master
socket=/run/sandboxd/service-demo.sock
work=$(mktemp -d /tmp/sandboxd-service-demo.XXXXXX)
export CONTAINER_RUNTIME_ENDPOINT="unix://$socket"

daemon=""
cleanup() {
  set +e
  if [ -S "$socket" ]; then
    for f in svc-nodeport svc-clusterip pod-dest pod-src; do
      sandboxctl delete -f "examples/$f.yaml" --grace-period 1 --ignore-not-found >/dev/null 2>&1
    done
    sandboxctl rmp --all >/dev/null 2>&1
  fi
  if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; fi
  for ns in "$node" "$master"; do umount "$ns" 2>/dev/null; rm -f "$ns"; done
  # sandboxd keeps its netns dir mounted for a next start.
  umount "$work/netns" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
show() { step "$*"; "$@"; }
in_node() { nsenter --net="$node" "$@"; }
json_string() { sed -n "s/.*\"$1\": \"\([^\"]*\)\".*/\1/p" | head -1; }

mkdir -p /run/sandboxd/nodes
for ns in "$node" "$master"; do
  touch "$ns"
  unshare --net="$ns" true
  nsenter --net="$ns" ip link set lo up
done
# The underlay: node eth1 192.168.102.11 ── master eth0 192.168.102.10; a default route.
in_node ip link add eth1 type veth peer eth0 netns "$master"
in_node ip addr add 192.168.102.11/24 dev eth1
in_node ip link set eth1 up
nsenter --net="$master" ip addr add 192.168.102.10/24 dev eth0
nsenter --net="$master" ip link set eth0 up
in_node ip route add default via 192.168.102.1

step "sandboxd --node-name worker-node1 --node-netns $node --state-dir $work/state --cni-conf-dir $work/net.d --socket $socket &"
sandboxd --node-name worker-node1 --node-netns "$node" --netns-dir "$work/netns" \
  --cni-conf-dir "$work/net.d" --state-dir "$work/state" --socket "$socket" 2>"$work/sandboxd.log" &
daemon=$!
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
cat "$work/sandboxd.log"
SANDBOXD_BIN_DIR="$bin" ./examples/build-images.sh --store "$work/state/images" --no-build >/dev/null

show sandboxctl apply -f examples/pod-src.yaml
show sandboxctl apply -f examples/pod-dest.yaml
show sandboxctl get pods -o wide

show cat examples/svc-clusterip.yaml
show sandboxctl apply -f examples/svc-clusterip.yaml
show sandboxctl get svc -o wide
show sandboxctl get endpoints
cluster_ip=$(sandboxctl get svc svc-clusterip -o json | json_string clusterIP)
src=$(sandboxctl ps --pod pod-src -q)

# The seed: curl <service ip>:8080/hostname from the source pod answers pod-dest.
step "sandboxctl exec ${src:0:12} wget -qO- $cluster_ip:8080/hostname   # pod-src → svc-clusterip"
sandboxctl exec "$src" wget -qO- "$cluster_ip:8080/hostname"

# What the node does with it: the service's map element, its chain, its endpoint's DNAT.
step "nsenter --net=$node nft list table ip sandboxd   # the rules sandboxd programmed"
in_node nft list table ip sandboxd

show cat examples/svc-nodeport.yaml
show sandboxctl apply -f examples/svc-nodeport.yaml
show sandboxctl get svc
# The seed: netstat -anp | grep 31080 shows kube-proxy listening.
step "nsenter --net=$node ss -lntp | grep 31080   # netstat -anp | grep 31080"
in_node ss -lntp | grep 31080
step "nsenter --net=$master wget -qO- 192.168.102.11:31080/hostname   # master → node1's NodePort"
nsenter --net="$master" busybox wget -qO- 192.168.102.11:31080/hostname
echo

# No endpoints: refused at once (ICMP port unreachable), as kube-proxy does.
show sandboxctl delete -f examples/pod-dest.yaml --grace-period 1
show sandboxctl get endpoints
step "sandboxctl exec ${src:0:12} wget -qO- $cluster_ip:8080/hostname   # no endpoints"
sandboxctl exec "$src" wget -qO- "$cluster_ip:8080/hostname" 2>&1 || true

show sandboxctl delete -f examples/svc-nodeport.yaml
show sandboxctl delete -f examples/svc-clusterip.yaml
show sandboxctl delete -f examples/pod-src.yaml --grace-period 1
