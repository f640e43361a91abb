//! The fuzz targets' inputs that matter, run in every test pass: each
//! seed and each input that once crashed a target (`fuzz/regressions/`) go
//! through the same function the target calls, as do every built fixture,
//! Debian's prometheus and some cuts of one. None may panic.

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
    // A real program of production size walks every one of its functions.
    let prometheus = Path::new("/usr/bin/prometheus");
    let started = std::time::Instant::now();
    go_binary(&std::fs::read(prometheus).expect("Debian's prometheus (cargo xtask bootstrap)"));
    eprintln!("prometheus: {:?}", started.elapsed());
    let bytes = std::fs::read(fixture(&go_versions()[0], "allocs")).unwrap();
    for cut in (1..64).map(|i| bytes.len() * i / 64) {
        go_binary(&bytes[..cut]);
    }
}

/// The memory seeds are the structures they are named after, so the
/// fuzzer starts from inputs that reach deep into each reader.
#[test]
fn the_memory_seeds_hold_what_their_names_say() {
    use memtrace_user::binary::labels::{read, Format};
    use memtrace_user::fuzzing::MEMORY_BASE;
    use memtrace_user::host::remote::FakeMemory;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/go_memory");
    let mem = |name: &str| {
        let m = FakeMemory::default();
        m.map(MEMORY_BASE, std::fs::read(dir.join(name)).unwrap());
        m
    };
    let buckets =
        memtrace_user::binary::memprof::read_buckets(&mem("mbuckets"), MEMORY_BASE, 4).unwrap();
    assert_eq!(buckets.len(), 2);
    assert_eq!(buckets[0].stack, [0x401000, 0x402000]);
    let want = vec![("request".to_string(), "/api/v1".to_string())];
    assert_eq!(
        read(&mem("labels-map"), MEMORY_BASE, Format::Map).unwrap(),
        want
    );
    let slice = read(&mem("labels-slice"), MEMORY_BASE, Format::Slice).unwrap();
    assert_eq!(slice[0], want[0]);
    assert_eq!(slice.len(), 2);
    let mut gs = 0;
    memtrace_user::lens::goroutines::each_g(&mem("allgs"), MEMORY_BASE, |_| gs += 1).unwrap();
    assert_eq!(gs, 2);
}
