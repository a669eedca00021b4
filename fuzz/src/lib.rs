//! Fuzzing of every input surface on the stable toolchain: a coverage-free, outcome-guided
//! mutation fuzzer (`mutate`, `engine`) over the seed corpus in `testdata/fuzz/<surface>/`,
//! driving the parsers in-process through the functions the binaries call (`surfaces`).
//! `scripts/fuzz.sh` runs the `calico-fuzz` binary, which runs each surface in a child process
//! under a memory bound and a per-input time bound.

pub mod engine;
pub mod mutate;
pub mod surfaces;
