#!/usr/bin/env bash
# The main job, as root on Debian 12: install, build, bring the seeds' cluster up on this
# machine (`sandboxctl lab up`: k8s-master, k8s-node1, k8s-node2 as network namespaces,
# each running sandboxd, etcd on k8s-master, the VXLAN overlay), run the seeds'
# walk-through on it (`sandboxctl lab demo`: every observation shown and checked), and
# bring the lab down again, also when a step fails (the exit status is the demo's).
# Arguments go to `lab up` (e.g. --backend host-gw).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace
sandboxctl=target/release/sandboxctl

if ! "$sandboxctl" lab status 2>&1 | grep -qi '^no lab is up'; then
  echo "demo.sh: a lab is up already (sandboxctl lab status); bring it down first: $sandboxctl lab down" >&2
  exit 1
fi
work=$(mktemp -d /tmp/sandboxd-demo.XXXXXX)
cleanup() {
  "$sandboxctl" lab down >/dev/null || echo "demo.sh: lab down failed; run $sandboxctl lab down" >&2
  rm -rf "$work"
}
trap cleanup EXIT

echo "\$ examples/build-images.sh --store $work/images   # the demo images, from source, offline"
examples/build-images.sh --store "$work/images" --no-build >/dev/null
echo "\$ sandboxctl lab up --images $work/images $*"
"$sandboxctl" lab up --images "$work/images" "$@"
"$sandboxctl" lab demo
