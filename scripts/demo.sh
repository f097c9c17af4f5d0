#!/usr/bin/env bash
# The main job: install, build, and run the seeds' walk-throughs on nodes of the lab
# (sandboxd in a node network namespace, the demo images built and imported): pod-pause
# (the pause container and its namespaces), then the service network (svc-clusterip and
# svc-nodeport in front of pod-dest). Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace
./examples/pod-pause-demo.sh
exec ./examples/service-demo.sh
