#!/usr/bin/env bash
# Fuzz every input surface for SECONDS in total (default 120), split evenly between them.
#
#   scripts/fuzz.sh [SECONDS] [--only a,b] [--mem-mb M] [--hang-secs H] [--seed S]
#
# Builds the calico-fuzz harness (fuzz/, stable toolchain, dev profile) and runs each surface
# in a child process capped at M MiB of address space (default 1024) whose inputs may each
# take H seconds (default 10). Prints executions per surface and the result; exits 1 on any
# finding (panic, broken oracle, hang, abort, stack overflow, allocation failure) and saves
# the input under $FUZZ_FINDINGS (default fuzz-findings/<surface>/). Reproduce one with
#   calico-fuzz replay --surface NAME FILE
# The corpus is testdata/fuzz/<surface>/; a finding, once fixed, is added there as crash-*
# (fuzz/tests/corpus.rs replays them all in `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=120
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
  seconds="$1"
  shift
fi
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --quiet -p calico-fuzz --bin calico-fuzz
exec "${CARGO_TARGET_DIR:-target}/debug/calico-fuzz" all --seconds "$seconds" \
  --corpus testdata/fuzz --findings "${FUZZ_FINDINGS:-fuzz-findings}" "$@"
