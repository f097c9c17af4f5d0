#!/usr/bin/env bash
# Benchmarks for BENCHMARKS.md, as root on Debian 12: pause size, RSS and start latency, and
# CNI ADD/DEL of the upstream bridge chain through cni-host and, in the same run, through
# upstream libcni (Go, from Debian's golang-github-appc-cni-dev, driven by our harness in
# examples/libcni-bench). Arguments go to cni-bench (default: --cycles 200).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends golang-go golang-github-appc-cni-dev
export PATH="$HOME/.cargo/bin:$PATH"

cargo build --release --workspace
mkdir -p target/libcni-bench
# GOPATH mode: libcni's sources come from the Debian package, nothing is downloaded.
(cd examples/libcni-bench && GOPATH=/usr/share/gocode GO111MODULE=off \
  go build -o ../../target/libcni-bench/libcni-bench .)

if [ $# -eq 0 ]; then set -- --cycles 200; fi
exec ./target/release/cni-bench --libcni target/libcni-bench/libcni-bench "$@"
