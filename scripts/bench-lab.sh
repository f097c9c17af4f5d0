#!/usr/bin/env bash
# The lab benchmark of BENCHMARKS.md, as root on Debian 12: `sandboxctl lab up` and
# `lab down` wall time for 3 and 10 nodes (median of ROUNDS), the time of an apply that
# runs a pod on a worker, the time from applying a Service through k8s-master until
# k8s-node2 forwards its ClusterIP, and pod-to-pod TCP throughput (iperf3, 10 s) across
# nodes over VXLAN and over host-gw against two pods of one node, in the same run; then
# the main job's `lab demo` wall time, and `sandboxctl trace` against the seeds' way of
# following a request (tcpdump started on the same five interfaces, the request, tcpdump
# stopped).
# The lab is rooted in a temp dir of its own, so a lab the user has up is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh >/dev/null
apt-get install -y --no-install-recommends iperf3 bc tcpdump curl >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace
ROUNDS="${ROUNDS:-5}"
S=./target/release/sandboxctl
work=$(mktemp -d)
export SANDBOXD_LAB_DIR="$work/lab"
trap '$S lab down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
examples/build-images.sh --store "$work/images" --no-build >/dev/null

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {m=int((NR+1)/2); printf "%.3f", a[m]}'; }

for nodes in 3 10; do
  ups=(); downs=()
  for _ in $(seq "$ROUNDS"); do
    t0=$(now); $S lab up --nodes "$nodes" --images "$work/images" >/dev/null; t1=$(now)
    $S lab down >/dev/null; t2=$(now)
    ups+=("$(echo "$t1 - $t0" | bc)"); downs+=("$(echo "$t2 - $t1" | bc)")
  done
  echo "lab up   --nodes $nodes: median $(printf '%s\n' "${ups[@]}" | median) s over $ROUNDS (${ups[*]})"
  echo "lab down --nodes $nodes: median $(printf '%s\n' "${downs[@]}" | median) s over $ROUNDS (${downs[*]})"
done

peer='{"apiVersion":"v1","kind":"Pod","metadata":{"name":"pod-peer"},"spec":{"containers":[{"name":"c","image":"busybox","command":["sleep","3600"]}]}}'
pod_netns() { # NODE POD
  local id
  id=$($S --node "$1" pods --name "$2" -q --no-trunc | head -1)
  echo "$SANDBOXD_LAB_DIR/$1/pods/$id"
}
pod_ip() { # NODE POD
  $S --node "$1" get pods -o wide | awk -v p="$2" '$1 == p {print $6}'
}
throughput() { # CLIENT-NETNS SERVER-IP → Gbit/s
  nsenter --net="$1" iperf3 -c "$2" -t 10 -J |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
}

for backend in vxlan host-gw; do
  $S lab up --backend "$backend" --images "$work/images" >/dev/null
  t0=$(now); $S apply -f examples/pod-dest.yaml >/dev/null; t1=$(now)
  echo "$backend: apply pod-dest through k8s-master until Running on k8s-node1: $(echo "($t1 - $t0) * 1000" | bc | cut -d. -f1) ms"
  $S --node k8s-node2 apply -f examples/pod-src.yaml >/dev/null
  t0=$(now); $S apply -f examples/svc-clusterip.yaml >/dev/null
  until nsenter --net="$SANDBOXD_LAB_DIR/k8s-node2/node.netns" nft list map ip sandboxd service-ips 2>/dev/null | grep -q 'tcp . 8080'; do sleep 0.002; done
  t1=$(now)
  echo "$backend: apply svc-clusterip through k8s-master until k8s-node2 forwards it: $(echo "($t1 - $t0) * 1000" | bc | cut -d. -f1) ms"
  echo "$peer" | $S --node k8s-node1 apply -f - >/dev/null
  dest=$(pod_netns k8s-node1 pod-dest); dest_ip=$(pod_ip k8s-node1 pod-dest)
  nsenter --net="$dest" iperf3 -s -D -1 >/dev/null
  sleep 0.3
  cross=$(throughput "$(pod_netns k8s-node2 pod-src)" "$dest_ip")
  nsenter --net="$dest" iperf3 -s -D -1 >/dev/null
  sleep 0.3
  same=$(throughput "$(pod_netns k8s-node1 pod-peer)" "$dest_ip")
  echo "$backend: pod-to-pod across nodes $cross Gbit/s; same node $same Gbit/s; ratio $(echo "scale=2; $cross * 100 / $same" | bc) %"
  $S lab down >/dev/null
done

$S lab up --images "$work/images" >/dev/null
demos=()
for _ in $(seq 3); do
  t0=$(now); $S lab demo --manifests examples >/dev/null; t1=$(now)
  demos+=("$(echo "$t1 - $t0" | bc)")
done
echo "lab demo (12 steps, 3 nodes, vxlan): median $(printf '%s\n' "${demos[@]}" | median) s over 3 (${demos[*]})"

for f in pod-dest pod-src svc-clusterip; do $S apply -f "examples/$f.yaml" >/dev/null; done
cluster_ip=$($S get svc | awk '$1 == "svc-clusterip" {print $3}')
src=$(pod_netns k8s-node2 pod-src)
veth_of() { # NODE POD: the pod's host-side veth, from its eth0's peer index
  local peer
  peer=$(nsenter --net="$(pod_netns "$1" "$2")" cat /sys/class/net/eth0/iflink 2>/dev/null ||
    nsenter --net="$(pod_netns "$1" "$2")" ip -o link show eth0 | sed -n 's/.*@if\([0-9]*\).*/\1/p')
  nsenter --net="$SANDBOXD_LAB_DIR/$1/node.netns" ip -o link | awk -F': ' -v i="$peer" '$1 == i {split($2, n, "@"); print n[1]}'
}
n1="$SANDBOXD_LAB_DIR/k8s-node1/node.netns"; n2="$SANDBOXD_LAB_DIR/k8s-node2/node.netns"
hops=("$src eth0" "$n2 $(veth_of k8s-node2 pod-src)" "$n2 eth1" "$n1 eth1" "$n1 $(veth_of k8s-node1 pod-dest)")
traces=(); dumps=()
for round in $(seq 10); do
  t0=$(now); $S trace pod-src svc-clusterip:8080 >/dev/null; t1=$(now)
  traces+=("$(echo "($t1 - $t0) * 1000" | bc)")
  t0=$(now); pids=(); i=0
  for hop in "${hops[@]}"; do
    read -r ns dev <<<"$hop"; i=$((i + 1))
    nsenter --net="$ns" tcpdump -n -U -i "$dev" -w "$work/hop$round-$i.pcap" 2>"$work/hop$round-$i.err" &
    pids+=($!)
  done
  for i in $(seq ${#hops[@]}); do
    until grep -q "listening on" "$work/hop$round-$i.err" 2>/dev/null; do sleep 0.002; done
  done
  nsenter --net="$src" curl -s -o /dev/null "http://$cluster_ip:8080/"
  sleep 0.05
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
  t1=$(now)
  dumps+=("$(echo "($t1 - $t0) * 1000" | bc)")
done
echo "sandboxctl trace pod-src svc-clusterip:8080 (5 interfaces, conntrack of 3 nodes): median $(printf '%s\n' "${traces[@]}" | median) ms over 10"
echo "tcpdump on the same 5 interfaces + curl + stop (no summary): median $(printf '%s\n' "${dumps[@]}" | median) ms over 10"
$S lab down >/dev/null
