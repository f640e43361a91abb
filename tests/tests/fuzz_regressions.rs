//! The fuzz targets' inputs that matter, run in every test pass: each
//! seed and each input that once crashed a target (`fuzz/regressions/`) go
//! through the same function the target calls, as do every built fixture
//! and some cuts of one. None may panic.

use std::path::Path;

use memtrace_tests::*;
use memtrace_user::fuzzing::TARGETS;

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn seeds_and_regressions_pass_through_every_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut ran = 0;
    for (name, f) in TARGETS {
        for dir in ["seeds", "regressions"] {
            for file in files(&fuzz.join(dir).join(name)) {
                f(&std::fs::read(&file).unwrap());
                ran += 1;
            }
        }
    }
    assert!(ran >= 10, "only {ran} inputs: the seeds are missing");
}

#[test]
fn every_fixture_and_cuts_of_one_parse_without_panic() {
    let go_binary = TARGETS.iter().find(|t| t.0 == "go_binary").unwrap().1;
    for v in go_versions() {
        let dir = env_path("MEMTRACE_FIXTURES").join(format!("go{v}"));
        for file in files(&dir) {
            go_binary(&std::fs::read(&file).unwrap());
        }
    }
    let bytes = std::fs::read(fixture(&go_versions()[0], "allocs")).unwrap();
    for cut in (1..64).map(|i| bytes.len() * i / 64) {
        go_binary(&bytes[..cut]);
    }
}
