#!/usr/bin/env bash
# The Services benchmark of BENCHMARKS.md, as root on Debian 12: full sync, one-service
# update and first-packet latency at 1, 1,000 and 10,000 services, for sandboxd's netlink
# data plane and, in the same run on the same rules, for `nft -f` and iptables-restore.
# Each size in network namespaces of its own. Arguments go to svc-bench (default:
# --services 1,1000,10000 --updates 10 --connections 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace
if [ $# -eq 0 ]; then set -- --services 1,1000,10000 --updates 10 --connections 1000; fi
exec ./target/release/svc-bench "$@"
