#!/usr/bin/env bash
# Build the shipped binaries: release profile, statically linked (glibc static-pie), because CNI
# plugins are copied onto hosts with any glibc. Prints the directory that holds them.
# The explicit --target keeps +crt-static away from build scripts and proc-macros (host code).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
target=x86_64-unknown-linux-gnu
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --bins --target "$target" -q >&2
dir="${CARGO_TARGET_DIR:-$PWD/target}/$target/release"
for b in calico-cni calico-ipam; do
  if ldd "$dir/$b" >/dev/null 2>&1 && ! ldd "$dir/$b" 2>&1 | grep -q "statically linked"; then
    echo "build-release.sh: $dir/$b is dynamically linked" >&2
    exit 1
  fi
done
echo "$dir"
