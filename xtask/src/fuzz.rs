//! Fuzzing the parsers of untrusted input (`fuzz/`, cargo-fuzz): a bounded
//! run of every target in `cargo xtask test`, longer ones with `cargo xtask
//! fuzz`. Each target starts from `fuzz/seeds/<target>/` and
//! `fuzz/regressions/<target>/` (and, for Go executables, the built
//! fixtures of every Go version and Debian's prometheus), in a fresh corpus under
//! `target/fuzz-corpus/`.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::fixtures::Built;
use crate::run;

/// (target, the largest input it is given).
pub const TARGETS: &[(&str, usize)] = &[
    // Room for Debian's prometheus (50 MB), a seed of real size.
    ("go_binary", 64 << 20),
    ("buildinfo", 64 << 10),
    ("procfs", 256 << 10),
    ("kubelet", 64 << 10),
    ("pprof", 256 << 10),
    ("go_memory", 64 << 10),
];

/// A real, stripped Go program nobody here wrote, when Debian's package is
/// installed: a seed of the size and shape production binaries have.
const PROMETHEUS: &str = "/usr/bin/prometheus";

fn cargo_fuzz(root: &Path) -> Command {
    let mut c = Command::new("rustup");
    c.current_dir(root.join("fuzz"))
        .args(["run", "nightly", "cargo", "fuzz"]);
    c
}

/// Builds every target, then fuzzes each for `secs` seconds (or only
/// `only`). A crash fails the run and leaves its input in
/// `fuzz/artifacts/<target>/`.
pub fn run_all(root: &Path, built: &Built, secs: u64, only: Option<&str>) -> anyhow::Result<()> {
    run(cargo_fuzz(root).args(["build", "-O"]))?;
    for &(target, max_len) in TARGETS {
        if only.is_some_and(|o| o != target) {
            continue;
        }
        let corpus = root.join("target/fuzz-corpus").join(target);
        let _ = std::fs::remove_dir_all(&corpus);
        std::fs::create_dir_all(&corpus)?;
        // The seeds, and every input that once crashed a target: each run
        // starts by replaying them under the sanitizer (the tests replay
        // them without it, where a huge allocation fails quietly). Go
        // executables' seeds are the built fixtures, below.
        for dir in ["seeds", "regressions"] {
            let from = root.join("fuzz").join(dir).join(target);
            for e in std::fs::read_dir(&from).into_iter().flatten() {
                let e = e?;
                std::fs::copy(e.path(), corpus.join(e.file_name()))?;
            }
        }
        if target == "go_binary" {
            seed_go_binaries(built, &corpus)?;
        }
        eprintln!("xtask: fuzzing {target} for {secs} s");
        let status = cargo_fuzz(root)
            .args(["run", "-O", target])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .arg(format!("-max_len={max_len}"))
            .args(["-rss_limit_mb=4096", "-timeout=30", "-print_final_stats=1"])
            .status()
            .context("running cargo fuzz (cargo xtask bootstrap installs it)")?;
        if !status.success() {
            bail!(
                "fuzz target {target} failed ({status}): its input is in fuzz/artifacts/{target}/; \
                 fix it and keep the input in fuzz/regressions/{target}/"
            );
        }
        let _ = std::fs::remove_dir_all(&corpus);
    }
    Ok(())
}

/// The Go executables `go_binary` starts from: every built fixture
/// version's stripped and PIE builds (both pclntab formats, and each
/// release's runtime), and prometheus when installed.
fn seed_go_binaries(built: &Built, corpus: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(&built.root)?.flatten() {
        let version = e.file_name().to_string_lossy().into_owned();
        for name in ["allocs-stripped", "allocs-pie"] {
            let src = e.path().join(name);
            if src.exists() {
                std::fs::copy(&src, corpus.join(format!("{version}-{name}")))?;
            }
        }
    }
    if Path::new(PROMETHEUS).exists() {
        std::fs::copy(PROMETHEUS, corpus.join("prometheus"))?;
    }
    Ok(())
}
