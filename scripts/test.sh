#!/usr/bin/env bash
# The test suite: lint, unit and property tests, and the integration tests that run the real
# binaries in throwaway network namespaces. Needs root (network namespaces); fails, never skips,
# without it. Installs what it needs on a fresh Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: the dataplane tests create network namespaces and need root" >&2
  exit 1
fi
scripts/install-deps.sh

export PATH="$HOME/.cargo/bin:$PATH" CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The integration tests of each crate run the other crate's binary too: build them all first.
cargo build --workspace --bins
# The real CNI clients: cnitool, containerd's CRI and podman drive our plugins from a conflist.
scripts/test-runtimes.sh --from "${CARGO_TARGET_DIR:-target}/debug"
cargo test --workspace --no-fail-fast
