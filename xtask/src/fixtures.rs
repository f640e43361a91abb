//! The Go fixtures, built from `tests/fixtures/*` with each tested Go
//! toolchain (which the bootstrap installs).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

use crate::bootstrap::{go_bin, newest, Env};
use crate::run;

pub struct Built {
    /// `<root>/go<version>/<fixture>` for each version.
    pub root: PathBuf,
    /// The directory of the first version built.
    pub dir: PathBuf,
    /// A `go` binary for tools (`go tool pprof`).
    pub go_for_tools: PathBuf,
}

/// Builds every fixture for `versions`, and of `allocs` and `goroutines`
/// the build modes users ship as well (stripped, PIE and stripped, ...).
pub fn build(root: &Path, env: &Env, versions: &[&str]) -> anyhow::Result<Built> {
    let out_root = root.join("target/fixtures");
    let src_root = root.join("tests/fixtures");
    let mut names: Vec<String> = std::fs::read_dir(&src_root)
        .with_context(|| format!("listing {}", src_root.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("main.go").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for v in versions {
        let go = go_bin(&env.cache, v);
        let dir = out_root.join(format!("go{v}"));
        std::fs::create_dir_all(&dir)?;
        for name in &names {
            // The build modes users ship: default, stripped, PIE, and
            // cgo with the external linker (C start-up code before Go's).
            let stripped: (&str, &[&str]) = ("-stripped", &["-ldflags=-s -w"]);
            let pie_stripped: (&str, &[&str]) =
                ("-pie-stripped", &["-buildmode=pie", "-ldflags=-s -w"]);
            let variants: &[(&str, &[&str])] = match name.as_str() {
                "allocs" => &[
                    ("", &[]),
                    stripped,
                    pie_stripped,
                    ("-pie", &["-buildmode=pie"]),
                    ("-cgo", &["-ldflags=-linkmode=external"]),
                    // Writes Go's own heap profile, to compare names with pprof.
                    ("-memprofile", &["-tags=memprofile"]),
                    // Runs its loop under a pprof label (the bench).
                    ("-labels", &["-tags=labels"]),
                ],
                "goroutines" => &[
                    ("", &[]),
                    stripped,
                    pie_stripped,
                    ("-labels", &["-tags=labels"]),
                ],
                "labels" => &[("", &[]), stripped],
                _ => &[("", &[])],
            };
            for (suffix, flags) in variants {
                // prodlike calls C itself.
                let cgo = if *suffix == "-cgo" || name == "prodlike" {
                    "1"
                } else {
                    "0"
                };
                let out = dir.join(format!("{name}{suffix}"));
                let mut cmd = Command::new(&go);
                cmd.current_dir(src_root.join(name))
                    .arg("build")
                    .args(*flags)
                    .arg("-o")
                    .arg(&out)
                    .arg(".")
                    .env("GOCACHE", env.cache.join("gocache"))
                    .env("GOPATH", env.cache.join("gopath"))
                    .env("GOFLAGS", "-mod=mod")
                    .env("GOTOOLCHAIN", "local")
                    .env("CGO_ENABLED", cgo);
                run(&mut cmd)?;
            }
        }
    }
    Ok(Built {
        dir: out_root.join(format!("go{}", versions[0])),
        root: out_root,
        go_for_tools: go_bin(&env.cache, newest()),
    })
}
