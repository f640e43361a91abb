//! `cargo xtask image`: the agent's container image, built with nothing
//! pulled. The release binary and exactly the shared libraries it loads
//! (from `ldd`, at the paths the loader looks in) are staged under
//! `target/image/rootfs/`, and `deploy/Dockerfile` (`FROM scratch`) copies
//! them in. podman builds it (docker where podman is missing), tagged
//! `localhost/memtrace:VERSION`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::run;

/// The image's tag for this version of memtrace.
pub fn tag(root: &Path) -> anyhow::Result<String> {
    let manifest = std::fs::read_to_string(root.join("memtrace-user/Cargo.toml"))?;
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim().trim_matches('"').to_string())
        .context("memtrace-user/Cargo.toml has no version")?;
    Ok(format!("localhost/memtrace:{version}"))
}

/// The libraries `exe` loads: each `=> /path` of `ldd`, and the loader.
fn libraries(exe: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(exe)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        // A static binary: nothing to add.
        return Ok(Vec::new());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Copies `from` to `rootfs` + `at` (the content, symlinks followed).
fn stage(rootfs: &Path, from: &Path, at: &Path) -> anyhow::Result<()> {
    let to = rootfs.join(at.strip_prefix("/").unwrap_or(at));
    std::fs::create_dir_all(to.parent().context("a parent")?)?;
    std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}

/// The container engine: podman, or docker where podman is missing.
fn engine() -> anyhow::Result<&'static str> {
    for e in ["podman", "docker"] {
        if Command::new(e)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(e);
        }
    }
    bail!("neither podman nor docker is installed: `cargo xtask bootstrap` installs podman")
}

/// Builds the image from the release binary `memtrace`; returns its tag.
pub fn build(root: &Path, memtrace: &Path) -> anyhow::Result<String> {
    let context = root.join("target/image");
    let _ = std::fs::remove_dir_all(&context);
    let rootfs = context.join("rootfs");
    stage(&rootfs, memtrace, Path::new("/usr/local/bin/memtrace"))?;
    for lib in libraries(memtrace)? {
        stage(&rootfs, &lib, &lib)?;
    }
    // CAs for an https Pyroscope; the API server's CA comes with the token.
    let cas = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if cas.exists() {
        stage(&rootfs, cas, cas)?;
    }
    for dir in ["var/lib/memtrace", "var/run/memtrace", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    let tag = tag(root)?;
    run(Command::new(engine()?)
        .args(["build", "--pull=never", "-f"])
        .arg(root.join("deploy/Dockerfile"))
        .args(["-t", &tag])
        .arg(&context))?;
    eprintln!("xtask: built {tag}");
    Ok(tag)
}
