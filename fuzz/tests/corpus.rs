//! The committed corpus as regression tests: every file of `testdata/fuzz/<surface>/` (the
//! seeds, and every input a fuzz run ever found, named `crash-*`) runs through its surface
//! without a panic or a broken oracle.

use std::path::{Path, PathBuf};

use calico_fuzz::engine;
use calico_fuzz::surfaces::ALL;

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/fuzz")
}

#[test]
fn every_surface_has_seeds_and_every_corpus_dir_a_surface() {
    for s in ALL {
        let files = engine::load_corpus(&corpus_root().join(s.name))
            .unwrap_or_else(|e| panic!("corpus of {}: {e}", s.name));
        assert!(!files.is_empty(), "surface {} has no seed", s.name);
    }
    for entry in std::fs::read_dir(corpus_root()).expect("testdata/fuzz") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        assert!(
            ALL.iter().any(|s| s.name == name),
            "testdata/fuzz/{name} belongs to no surface"
        );
    }
}

#[test]
fn corpus_replays_without_a_finding() {
    engine::install_panic_hook();
    let mut failures = Vec::new();
    let mut runs = 0;
    for s in ALL {
        let mut target = (s.make)();
        for (name, data) in engine::load_corpus(&corpus_root().join(s.name)).expect("corpus") {
            runs += 1;
            if let Err(msg) = engine::execute(&mut *target, &data) {
                failures.push(format!("{}/{name}: {msg}", s.name));
            }
        }
    }
    assert!(runs > 100, "only {runs} corpus files ran");
    assert!(failures.is_empty(), "findings:\n{}", failures.join("\n"));
}
