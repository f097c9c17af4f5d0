#!/usr/bin/env bash
# Every test: formatting, lints, unit tests and the root-only integration tests (which make
# their own network namespaces and remove them, pass or fail). Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --all -- --check
# pause.rs is compiled by pause/build.rs, outside any module tree cargo fmt walks.
rustfmt --edition 2021 --check pause/src/pause.rs
cargo clippy --workspace --all-targets --release -- -D warnings
cargo build --release --workspace
cargo test --release --workspace
