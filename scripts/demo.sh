#!/usr/bin/env bash
# The main job: install, build, and run the pod network demo (pause in new namespaces, its
# netns pinned, CNI ADD to the default network, the result, then a clean teardown).
# Run as root on Debian 12. Extra arguments go to the demo (--keep, --cleanup).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace
exec ./target/release/pod-network-demo "$@"
