#!/usr/bin/env bash
# The CRI hot paths, for sandboxd and, in the same run with the same CNI chain, the same
# images and the same CRI calls, for Debian's containerd (1.6) with its CRI plugin:
# RunPodSandbox and CreateContainer+StartContainer latency (sequential and 10 in parallel),
# the container path with sandboxd's embedded runtime and with runc on the same bundles,
# the pod path (RunPodSandbox, and StopPodSandbox+RemovePodSandbox) with sandboxd's own
# CNI plugins in-process (--cni-plugins own) and as processes, and containerd's pod path
# with Debian's plugins and with sandboxd-cni's,
# ExecSync and the streamed exec round trip (`crictl exec`, cri-tools v1.26.1 from
# $CRICTL or ../shared/tools), and with 50 pods running (one container each) memory and
# ListContainerStats / ListPodSandboxStats, as the kubelet's stats provider calls them. Each
# runtime runs inside a node network namespace of its own, so neither touches the
# machine's network (cri-bench runs there too: the streaming servers listen on its
# loopback). Run as root on Debian 12. Arguments go to every cri-bench run (default:
# --pods 100 --containers 100 --parallel 10 --execs 100).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends containerd runc >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace
bin=target/release
if [ $# -eq 0 ]; then set -- --pods 100 --containers 100 --parallel 10 --execs 100; fi
crictl="${CRICTL:-$(pwd)/../shared/tools/crictl}"
[ -x "$crictl" ] || { echo "bench-cri.sh: crictl not found at $crictl; set CRICTL" >&2; exit 2; }
hold=50

work=$(mktemp -d /tmp/bench-cri.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  for ns in "$work"/sandboxd-node "$work"/containerd-node; do umount "$ns" 2>/dev/null || true; done
  umount "$work/sandboxd/netns" 2>/dev/null || true
  grep -o "${work}[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The same chain for both: bridge cni0 with host-local on 10.244.1.0/24, portmap, loopback.
conflist() {
  cat <<JSON
{"cniVersion": "1.0.0", "name": "pods", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$1"}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}]}
JSON
}

node() {  # a network namespace pinned at $1
  touch "$1"
  unshare --net="$1" true
  nsenter --net="$1" ip link set lo up
}

wait_socket() {
  for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done
  echo "bench-cri.sh: $1 did not appear" >&2; exit 1
}

# The images: built from source, into sandboxd's store and as OCI archives for containerd.
SANDBOXD_BIN_DIR="$bin" ./examples/build-images.sh --no-build \
  --store "$work/sandboxd/state/images" --archives "$work/archives" >/dev/null
mkdir -p "$work/logs"

# sandboxd, with the embedded runtime and then with runc
mkdir -p "$work/sandboxd/net.d"
conflist "$work/sandboxd/ipam" > "$work/sandboxd/net.d/10-pods.conflist"
node "$work/sandboxd-node"
# Links to sandboxd-cni under each plugin's name: its plugins run as processes from here.
own_bin="$work/own-bin"
mkdir -p "$own_bin"
for plugin in bridge host-local portmap loopback ptp; do
  ln -s "$(pwd)/$bin/sandboxd-cni" "$own_bin/$plugin"
done
cni_bin_dir=/usr/lib/cni
start_sandboxd() {
  "$bin/sandboxd" --socket "$work/sandboxd/sandboxd.sock" --state-dir "$work/sandboxd/state" \
    --netns-dir "$work/sandboxd/netns" --cni-conf-dir "$work/sandboxd/net.d" \
    --runtime-root "$work/sandboxd/runtime" \
    --cni-bin-dir "$cni_bin_dir" --node-netns "$work/sandboxd-node" "$@" 2>>"$work/sandboxd.log" &
  pids+=($!)
  wait_socket "$work/sandboxd/sandboxd.sock"
}
stop_daemon() {
  kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true; pids=()
  rm -f "$work/sandboxd/sandboxd.sock"
}
echo "| operation | runtime | n | p50 ms | p90 ms | p99 ms |"
echo "| --- | --- | --- | --- | --- | --- |"
start_sandboxd --cni-plugins upstream
nsenter --net="$work/sandboxd-node" "$bin/cri-bench" --endpoint "unix://$work/sandboxd/sandboxd.sock" \
  --label "sandboxd (embedded runtime)" --crictl "$crictl" --log-dir "$work/logs" "$@"
stop_daemon
start_sandboxd --cni-plugins upstream --runtime runc
nsenter --net="$work/sandboxd-node" "$bin/cri-bench" --endpoint "unix://$work/sandboxd/sandboxd.sock" \
  --label "sandboxd (runc)" --crictl "$crictl" --log-dir "$work/logs" "$@" | grep -E "Container|Exec|exec"
stop_daemon
# The pod path again with sandboxd-cni's plugins run in-process, then as processes.
start_sandboxd --cni-plugins own
nsenter --net="$work/sandboxd-node" "$bin/cri-bench" --endpoint "unix://$work/sandboxd/sandboxd.sock" \
  --label "sandboxd (sandboxd-cni, in-process)" --log-dir "$work/logs" "$@" --containers 0 --execs 0
stop_daemon
cni_bin_dir="$own_bin"
start_sandboxd --cni-plugins upstream
nsenter --net="$work/sandboxd-node" "$bin/cri-bench" --endpoint "unix://$work/sandboxd/sandboxd.sock" \
  --label "sandboxd (sandboxd-cni, processes)" --log-dir "$work/logs" "$@" --containers 0 --execs 0
stop_daemon
cni_bin_dir=/usr/lib/cni
start_sandboxd
"$bin/cri-bench" --endpoint "unix://$work/sandboxd/sandboxd.sock" --label "sandboxd (embedded runtime)" \
  --log-dir "$work/logs" --hold "$hold" --stats 100 --rss-pid "${pids[0]}" --rss-helper sandboxd-monitor > "$work/hold.md"
stop_daemon

# containerd, with the same chain and a pause image made from this repository's pause.
c="$work/containerd"
mkdir -p "$c/net.d" "$c/root" "$c/state" "$c/pause-rootfs"
conflist "$c/ipam" > "$c/net.d/10-pods.conflist"
cp "$bin/pause" "$c/pause-rootfs/pause"
"$bin/oci-pack" --out "$c/pause-layout" --name sandboxd.local/pause:bench --layer "$c/pause-rootfs" --entrypoint /pause >/dev/null
tar -C "$c/pause-layout" -cf "$c/pause.tar" .
containerd_config() {  # $1: the CNI bin dir
  cat > "$c/config.toml" <<TOML
version = 2
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$c/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "sandboxd.local/pause:bench"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$1"
    conf_dir = "$c/net.d"
TOML
}
containerd_config /usr/lib/cni
node "$work/containerd-node"
start_containerd() {
  nsenter --net="$work/containerd-node" containerd --config "$c/config.toml" 2>>"$work/containerd.log" &
  pids+=($!)
  wait_socket "$c/containerd.sock"
}
start_containerd
ctr --address "$c/containerd.sock" -n k8s.io images import --base-name sandboxd.local/pause --digests "$c/pause.tar" >/dev/null
ctr --address "$c/containerd.sock" -n k8s.io images tag --force \
  "$(ctr --address "$c/containerd.sock" -n k8s.io images ls -q | grep '^sandboxd.local/pause@' | head -1)" sandboxd.local/pause:bench >/dev/null
ctr --address "$c/containerd.sock" -n k8s.io images import --base-name docker.io/library/busybox \
  --digests "$work/archives/img-busybox.tar" >/dev/null
ctr --address "$c/containerd.sock" -n k8s.io images tag --force \
  "$(ctr --address "$c/containerd.sock" -n k8s.io images ls -q | grep '^docker.io/library/busybox@' | head -1)" \
  docker.io/library/busybox:latest >/dev/null
nsenter --net="$work/containerd-node" "$bin/cri-bench" --endpoint "unix://$c/containerd.sock" \
  --label "containerd 1.6 (runc)" --crictl "$crictl" --log-dir "$work/logs" "$@"
"$bin/cri-bench" --endpoint "unix://$c/containerd.sock" --label "containerd 1.6 (runc)" \
  --log-dir "$work/logs" --hold "$hold" --stats 100 --rss-pid "${pids[0]}" --rss-helper containerd-shim-runc-v2 >> "$work/hold.md"

# containerd's pod path again, with sandboxd-cni's plugins (as processes) in its bin dir.
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true; pids=()
rm -f "$c/containerd.sock"
containerd_config "$own_bin"
start_containerd
nsenter --net="$work/containerd-node" "$bin/cri-bench" --endpoint "unix://$c/containerd.sock" \
  --label "containerd 1.6 (runc), sandboxd-cni" --log-dir "$work/logs" "$@" --containers 0 --execs 0

echo
echo "| operation | runtime | n | p50 ms | p90 ms | p99 ms |"
echo "| --- | --- | --- | --- | --- | --- |"
grep '^| List' "$work/hold.md"
echo
echo "| runtime | pods | runtime MiB | helpers | helpers MiB | total MiB |"
echo "| --- | --- | --- | --- | --- | --- |"
grep -v '^| List' "$work/hold.md"
