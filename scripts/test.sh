#!/usr/bin/env bash
# Every test: formatting, lints, unit tests and the root-only integration tests (which make
# their own network namespaces and remove them, pass or fail). Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --checks
export PATH="$HOME/.cargo/bin:$PATH"
# The Vagrant cluster cannot boot here (no VMs): its Vagrantfile is validated (with the
# libvirt plugin, and with every provider's settings ignored, as for VirtualBox) and the
# scripts pass shellcheck (the provisioning ones at every severity).
export VAGRANT_CHECKPOINT_DISABLE=1
vagrant validate
vagrant validate --ignore-provider
shellcheck scripts/provision-vm.sh scripts/install-deps.sh
shellcheck -S warning scripts/*.sh examples/*.sh
cargo fmt --all -- --check
# pause.rs is compiled by pause/build.rs, outside any module tree cargo fmt walks.
rustfmt --edition 2021 --check pause/src/pause.rs
cargo clippy --workspace --all-targets --release -- -D warnings
cargo build --release --workspace
cargo test --release --workspace
