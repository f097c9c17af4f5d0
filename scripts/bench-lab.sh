#!/usr/bin/env bash
# The lab benchmark of BENCHMARKS.md, as root on Debian 12: `sandboxctl lab up` and
# `lab down` wall time for 3 and 10 nodes (median of ROUNDS), the time of an apply that
# runs a pod on a worker, the time from applying a Service through k8s-master until
# k8s-node2 forwards its ClusterIP, and pod-to-pod TCP throughput (iperf3, 10 s) across
# nodes over VXLAN and over host-gw against two pods of one node, in the same run.
# The lab is rooted in a temp dir of its own, so a lab the user has up is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh >/dev/null
apt-get install -y --no-install-recommends iperf3 bc >/dev/null
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
