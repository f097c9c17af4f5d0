#!/usr/bin/env bash
# The main job: install, build, and run the seeds' pod-pause on a node of the lab: sandboxd
# serving CRI in a node network namespace, the demo images built and imported, the pod's
# sandbox run, inspected and removed with sandboxctl. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace
exec ./examples/pod-pause-demo.sh
